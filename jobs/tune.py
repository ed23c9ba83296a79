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

from reslstm.distributed.train import TrainConfig
from reslstm.distributed.tune import SweepConfig, parse_list, sweep
from reslstm.features import StoreError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, help="feature store directory (jobs/extract.py --out)")
    p.add_argument("--out", required=True, help="sweep directory (ray_results/, best/)")
    p.add_argument("--hidden", default="1024", help="comma list of hidden sizes h (default 1024)")
    p.add_argument("--depth", default="2", help="comma list of depths L (default 2)")
    p.add_argument("--T", default="25", help="comma list of clips per video T (default 25)")
    p.add_argument("--fusion", default="late-product",
                   help="comma list of: late-product, late-sum, late-weighted, mid-sum, "
                        "mid-product, rgb, flow (default late-product)")
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
    p.add_argument("--input-proj", default="pca", choices=["pca", "linear", "none"])
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--arch", default="reslstm", choices=["reslstm", "meanpool"])
    p.add_argument("--epochs", type=int, default=20, help="epochs per trial, ASHA's max_t (default 20)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="RMSProp learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="data-parallel workers per trial (default 2)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs per worker (default: min(1, (cluster CPUs - 1) / workers))")
    p.add_argument("--use-gpu", default="auto", choices=["auto", "yes", "no"])
    p.add_argument("--pca-max-vectors", type=int, default=50_000)
    p.add_argument("--storage-path", help="Ray storage (default OUT/ray_results; s3://... or NFS "
                   "on a multi-node cluster)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    a = p.parse_args(argv)
    try:
        base = TrainConfig(
            features=a.features, out=a.out, input_proj=a.input_proj, residual=a.residual,
            dropout=a.dropout, arch=a.arch, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
            seed=a.seed, workers=a.workers, use_gpu=a.use_gpu, storage_path=a.storage_path,
            pca_max_vectors=a.pca_max_vectors, cpus_per_worker=a.cpus_per_worker)
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
