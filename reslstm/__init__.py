"""Residual stacked LSTMs for video action recognition (Lakhal et al., 2018).

The pure library. At the top, the method: ``sampling`` (clips, sigma(t)), ``model`` (eq. 1-2,
the projection), ``fusion`` (streams, mid / late fusion), ``metrics``, ``training``,
``checkpoint`` (the payload of a trained model); and what every part uses: ``storage``,
``errors`` (``ReslstmError``), ``cli``, ``configs/``. Below it by concern: ``video/``,
``flow/``, ``extractors/``, ``datasets/``, ``features/``, ``extraction/``, ``inference/``,
``reports/``, ``paper/`` (each ``__init__`` says what it may import).

It never imports Ray, MLflow or ``reslstm.distributed`` (the Ray glue); see the import-linter
contracts in ``pyproject.toml``.
"""

__version__ = "0.1.0"
