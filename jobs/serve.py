"""Serve a trained model over HTTP with Ray Serve (POST /predict, GET /health), until Ctrl-C.

    python jobs/serve.py --model runs/late                         # http://127.0.0.1:8000
    python jobs/serve.py --model models:/reslstm@champion --host 0.0.0.0 --token-file serve.token \
        --allow-prefix s3://bucket/in/ --min-replicas 1 --max-replicas 4
    curl -H "Authorization: Bearer $(cat serve.token)" -F video=@clip.mp4 http://HOST:8000/predict

Binds 127.0.0.1 unless --host says otherwise; without --token-file (or RESLSTM_TOKEN) anyone who
reaches the port may classify videos. Requests name paths only under --allow-prefix. The same
app runs with `serve run cluster/serve.yaml` or `serve run reslstm.distributed.serve.app:build
model=runs/late replicas=2`. See README.md, "Predicting new videos".
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, add_config_arguments, config_from_args, run_job
from reslstm.configs import PredictConfig, ServeConfig
from reslstm.distributed.serve.app import serve_until_stopped

BATCH_ONLY = ("manifest", "out", "top_k", "as_json", "sheet", "actors", "actor_cpus",
              "chunk_videos", "window_videos", "retry_failed", "overwrite", "address")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arguments(p, PredictConfig, exclude=BATCH_ONLY)
    add_config_arguments(p, ServeConfig)
    a = p.parse_args(argv)
    return run_job("serve", lambda: serve_until_stopped(config_from_args(
        ServeConfig, a, predict=config_from_args(PredictConfig, a))))


if __name__ == "__main__":
    sys.exit(main())
