"""Decoding to short-side-224 RGB: reslstm.video.decoding.iter_frames against the naive PyAV path.

Baseline: plain PyAV decoding with ``frame.to_ndarray(format="rgb24")`` at full size, then
``cv2.resize`` to the same output size. Ours scales and converts in one swscale pass
(``frame.reformat``) with threaded decoding. Repeats are interleaved (ours, baseline, baseline,
ours, ...) so drifts in machine load hit both alike; per video the median time counts.

    python benchmarks/decode.py [VIDEO_DIR] [--short-side 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

from reslstm.video.decoding import iter_frames, output_size

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = REPO.parent / "shared" / "videos"
EXTENSIONS = {".mp4", ".avi", ".mkv", ".webm", ".mov"}


def decode_ours(path: Path, short_side: int):
    return iter_frames(path, short_side=short_side)


def decode_baseline(path: Path, short_side: int):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = output_size(rgb.shape[0], rgb.shape[1], short_side=short_side)
            yield cv2.resize(rgb, (w, h))


def timed(decode, path: Path, short_side: int) -> tuple[float, int]:
    start = time.perf_counter()
    n = sum(1 for _ in decode(path, short_side))
    return time.perf_counter() - start, n


def check_agreement(path: Path, short_side: int) -> float:
    """Mean absolute difference (0-255) between the two outputs; also checks equal shapes."""
    diffs = []
    for a, b in zip(decode_ours(path, short_side), decode_baseline(path, short_side), strict=True):
        if a.shape != b.shape:
            raise AssertionError(f"{path.name}: shapes differ, ours {a.shape} vs baseline {b.shape}")
        diffs.append(np.abs(a.astype(np.int16) - b).mean())
    return float(np.mean(diffs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="?", type=Path, default=DEFAULT_VIDEOS,
                        help="directory of videos (default: ../shared/videos beside the repository)")
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    if not args.videos.is_dir():
        print(f"no video directory at {args.videos}: pass a directory of videos as the first "
              "argument", file=sys.stderr)
        return 2
    paths = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in EXTENSIONS)
    if not paths:
        print(f"no videos ({', '.join(sorted(EXTENSIONS))}) in {args.videos}", file=sys.stderr)
        return 2

    methods = {"ours": decode_ours, "baseline": decode_baseline}
    times = {(p, m): [] for p in paths for m in methods}
    frames = {}
    for p in paths:  # warm the page cache and check both paths agree before timing
        print(f"{p.name}: mean |ours - baseline| = {check_agreement(p, args.short_side):.2f} / 255")
    for rep in range(args.repeats):
        order = list(methods) if rep % 2 == 0 else list(methods)[::-1]
        for p in paths:
            for m in order:
                t, n = timed(methods[m], p, args.short_side)
                times[(p, m)].append(t)
                frames[p] = n

    print(f"\nshort side {args.short_side}, {args.repeats} interleaved repeats, median time per video")
    print(f"{'video':36s} {'frames':>6s} {'ours f/s':>10s} {'base f/s':>10s} {'ratio':>7s}")
    total = {m: 0.0 for m in methods}
    for p in paths:
        med = {m: statistics.median(times[(p, m)]) for m in methods}
        for m in methods:
            total[m] += med[m]
        print(f"{p.name:36s} {frames[p]:6d} {frames[p] / med['ours']:10.0f} "
              f"{frames[p] / med['baseline']:10.0f} {med['baseline'] / med['ours']:6.2f}x")
    n_all = sum(frames.values())
    print(f"{'overall':36s} {n_all:6d} {n_all / total['ours']:10.0f} "
          f"{n_all / total['baseline']:10.0f} {total['baseline'] / total['ours']:6.2f}x")
    print("ratio = ours / baseline throughput (>= 1.0x: ours is at least as fast)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
