"""Sweep hidden size, depth, T and fusion with Ray Tune (ASHA) and log every trial to MLflow.

    python jobs/tune.py --features features/ --out runs/sweep \
        --hidden 512,1024 --depth 1,2,3 --T 25 --fusion late-product,mid-sum --epochs 30
    mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db

Every trial trains with the same loop as jobs/train.py; ASHA stops weak trials after
--grace-period epochs. The best trial (by val top-1) is evaluated once on test; its metrics,
confusion matrix, per-class CSV and model are logged to its MLflow run.
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, add_address, add_config_arguments, config_from_args, run_job
from reslstm.configs import SEARCHED, SweepConfig, TrainConfig
from reslstm.distributed.tune.sweep import sweep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # A trial's run is named by the sweep, and its searched values come from the sweep's lists.
    trial = add_config_arguments(p, TrainConfig, exclude=(*SEARCHED, "name"), required=("out",))
    searched = add_config_arguments(p, SweepConfig)
    add_address(p)
    a = p.parse_args(argv)
    return run_job("tune", lambda: sweep(config_from_args(
        SweepConfig, a, only=searched, base=config_from_args(TrainConfig, a, only=trial)),
        a.address) and 0)


if __name__ == "__main__":
    sys.exit(main())
