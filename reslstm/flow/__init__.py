"""Optical flow between consecutive frames: the methods and the one flow step of extraction
(``methods``), ``tvl1/``, OpenCV's TV-L1 in PyTorch, and the check of the frames the batched
methods take (``frames``).

May import: ``reslstm.video``, ``reslstm.errors``, ``reslstm.extractors`` (weights identity
helpers). Nothing here knows about the feature store or Ray."""
