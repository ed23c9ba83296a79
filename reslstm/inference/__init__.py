"""One video -> class scores, without Ray: the extraction chain a model records (``chain``),
segment rows joined into whole videos (``assembly``), the one-video predictor (``predictor``),
the Fig. 4-style sheet of predictions (``sheet``) and the running prediction per step
(``timeline``).

May import: the method at the top of ``reslstm``, ``video``, ``flow``, ``extractors``,
``extraction``, ``features``. Never Ray or MLflow."""
