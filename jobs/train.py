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

from reslstm.distributed.train import TrainConfig, fit
from reslstm.features import StoreError

STREAMS = ["rgb", "flow", "mid-sum", "mid-product", "late-product", "late-sum", "late-weighted"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, help="feature store directory (jobs/extract.py --out)")
    p.add_argument("--out", required=True, help="run directory (predictions/, summary.json)")
    p.add_argument("--stream", default="rgb", choices=STREAMS,
                   help="one stream, mid fusion (one Res-LSTM on fused inputs) or late fusion "
                        "(one Res-LSTM per stream, softmaxes fused) (default rgb)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size h (default 1024)")
    p.add_argument("--depth", type=int, default=2, help="stacked LSTM layers L (default 2)")
    p.add_argument("--T", type=int, default=25, help="clips sampled per video (default 25)")
    p.add_argument("--input-proj", default="pca", choices=["pca", "linear", "none"],
                   help="d_f -> h: PCA fitted on training clips (default, as the paper), a "
                        "learned linear map, or none (needs d_f == h)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                   help="residual connections between layers (default on)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on x^0 and m_T^L (default 0)")
    p.add_argument("--arch", default="reslstm", choices=["reslstm", "meanpool"],
                   help="reslstm, or meanpool (mean over t + linear: the order-blind baseline)")
    p.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="videos per batch and worker (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="RMSProp learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="initial weights, shuffling and PCA sample")
    p.add_argument("--workers", type=int, default=2, help="data-parallel workers (default 2)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs each worker reserves (default: min(1, cluster CPUs / workers))")
    p.add_argument("--use-gpu", default="auto", choices=["auto", "yes", "no"],
                   help="one GPU per worker, NCCL (auto: when the cluster has GPUs)")
    p.add_argument("--pca-max-vectors", type=int, default=50_000,
                   help="training clip vectors PCA is fitted on, at most (default 50000)")
    p.add_argument("--storage-path", help="Ray Train storage for checkpoints (default "
                   "RUN_DIR/ray_results; use s3://... or NFS on a multi-node cluster)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    a = p.parse_args(argv)
    cfg = TrainConfig(
        features=a.features, out=a.out, fusion=a.stream, hidden=a.hidden, depth=a.depth, T=a.T,
        input_proj=a.input_proj, residual=a.residual, dropout=a.dropout, arch=a.arch,
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, workers=a.workers,
        use_gpu=a.use_gpu, storage_path=a.storage_path, pca_max_vectors=a.pca_max_vectors,
        cpus_per_worker=a.cpus_per_worker)
    try:
        fit(cfg, address=a.address)
    except (StoreError, ValueError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
