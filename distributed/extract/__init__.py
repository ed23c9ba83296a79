"""Extraction on Ray Data: the job (``job``: manifest in, feature store out, resumable) and
its pipeline of stages with their resources and sizes (``pipeline``), and what a job will
cost before it runs (``plan``: ``--dry-run`` on the cluster, ``--calibrate`` in a scratch store).

May import: ``reslstm`` and ``reslstm.distributed.runtime``."""
