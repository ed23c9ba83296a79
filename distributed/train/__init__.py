"""Ray Train: a training run from a feature store to checkpoints and predictions. The training
data (``data``), the run (``trainer``), the per-worker loop (``worker``), checkpoints written
from the workers (``checkpoints``) and predictions on the built datasets (``evaluation``).

May import: ``reslstm`` and ``reslstm.distributed.runtime``."""
