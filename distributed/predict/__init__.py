"""Prediction of new videos: a few files in this process (``files``: model references, the
printed tables, sheets and timelines; no Ray) and batches on Ray Data (``batch``: a manifest or
folder in, a predictions table and a failures table out).

May import: ``reslstm``, ``reslstm.distributed.runtime``, ``reslstm.distributed.extract``,
``reslstm.distributed.tracking`` (models from the registry)."""
