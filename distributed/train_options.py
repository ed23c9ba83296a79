"""Command-line options of a training run, shared by jobs/train.py and jobs/tune.py.

``add_train_arguments(parser, sweep=False)`` adds every TrainConfig option (in a sweep the
searched ones, hidden, depth, T and fusion, are comma lists); ``train_config_from_args(args)``
turns the parsed options back into a TrainConfig.
"""

from __future__ import annotations

import argparse

from .train import TrainConfig

FUSIONS = ("rgb", "flow", "mid-sum", "mid-product", "late-product", "late-sum", "late-weighted")


def add_train_arguments(p, sweep: bool = False) -> None:
    """The command-line options of TrainConfig, shared by jobs/train.py and jobs/tune.py. With
    ``sweep`` the searched options (hidden, depth, T, fusion) are comma lists."""
    p.add_argument("--features", required=True, help="feature store directory (jobs/extract.py --out)")
    many = " (comma list)" if sweep else ""
    kind = str if sweep else int
    p.add_argument("--hidden", type=kind, default="1024" if sweep else 1024,
                   help=f"hidden size h{many} (default 1024)")
    p.add_argument("--depth", type=kind, default="2" if sweep else 2,
                   help=f"stacked LSTM layers L{many} (default 2)")
    p.add_argument("--T", type=kind, default="25" if sweep else 25,
                   help=f"clips sampled per video{many} (default 25)")
    if sweep:
        p.add_argument("--fusion", default="late-product",
                       help=f"comma list of {', '.join(FUSIONS)} (default late-product)")
    else:
        p.add_argument("--stream", default="rgb", choices=FUSIONS,
                       help="one stream, mid fusion (one Res-LSTM on fused inputs) or late fusion "
                            "(one Res-LSTM per stream, softmaxes fused) (default rgb)")
    p.add_argument("--input-proj", default="pca", choices=["pca", "linear", "none"],
                   help="d_f -> h: PCA fitted on training clips (default, as the paper), a "
                        "learned linear map, or none (needs d_f == h)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                   help="residual connections between layers (default on)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on x^0 and m_T^L (default 0)")
    p.add_argument("--arch", default="reslstm", choices=["reslstm", "meanpool"],
                   help="reslstm, or meanpool (mean over t + linear: the order-blind baseline)")
    p.add_argument("--epochs", type=int, default=20,
                   help="epochs" + (" per trial, ASHA's max_t" if sweep else "") + " (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="videos per batch and worker (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="RMSProp learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="initial weights, shuffling and PCA sample")
    p.add_argument("--workers", type=int, default=2,
                   help="data-parallel workers" + (" per trial" if sweep else "") + " (default 2)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs each worker reserves (default: min(1, cluster CPUs / workers))")
    p.add_argument("--use-gpu", default="auto", choices=["auto", "yes", "no"],
                   help="one GPU per worker, NCCL (auto: when the cluster has GPUs)")
    p.add_argument("--pca-max-vectors", type=int, default=50_000,
                   help="training clip vectors PCA is fitted on, at most (default 50000)")
    p.add_argument("--cache-data", action=argparse.BooleanOptionalAction, default=True,
                   help="workers keep their data shard in memory after the first epoch "
                        "(default on; --no-cache-data streams it from Ray Data every epoch)")
    p.add_argument("--storage-path", help="Ray Train storage for checkpoints (default "
                   "OUT/ray_results; use s3://... or NFS on a multi-node cluster)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")


def train_config_from_args(a) -> TrainConfig:
    """TrainConfig from options added by ``add_train_arguments`` (searched ones left default
    in a sweep: the sweep sets them per trial)."""
    single = {} if isinstance(a.hidden, str) else {
        "hidden": a.hidden, "depth": a.depth, "T": a.T, "fusion": a.stream}
    return TrainConfig(
        features=a.features, out=a.out, input_proj=a.input_proj, residual=a.residual,
        dropout=a.dropout, arch=a.arch, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
        seed=a.seed, workers=a.workers, use_gpu=a.use_gpu, storage_path=a.storage_path,
        pca_max_vectors=a.pca_max_vectors, cpus_per_worker=a.cpus_per_worker,
        cache_data=a.cache_data, **single)
