"""Train a Res-LSTM (or the mean-pool baseline) on a feature store with Ray Train.

    python jobs/train.py --features features/ --stream late-product --out runs/late \
        --hidden 1024 --depth 2 --T 25 --epochs 30 --workers 2
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --features /shared/features --out /shared/runs/rgb \
        --storage-path s3://bucket/ray_results

Writes the best checkpoint (by val top-1) under --storage-path (default RUN_DIR/ray_results;
a multi-node cluster needs shared storage there: s3://... or an NFS path mounted on every node),
val/test predictions to RUN_DIR/predictions/ and RUN_DIR/summary.json.
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, add_address, add_config_arguments, config_from_args, run_job
from reslstm.configs import TrainConfig
from reslstm.distributed.train.trainer import fit


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arguments(p, TrainConfig, required=("out",))
    add_address(p)
    a = p.parse_args(argv)
    return run_job("train", lambda: fit(config_from_args(TrainConfig, a), a.address) and 0)


if __name__ == "__main__":
    sys.exit(main())
