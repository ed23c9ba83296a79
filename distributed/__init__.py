"""Ray glue, installed as ``reslstm.distributed``: Ray Data extraction, Ray Train training,
Ray Tune sweeps and MLflow logging. Imports ``reslstm``; ``reslstm`` never imports this."""
