"""The paper's experiments: what each preset sweeps and claims with the paper's numbers
(``presets``), results over seeds and the claims checked (``report``), and figures in the
paper's form (``figures``).

May import: ``reslstm.reports``, ``reslstm.metrics``, ``reslstm.configs``. Never Ray or MLflow."""
