"""Peak memory of the extraction workers against video length: it should not grow.

For videos of 1, 5 and 20 minutes (generated here, streamed to disk frame by frame), each
extracted alone (RGB + flow) by the Ray pipeline on a local Ray started by this script, the
memory of every Ray worker process is polled every 0.2 s (psutil finds the processes, their
/proc status gives the numbers). Printed per video: the peak RSS of any single worker and of all
of them together, and per stage (workers are told apart by the title Ray gives the process,
e.g. ``ray::MapBatches(decode_segments)``) the peak RSS and heap (RssAnon: the worker's own
memory, without the object-store pages it has mapped). The baseline is the 1-minute video of
the same run; the ratios 5-min and 20-min / 1-min should stay near 1 (target: within 1.5x),
because long videos stream through in segments of ``--clips-per-segment`` clips, each segment
is a block of its own and the segments in flight are capped by the object-store budget.

    python benchmarks/memory.py                      # 1, 5, 20 minutes at 64x48, 25 fps
    python benchmarks/memory.py --minutes 1,20 --size 112 --object-store-limit-gb 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import psutil  # noqa: E402
import pyarrow as pa
import ray  # noqa: F401  (also puts Ray's bundled psutil on the path)

from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest


def write_long_video(path: Path, seconds: float, width: int = 64, height: int = 48, fps: int = 25) -> int:
    """A moving gradient, encoded frame by frame (never the whole video in memory)."""
    n = int(round(seconds * fps))
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            img = np.stack([(xx * 4 + i) % 256, (yy * 5 + 2 * i) % 256,
                            ((xx + yy) * 3 + i // 5) % 256], axis=-1).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return n


STAGES = (("decode", "decode_segments"), ("flow", "flow_stage"), ("features", "FeatureStage"))


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssShmem of a process in bytes, from /proc/PID/status (Linux)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


class WorkerMemory:
    """Polls the memory of every Ray worker process under this process every ``every_s`` s.

    ``rss`` is the resident set as psutil and top report it. It includes the object-store
    (shared memory) pages a worker ever wrote or read, and those stay resident in its mapping
    after the objects are freed, so a worker that streamed many segments through the store
    shows more of it even when few were alive at once. ``heap`` is RssAnon, the worker's own
    anonymous memory (decoder, frame buffers, Arrow tables, models): what one task holds.
    Peaks are kept per stage (workers are told apart by the process title Ray gives them).
    """

    def __init__(self, every_s: float = 0.2):
        self.every_s = every_s
        self.peak = defaultdict(int)  # (stage, "rss" | "heap") -> bytes; stage "any": all workers
        self.peak_sum_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in me.children(recursive=True):
                try:
                    title = " ".join(p.cmdline())
                    if not title.startswith("ray::"):
                        continue
                    mem = _status_kib(p.pid)
                except (psutil.Error, OSError):
                    continue
                total += mem["VmRSS"]
                stage = next((k for k, key in STAGES if key in title), None)
                for where in ("any", stage) if stage else ("any",):
                    self.peak[where, "rss"] = max(self.peak[where, "rss"], mem["VmRSS"])
                    self.peak[where, "heap"] = max(self.peak[where, "heap"], mem["RssAnon"])
            self.peak_sum_rss = max(self.peak_sum_rss, total)
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="1,5,20", help="video lengths in minutes (first = baseline)")
    parser.add_argument("--size", type=int, default=72, help="short side frames are decoded at (72)")
    parser.add_argument("--clips-per-segment", type=int, default=32)
    parser.add_argument("--flow", default="dis", help="flow method (dis: fast; tvl1 is ~100x slower)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (2)")
    parser.add_argument("--object-store-limit-gb", type=float,
                        help="passed to the extraction (default: the pipeline's own bound)")
    parser.add_argument("--workdir", help="where videos and stores go (default: a temp dir)")
    args = parser.parse_args(argv)

    from reslstm.configs import ExtractConfig
    from reslstm.distributed.extract.job import run_extraction
    from reslstm.distributed.runtime import local_system_config

    minutes = [float(m) for m in args.minutes.split(",")]
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="reslstm-mem-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR",
             _system_config=local_system_config(args.cpus))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # no progress lines between the results
    ctx.print_on_execution_start = False
    results = []
    try:
        for m in minutes:
            video = work / f"long_{m:g}min.mp4"
            t0 = time.perf_counter()
            n = write_long_video(video, m * 60)
            gen_s = time.perf_counter() - t0
            manifest = write_manifest(pa.Table.from_pylist(
                [{"video_id": video.stem, "path": str(video), "label": 0, "label_name": "x",
                  "split": "train"}], schema=MANIFEST_SCHEMA), work / f"manifest_{m:g}.parquet")
            cfg = ExtractConfig(manifest=str(manifest), out=str(work / f"store_{m:g}"),
                                extractor="tiny3d", flow=args.flow, crops=1, size=args.size,
                                clips_per_segment=args.clips_per_segment, overwrite=True,
                                object_store_limit_gb=args.object_store_limit_gb,
                                progress_every_s=1e9)
            with WorkerMemory() as mem, contextlib.redirect_stdout(io.StringIO()):
                t0 = time.perf_counter()
                summary = run_extraction(cfg)
                secs = time.perf_counter() - t0
            if sum(summary.written.values()) != 2:
                print(f"extraction of {video.name} failed: {summary.failed}", file=sys.stderr)
                return 1
            results.append((m, n, mem))
            mib = lambda v: f"{v / 2**20:5.0f}"  # noqa: E731
            print(f"{m:5g} min ({n:6d} frames, written in {gen_s:.0f}s): extracted in {secs:6.1f}s, "
                  f"{summary.clips} clips; peak of one worker: RSS {mib(mem.peak['any', 'rss'])} MiB, "
                  f"heap {mib(mem.peak['any', 'heap'])} MiB; all workers RSS "
                  f"{mib(mem.peak_sum_rss)} MiB", flush=True)
            print("        per stage, RSS / heap MiB: " + ", ".join(
                f"{k} {mib(mem.peak[k, 'rss']).strip()} / {mib(mem.peak[k, 'heap']).strip()}"
                for k, _ in STAGES), flush=True)
    finally:
        ray.shutdown()
        if tmp:
            tmp.cleanup()
    m0, n0, first = results[0]
    base, base_sum = first.peak, first.peak_sum_rss
    for m, n, mem in results[1:]:
        ratios = ", ".join(f"{k} {mem.peak[k, 'rss'] / base[k, 'rss']:.2f}x / "
                           f"{mem.peak[k, 'heap'] / base[k, 'heap']:.2f}x" for k, _ in STAGES)
        print(f"ratio {m:g}-min / {m0:g}-min (video {n / n0:.0f}x longer; target <= 1.5x): "
              f"one worker RSS {mem.peak['any', 'rss'] / base['any', 'rss']:.2f}x, "
              f"heap {mem.peak['any', 'heap'] / base['any', 'heap']:.2f}x; all workers RSS "
              f"{mem.peak_sum_rss / base_sum:.2f}x; per stage RSS / heap: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
