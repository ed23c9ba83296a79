"""The Ray Serve application (``app``): classify a video over HTTP with a trained model.

May import: ``reslstm``, ``reslstm.distributed.runtime``, ``reslstm.distributed.predict``."""
