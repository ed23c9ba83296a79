"""Reports over predictions: prediction tables and late fusion of two runs (``predictions``),
fusion with another model's scores (``external_fusion``), the change between two confusion
matrices (``confusion_change``) and a sweep's trial tables and curves (``sweep_tables``).

May import: ``reslstm.metrics``, ``reslstm.fusion``, ``reslstm.storage``, ``reslstm.errors``.
Pure pyarrow/NumPy/matplotlib; never Ray or MLflow."""
