"""Ray Tune: sweeps (``sweep``), the datasets its trials share (``shelf``), what a sweep leaves
(``results``) and the paper's presets run as sweeps (``paper_runs``).

May import: ``reslstm``, ``reslstm.distributed.train``, ``reslstm.distributed.tracking``,
``reslstm.distributed.runtime``."""
