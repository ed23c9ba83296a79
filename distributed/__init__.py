"""Ray glue, installed as ``reslstm.distributed``, grouped by the Ray library it uses:
``extract/`` (Ray Data extraction), ``train/`` (Ray Train), ``tune/`` (Ray Tune sweeps and the
paper's presets), ``predict/`` (Ray Data batch prediction), ``serve/`` (Ray Serve),
``tracking/`` (MLflow runs and models), ``runtime`` (connecting to Ray, sizing, logs); and the
entry points of the jobs that span them (``demo``, ``evaluate``, ``synth``, ``make_manifest``).

May import: ``reslstm`` (anything), Ray, MLflow. ``reslstm`` never imports this package, and
``jobs/`` import only this package, ``reslstm.configs`` and ``reslstm.cli``
(``pyproject.toml``'s import-linter contracts)."""
