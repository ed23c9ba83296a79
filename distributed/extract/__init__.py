"""Extraction on Ray Data: the job (``job``: manifest in, feature store out, resumable) and
its pipeline of stages with their resources and sizes (``pipeline``).

May import: ``reslstm`` and ``reslstm.distributed.runtime``."""
