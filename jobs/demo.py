"""The README's main command: the whole pipeline on the built-in synthetic data set.

    python jobs/demo.py                      # everything under demo_output/
    python jobs/demo.py --out /tmp/demo --videos-per-class 16 --epochs 20

Generates the synthetic videos (if absent), extracts RGB and flow features with tiny3d (random
initial weights: a stand-in, not pretrained features), runs a small Ray Tune sweep logged to
MLflow, evaluates the best trial on test with late product fusion, trains the order-blind
mean-pool baseline on the same features, and prints a table (with the mlflow ui command).
"""

import argparse
import sys

from reslstm.distributed.demo import DemoConfig, run_demo
from reslstm.distributed.tune import parse_list


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help=f"output directory (default {d.out})")
    p.add_argument("--videos-per-class", type=int, default=d.videos_per_class,
                   help=f"synthetic videos per class (default {d.videos_per_class}; 11 classes)")
    p.add_argument("--seed", type=int, default=d.seed, help="data, weights and shuffling seed")
    p.add_argument("--flow", default=d.flow, choices=["tvl1", "farneback", "dis"],
                   help=f"optical flow (default {d.flow}: fast on a CPU)")
    p.add_argument("--hidden", default=",".join(map(str, d.hidden)), help="comma list of h to sweep")
    p.add_argument("--depth", default=",".join(map(str, d.depth)), help="comma list of L to sweep")
    p.add_argument("--T", default=",".join(map(str, d.T)), help="comma list of T to sweep")
    p.add_argument("--fusion", default=",".join(d.fusion), help="comma list of fusions to sweep")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per trial (default {d.epochs})")
    p.add_argument("--workers", type=int, default=d.workers, help="training workers per trial")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///<out>/mlflow.db)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    a = p.parse_args(argv)
    run_demo(DemoConfig(
        out=a.out, videos_per_class=a.videos_per_class, seed=a.seed, flow=a.flow,
        hidden=parse_list(a.hidden, int), depth=parse_list(a.depth, int), T=parse_list(a.T, int),
        fusion=parse_list(a.fusion), epochs=a.epochs, workers=a.workers,
        mlflow_uri=a.mlflow_uri, address=a.address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
