"""One video -> class scores, without Ray: the extraction chain a model records (``chain``), the
one-video predictor (``predictor``) and the Fig. 4-style sheet of predictions (``sheet``).

May import: the method at the top of ``reslstm``, ``video``, ``flow``, ``extractors``,
``extraction``, ``features``. Never Ray or MLflow."""
