"""The synthetic data set as ``jobs/synth.py`` (and any job) reaches it: jobs import only
``reslstm.distributed``, ``reslstm.cli`` and ``reslstm.configs``.

``generate_synthetic(out_dir, videos_per_class, seed, size, workers, log_every)`` writes the
videos, ``manifest.parquet`` and ``synthetic.json``; ``parse_size("128x96")`` reads the
``--size`` option. Both live in ``reslstm.datasets.synthetic``; this module only hands them on,
without importing Ray or MLflow (``reslstm.distributed.demo``, which also generates the set,
imports both, which would cost a plain ``jobs/synth.py`` seconds at start).
"""

from __future__ import annotations

from reslstm.datasets.synthetic import generate_synthetic, parse_size

__all__ = ["generate_synthetic", "parse_size"]
