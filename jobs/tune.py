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

from reslstm.distributed.train_options import add_train_arguments, train_config_from_args
from reslstm.distributed.tune import SweepConfig, parse_list, sweep
from reslstm.features import StoreError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="sweep directory (ray_results/, best/)")
    p.add_argument("--search", default="grid", choices=["grid", "random"],
                   help="grid: every combination (repeated --num-samples times); random: "
                        "--num-samples draws from the lists")
    p.add_argument("--num-samples", type=int, default=1, help="see --search (default 1)")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial may stop")
    p.add_argument("--max-concurrent", type=int,
                   help="trials at once (default: what the cluster fits, each trial holding "
                        "1 CPU for its driver plus its workers' CPUs)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default reslstm-sweep-<timestamp>)")
    add_train_arguments(p, sweep=True)
    a = p.parse_args(argv)
    try:
        base = train_config_from_args(a)
        scfg = SweepConfig(
            base=base, hidden=parse_list(a.hidden, int), depth=parse_list(a.depth, int),
            T=parse_list(a.T, int), fusion=parse_list(a.fusion), search=a.search,
            num_samples=a.num_samples, grace_period=a.grace_period,
            max_concurrent=a.max_concurrent, mlflow_uri=a.mlflow_uri, experiment=a.experiment)
        sweep(scfg, address=a.address)
    except (StoreError, ValueError) as exc:
        print(f"tune: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
