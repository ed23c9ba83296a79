"""Generate the synthetic demo data set (H.264 MP4s + manifest.parquet) into --out.

    python jobs/synth.py --out demo_output/synthetic --videos-per-class 16 --seed 0

Prints progress every --log-every videos and a summary (videos per split, classes, manifest).
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, run_job
from reslstm.distributed.synth import generate_synthetic, parse_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="output folder (videos/, manifest.parquet, synthetic.json)")
    p.add_argument("--videos-per-class", type=int, default=16, help="videos per class (11 classes)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same videos")
    p.add_argument("--size", type=parse_size, default=(96, 128), metavar="WIDTHxHEIGHT",
                   help="frame size, even sides (default 128x96)")
    p.add_argument("--workers", type=int, default=1, help="processes; the output does not depend on it")
    p.add_argument("--log-every", type=int, default=25, help="print progress every N videos")
    a = p.parse_args(argv)
    return run_job("synth", lambda: generate_synthetic(
        a.out, videos_per_class=a.videos_per_class, seed=a.seed, size=a.size,
        workers=a.workers, log_every=a.log_every) and 0)


if __name__ == "__main__":
    sys.exit(main())
