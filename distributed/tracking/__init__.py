"""MLflow: tracking stores and experiments (``experiments``), what every run records about its
data and machine (``lineage``: the feature store as a dataset input, the extraction runs behind
it, system metrics), an extraction's run (``extraction``), a sweep's parent run and nested trial
runs (``runs``) and the model registry (``models``).

May import: ``reslstm`` only (no other part of ``reslstm.distributed``)."""
