"""MLflow: a sweep's parent run and nested trial runs (``runs``) and the model registry
(``models``).

May import: ``reslstm`` only (no other part of ``reslstm.distributed``)."""
