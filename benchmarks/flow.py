"""TV-L1 flow throughput: reslstm.flow.tvl1 (PyTorch, batched) against OpenCV's CPU TV-L1 on every core.

Baseline, measured in the same run: cv2.optflow.DualTVL1OpticalFlow_create() (defaults), one
process per CPU core (multiprocessing, one OpenCV thread each), pairs handed out one at a time.
Ours: ``tvl1_flow`` on grey pairs already on the device, batched:

- CPU, laid out like the baseline: one process per core, one torch thread each, its share of
  the pairs as one batch (``--cpu-compile`` adds the same with compile=True, ``--one-process``
  one process using every torch thread);
- CUDA when available: batch sizes 16, 64, 256 (``--batches``), eager and ``compile=True``
  (compilation is a separate warm-up, reported but not timed), with peak device memory; plus
  ``TorchTVL1`` end to end (uint8 RGB frames from host memory, grey conversion and pyramids on
  the device, as extraction calls it) at the largest batch.

Every configuration gets an untimed warm-up run first; CUDA is synchronised around each timed
run. Each row gives pairs/s, the ratio to the baseline and the mean end-point error against
OpenCV's flow of the same pairs (pairs are tiled to fill big batches); the best CUDA row is
set against the targets at 224x224 (>= 200 pairs/s on one H100/H200-class GPU, stretch 1000).
CUDA rows that would start after ``--budget-s`` seconds are left out (and say so), so a run
stays within a few minutes whatever compilation costs: on one H200 the defaults are meant to
finish in under 5 minutes, ``--quick`` in about 2.

Frames: consecutive frames of the videos in ../shared/videos (decoded at --size x --size, grey
by cv2.cvtColor RGB2GRAY), or synthetic textured frames in motion when there are none.

    python benchmarks/flow.py                 # every core, and CUDA when present (16,64,256)
    python benchmarks/flow.py --quick         # one timed run per row, CUDA batch 64 only
    python benchmarks/flow.py --size 112 --no-cuda --repeats 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from timing import median_seconds, sync

from reslstm.flow.tvl1 import TorchTVL1, tvl1_flow

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = REPO.parent / "shared" / "videos"
EXTENSIONS = {".mp4", ".avi", ".mkv", ".webm", ".mov"}


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------

def real_frames(videos: Path, size: int, n_pairs: int) -> list[np.ndarray]:
    """Runs of consecutive uint8 RGB frames (k, size, size, 3), one run per video in turn,
    with n_pairs pairs in all (None when there are no videos)."""
    from reslstm.video.decoding import VideoReader

    paths = sorted(p for p in videos.iterdir() if p.suffix.lower() in EXTENSIONS) if videos.is_dir() else []
    if not paths:
        return None
    per_video = -(-n_pairs // len(paths))
    runs, left = [], n_pairs
    for path in paths:
        if left <= 0:
            break
        frames = []
        for frame in VideoReader(path, size=(size, size), min_frame_ratio=None):
            frames.append(frame)
            if len(frames) == min(per_video, left) + 1:
                break
        if len(frames) >= 2:
            runs.append(np.stack(frames))
            left -= len(frames) - 1
    return runs if left <= 0 else None


def synthetic_frames(size: int, n_pairs: int) -> list[np.ndarray]:
    """One run of n_pairs + 1 RGB frames: a smooth random texture drifting and rotating."""
    rng = np.random.default_rng(0)
    big = size * 2
    tex = cv2.GaussianBlur(rng.random((big, big, 3)).astype(np.float32), (0, 0), 2.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 255
    frames = []
    for t in range(n_pairs + 1):
        m = cv2.getRotationMatrix2D((big / 2, big / 2), 0.7 * t, 1.0)
        m[:, 2] += (1.8 * t, -1.1 * t)
        warped = cv2.warpAffine(tex, m, (big, big), flags=cv2.INTER_CUBIC)
        frames.append(warped[size // 2:size // 2 + size, size // 2:size // 2 + size])
    return [np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)]


def grey_pairs(runs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    prev, nxt = [], []
    for run in runs:
        grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in run])
        prev.append(grey[:-1])
        nxt.append(grey[1:])
    return np.concatenate(prev), np.concatenate(nxt)


# ---------------------------------------------------------------------------------------------
# OpenCV on every core
# ---------------------------------------------------------------------------------------------

_TVL1 = None


def _init_opencv_worker():
    global _TVL1
    cv2.setNumThreads(1)
    _TVL1 = {}


def _opencv_flow(pair):
    a, b = pair
    if a.shape not in _TVL1:  # one object per size (calc() may lower nscales for good)
        _TVL1[a.shape] = cv2.optflow.DualTVL1OpticalFlow_create()
    return _TVL1[a.shape].calc(a, b, None)


def _init_torch_worker():
    torch.set_num_threads(1)


def _ours_chunk(chunk):
    prev, nxt, compile = chunk
    return tvl1_flow(torch.from_numpy(prev), torch.from_numpy(nxt), compile=compile).numpy()


class CpuMethod:
    """A pool of one-thread worker processes, one per core, and the tasks of one timed run."""

    def __init__(self, name, setting, workers, init, fn, tasks):
        self.name, self.setting, self.fn, self.tasks = name, setting, fn, tasks
        self.pool = mp.get_context("spawn").Pool(workers, initializer=init)
        self.times = []

    def run(self):
        return self.pool.map(self.fn, self.tasks, chunksize=1)

    def warm_up(self) -> float:
        """Untimed run of the full tasks (start-up, first calls, compilation)."""
        start = time.perf_counter()
        self.flows = self.run()
        return time.perf_counter() - start

    def timed(self):
        start = time.perf_counter()
        self.flows = self.run()
        self.times.append(time.perf_counter() - start)

    def close(self):
        self.pool.close()
        self.pool.join()


def bench_cpu(prev, nxt, workers: int, repeats: int, ours: bool, cpu_compile: bool):
    """OpenCV and ours on one-thread processes, one per core, the timed runs interleaved
    (A B B A ...) so drifts in machine load hit every method alike. Returns (rows, OpenCV's
    flows)."""
    methods = [CpuMethod("OpenCV CPU TV-L1", f"{workers} processes x 1 thread", workers,
                         _init_opencv_worker, _opencv_flow, list(zip(prev, nxt)))]
    for compile in ([False, True] if cpu_compile else [False]) if ours else []:
        chunks = [(p, n, compile) for p, n in zip(np.array_split(prev, workers),
                                                  np.array_split(nxt, workers)) if len(p)]
        methods.append(CpuMethod("ours CPU compiled" if compile else "ours CPU",
                                 f"{len(chunks)} processes x 1 thread, batched", len(chunks),
                                 _init_torch_worker, _ours_chunk, chunks))
    try:
        warm = [m.warm_up() for m in methods]
        for r in range(repeats):
            for m in (methods if r % 2 == 0 else methods[::-1]):
                m.timed()
    finally:
        for m in methods:
            m.close()
    refs = np.stack(methods[0].flows)
    rows = []
    for m, w in zip(methods, warm):
        flows = np.stack(m.flows) if m is methods[0] else np.concatenate(m.flows)
        rows.append((m.name, m.setting, {"pairs/s": len(prev) / statistics.median(m.times),
                                         "warmup_s": w,
                                         "epe": float(np.linalg.norm(flows - refs, axis=-1).mean())}))
    return rows, refs


# ---------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------

def mean_epe(flow: torch.Tensor, refs: np.ndarray) -> float:
    f = flow.float().cpu().numpy()
    reps = -(-len(f) // len(refs))
    r = np.concatenate([refs] * reps)[:len(f)]
    return float(np.linalg.norm(f - r, axis=-1).mean())


def bench_ours(prev, nxt, refs, device, batch: int, compile: bool, repeats: int) -> dict:
    reps = -(-batch // len(prev))
    p = torch.from_numpy(np.concatenate([prev] * reps)[:batch]).to(device)
    n = torch.from_numpy(np.concatenate([nxt] * reps)[:batch]).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    flow = tvl1_flow(p, n, compile=compile)  # warm-up (and compilation)
    sync(device)
    warmup = time.perf_counter() - start
    seconds = median_seconds(lambda: tvl1_flow(p, n, compile=compile), device, repeats)
    row = {"pairs/s": batch / seconds, "warmup_s": warmup, "epe": mean_epe(flow, refs)}
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def bench_end_to_end(runs, refs, device, batch: int, compile: bool, repeats: int) -> dict:
    """TorchTVL1 on batch + 1 uint8 RGB frames in host memory: the longest run of consecutive
    frames, played forwards and backwards until long enough, so that every pair is a real
    pair (or one reversed), not a cut from one video to another."""
    run = max(runs, key=len)
    cycle = np.concatenate([run, run[-2:0:-1]])  # a b c d c b | a b c ...
    frames = np.concatenate([cycle] * -(-(batch + 1) // len(cycle)))[:batch + 1]
    tvl1 = TorchTVL1(device=device, batch_size=batch, compile=compile)
    tvl1(frames)  # warm-up
    seconds = median_seconds(lambda: tvl1(frames), device, repeats)
    return {"pairs/s": batch / seconds}


# ---------------------------------------------------------------------------------------------

TARGET, STRETCH = 200.0, 1000.0  # pairs/s at 224x224 on one H100/H200-class GPU


def main(argv=None) -> int:
    began = time.perf_counter()
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS,
                        help="directory of videos (default ../shared/videos); synthetic frames if absent")
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (square)")
    parser.add_argument("--pairs", type=int, default=None,
                        help=f"distinct frame pairs (default max(8, 2 x cores) = {max(8, 2 * cores)}; "
                             "--quick: one per worker)")
    parser.add_argument("--workers", type=int, default=cores,
                        help="CPU processes, for OpenCV and for ours (default: every core)")
    parser.add_argument("--batches", default=None,
                        help="CUDA batch sizes, comma-separated (default 16,64,256; --quick: 64)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per row (default 3 on CUDA; 2 on the CPU, interleaved; "
                             "--quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: fewer pairs, one timed run per row, one CUDA batch size")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="start no CUDA row after this many seconds of the run (default 240)")
    parser.add_argument("--no-cpu", action="store_true", help="skip our CPU rows")
    parser.add_argument("--cpu-compile", action="store_true",
                        help="also run ours on the CPU per core with compile=True (each process "
                             "compiles first, ~1 minute, not timed)")
    parser.add_argument("--one-process", action="store_true",
                        help="also run ours on the CPU as one process using every torch thread (slow "
                             "on small or busy machines: thousands of small operations)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA rows even when CUDA is available")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args(argv)

    n_pairs = args.pairs or (args.workers if args.quick else max(8, 2 * cores))
    runs = real_frames(args.videos, args.size, n_pairs)
    source = f"real frames from {args.videos}"
    if runs is None:
        runs, source = synthetic_frames(args.size, n_pairs), "synthetic textured frames"
    prev, nxt = grey_pairs(runs)
    cuda = torch.cuda.is_available() and not args.no_cuda
    repeats_cpu = args.repeats or (1 if args.quick else 2)
    repeats_gpu = args.repeats or (1 if args.quick else 3)
    print(f"{len(prev)} pairs at {args.size}x{args.size} ({source}); torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}; {cores} CPU cores")

    rows, refs = bench_cpu(prev, nxt, args.workers, repeats_cpu, not args.no_cpu, args.cpu_compile)
    ocv_rate = rows[0][2]["pairs/s"]
    for method, setting, row in rows:
        print(f"{method}, {setting}: {row['pairs/s']:.2f} pairs/s", flush=True)

    if args.one_process:
        cpu = torch.device("cpu")
        row = bench_ours(prev, nxt, refs, cpu, len(prev), False, repeats_cpu)
        rows.append(("ours CPU", f"batch {len(prev)}, {torch.get_num_threads()} threads", row))
        print(f"ours CPU, one process: {row['pairs/s']:.2f} pairs/s", flush=True)

    skipped = []
    if cuda:
        dev = torch.device("cuda")
        batches = [int(b) for b in (args.batches or ("64" if args.quick else "16,64,256")).split(",")
                   if b.strip()]

        def in_budget(label: str) -> bool:
            if time.perf_counter() - began <= args.budget_s:
                return True
            skipped.append(label)
            return False

        for compile in ([False] if args.no_compile else [False, True]):
            label = "ours CUDA compiled" if compile else "ours CUDA eager"
            # compiled: the largest batch first, the one that matters if the budget runs out
            for batch in (sorted(batches, reverse=True) if compile else batches):
                if not in_budget(f"{label} batch {batch}"):
                    continue
                row = bench_ours(prev, nxt, refs, dev, batch, compile, repeats_gpu)
                rows.append((label, f"batch {batch}", row))
                print(f"{label} batch {batch}: {row['pairs/s']:.1f} pairs/s "
                      f"(warm-up {row['warmup_s']:.1f} s)", flush=True)
        big = max(batches)
        compile = not args.no_compile
        setting = f"batch {big}{', compiled' if compile else ''}"
        if in_budget(f"TorchTVL1 uint8 RGB in, {setting}"):
            row = bench_end_to_end(runs, refs, dev, big, compile, repeats_gpu)
            rows.append(("TorchTVL1 uint8 RGB in", setting, row))

    name = torch.cuda.get_device_name() if cuda else "-"
    print(f"\nCUDA device: {name}")
    print(f"{'method':<24} {'setting':<32} {'pairs/s':>9} {'vs OpenCV':>9} {'EPE vs OpenCV':>14} "
          f"{'warm-up s':>9} {'peak GiB':>8}")
    for method, setting, row in rows:
        epe = f"{row['epe']:.2e}" if "epe" in row else "-"
        warm = f"{row['warmup_s']:.1f}" if "warmup_s" in row else "-"
        peak = f"{row['peak_gib']:.1f}" if "peak_gib" in row else "-"
        print(f"{method:<24} {setting:<32} {row['pairs/s']:>9.2f} {row['pairs/s'] / ocv_rate:>8.2f}x "
              f"{epe:>14} {warm:>9} {peak:>8}")
    for label in skipped:
        print(f"not run (past --budget-s {args.budget_s:g}): {label}")
    gpu_rows = [(m, st, r) for m, st, r in rows if "CUDA" in m or "TorchTVL1" in m]
    if gpu_rows:
        m, st, r = max(gpu_rows, key=lambda x: x[2]["pairs/s"])
        verdict = ("stretch target met" if r["pairs/s"] >= STRETCH else "target met"
                   if r["pairs/s"] >= TARGET else "below target")
        note = "" if args.size == 224 else f" (targets are for 224x224; this run is {args.size}x{args.size})"
        print(f"best GPU row: {m}, {st}: {r['pairs/s']:.1f} pairs/s = "
              f"{r['pairs/s'] / ocv_rate:.1f}x OpenCV on {args.workers} cores; target >= {TARGET:g}, "
              f"stretch >= {STRETCH:g}: {verdict}{note}")
    else:
        print("GPU: not measured (no CUDA device here, or --no-cuda)")
    cpu_rows = [r for m, _, r in rows if m == "ours CPU"]
    if cpu_rows:
        print(f"ours on the CPU: {cpu_rows[0]['pairs/s'] / ocv_rate:.2f}x OpenCV on the same "
              f"{args.workers} processes")
    print(f"total time: {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
