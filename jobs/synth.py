"""Generate the synthetic demo data set (H.264 MP4s + manifest.parquet) into --out.

    python jobs/synth.py --out demo_output/synthetic --videos-per-class 16 --seed 0

Prints progress every --log-every videos and a summary (videos per split, classes, manifest).
"""

import argparse

from reslstm.datasets.synthetic import generate_synthetic, parse_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (videos/, manifest.parquet, synthetic.json)")
    parser.add_argument("--videos-per-class", type=int, default=16, help="videos per class (default 16: 176 videos)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same videos (default 0)")
    parser.add_argument("--size", type=parse_size, default=(96, 128), metavar="WIDTHxHEIGHT",
                        help="frame size, even sides (default 128x96)")
    parser.add_argument("--workers", type=int, default=1, help="processes; the output does not depend on it")
    parser.add_argument("--log-every", type=int, default=25, help="print progress every N videos")
    args = parser.parse_args(argv)
    generate_synthetic(args.out, videos_per_class=args.videos_per_class, seed=args.seed, size=args.size,
                       workers=args.workers, log=print, log_every=args.log_every)


if __name__ == "__main__":
    main()
