"""Residual stacked LSTMs for video action recognition (Lakhal et al., 2018).

The pure library: clip sampling, the Res-LSTM and its fusions, metrics, PyAV decoding,
optical flow, 3D-CNN feature extractors, datasets and the feature store. It never imports
Ray or MLflow; the Ray glue lives in ``reslstm.distributed``.
"""

__version__ = "0.1.0"
