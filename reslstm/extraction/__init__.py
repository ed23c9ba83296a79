"""Feature extraction as plain stages (no Ray): ``segments`` (the format between stages),
``settings`` (options -> recorded stream settings), ``stages`` (decode, flow, features),
``writer`` (``StoreWriter``: segments joined into one store row per video), ``driver``
(planning, the loop into the writer, and a single-process run) and ``planner`` (what a job
will cost: ``--dry-run`` counts from the headers, the ``--calibrate`` ETA model).

May import: ``reslstm.video``, ``reslstm.flow``, ``reslstm.extractors``, ``reslstm.features``,
``reslstm.datasets``, ``reslstm.configs`` and the method at the top of ``reslstm``. Never Ray."""
