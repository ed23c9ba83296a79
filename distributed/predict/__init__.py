"""Batch prediction of new videos on Ray Data (``batch``): a manifest or folder in, a
predictions table and a failures table out.

May import: ``reslstm``, ``reslstm.distributed.runtime``, ``reslstm.distributed.extract``,
``reslstm.distributed.tracking`` (models from the registry)."""
