"""The feature store's stages at growing numbers of videos: cost per video and driver memory.

For each N (``--videos``, default 1k, 4k, 16k), a store is written as an extraction job writes
it (the project's ``StoreWriter`` fed one segment row per (video, stream), both streams, K
uniform in 10..40 clips of ``--dim`` float32 features, 70/10/20 splits), and these stages are
timed in this process (the driver's side of each):

- ``write``: the writer joining and committing the rows, in part files of ``--rows-per-file``
  rows (what a long job's once-a-minute flushes leave: ~50 rows per file at Kinetics' rate);
- ``plan fresh`` / ``plan resumed``: ``FeatureStore.plan`` over the manifest on an empty store,
  and on a store with half the videos written and 2 % recorded as failed (a fresh object, so
  the listing and the id sets are read as a rerun reads them);
- ``index``: the written ids of both streams read back (what a rerun and ``--verify`` read
  first); ``train index``: ``read_index`` of both streams (ids, labels, splits and where each
  row is: what training reads first);
- ``compact``: the job's end-of-run compaction into ``--part-mib`` files;
- on a local Ray of 2 CPUs (``--no-training`` skips these): ``data 1s`` / ``data 2s``, the
  training data of one and two streams at T = 25 (``load_data``: train and val materialized),
  with the object store's peak and spill against the sampled inputs' size; ``pca``, the PCA
  basis on its bounded sample; ``epoch``, one epoch of the trainer (2 workers, h = 256, late
  sum, the trainer's own val pass included); ``predict``, val and test of that model through
  the Ray Data prediction pass (random features: the costs, not results).

Printed per stage and N: seconds per video, the driver's peak RSS and heap (RssAnon) above
their levels before the stage (polled every 20 ms), for stages of 5 s or more how much the heap
rose per video from half to 90 % of the stage's time, and as ratios to the smallest N: the
time per video, the driver's peak RSS (the whole process while the stage ran: what its node
must have; one process per N runs the stages one after another, so it includes what earlier
stages left) and the stage's own growth (that peak less the RSS the stage began with). Targets
(issue "scale to Kinetics"): time per video at the largest N at most 1.25x the smallest's;
driver peak RSS at most 1.5x from the smallest to the largest N; a resumed plan at most 2x a
fresh one. Where a stage holds nothing per video (the write holds at most a part file per
stream, compaction one merged file) its own growth stays within 1.5x too; the ids of
``plan``, ``index`` and ``train index`` grow with N by design (tens of bytes per video held,
0.3-0.7 KB per video at the peak while they are built; never the features), so their own
growth, a few MiB at 1k videos, follows N.

    python benchmarks/scale.py                            # d = 1024, 1k / 4k / 16k videos
    python benchmarks/scale.py --dim 64 --videos 1000,16000,128000   # per-video overheads
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psutil  # noqa: E402  (a core dependency)

from reslstm import features as fs  # noqa: E402
from reslstm.configs import ExtractConfig  # noqa: E402
from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest  # noqa: E402
from reslstm.extraction.driver import plan_work, read_manifest  # noqa: E402
from reslstm.extraction.segments import SEGMENT_SCHEMA  # noqa: E402
from reslstm.extraction.writer import StoreWriter  # noqa: E402
from reslstm.fusion import STREAMS  # noqa: E402
from reslstm.memory import release_memory  # noqa: E402

CLIP_LEN, CLIP_STRIDE = 16, 8
SPLITS = ("train",) * 7 + ("val",) + ("test",) * 2


def memory_now(proc: psutil.Process) -> tuple[int, int]:
    """(RSS, heap) of a process in bytes. RSS is what psutil and top report: it counts the
    pages of shared libraries the process has mapped (torch, OpenCV: loaded on first use) and
    of Ray's object store it has touched (they stay counted after the objects are freed,
    bounded by the store's size). ``heap`` is RssAnon (Linux): the process's own anonymous
    memory, what grows with the data it holds. Elsewhere ``heap`` is the RSS."""
    rss = proc.memory_info().rss
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            anon = next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        anon = rss
    return rss, anon


class PeakRSS:
    """The process's peak RSS and heap (``memory_now``) while the block runs, above their
    levels when it began (bytes)."""

    def __init__(self, every_s: float = 0.02):
        self.every_s = every_s
        self.base = self.peak = self.heap_base = self.heap_peak = 0
        self.trace: list[tuple[float, int]] = []  # (time, heap) every half second
        self._stop = threading.Event()

    def _sample(self, me: psutil.Process) -> None:
        rss, heap = memory_now(me)
        self.peak, self.heap_peak = max(self.peak, rss), max(self.heap_peak, heap)
        now = time.perf_counter()
        if not self.trace or now - self.trace[-1][0] >= 0.5:
            self.trace.append((now, heap))

    def creep(self, start: float = 0.5, end: float = 0.9) -> float:
        """Bytes per second the heap rose from ``start`` to ``end`` of the block's time (a
        least squares line through its samples, one per half second): the growth that follows
        the work done, past the one-time costs of the start (libraries, actors, the first part
        file) and before those of the end (a job's last flush and compaction). 0 with fewer
        than 10 samples."""
        t = np.array([a for a, _ in self.trace])
        if len(t) < 10:
            return 0.0
        keep = (t >= t[0] + start * (t[-1] - t[0])) & (t <= t[0] + end * (t[-1] - t[0]))
        return float(np.polyfit(t[keep], np.array([b for _, b in self.trace])[keep], 1)[0])

    def __enter__(self):
        me = psutil.Process()
        self.base, self.heap_base = memory_now(me)
        self.peak, self.heap_peak = self.base, self.heap_base

        def poll():
            while not self._stop.wait(self.every_s):
                self._sample(me)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample(psutil.Process())

    @property
    def growth(self) -> int:
        return self.peak - self.base

    @property
    def heap_growth(self) -> int:
        return self.heap_peak - self.heap_base


def manifest_rows(n: int, videos: Path) -> list[dict]:
    """N manifest rows whose paths are empty files in one folder (the planner lists it)."""
    videos.mkdir(parents=True, exist_ok=True)
    rows = [{"video_id": f"c{i % 400:03d}/v{i:07d}", "path": str(videos / f"v{i:07d}.mp4"),
             "label": i % 400, "label_name": f"c{i % 400:03d}", "split": SPLITS[i % 10]}
            for i in range(n)]
    for r in rows:
        Path(r["path"]).touch()
    return rows


def segment_batches(rows: list[dict], dim: int, seed: int, batch: int = 64):
    """Segment tables as the pipeline hands them to the writer: one whole-video segment per
    (video, stream), ``batch`` rows per table (features cut from a random pool, so making
    them costs little next to what is measured)."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((4096 + 40, dim), dtype=np.float32)
    out = []
    for row in rows:
        k = int(rng.integers(10, 41))
        frames = CLIP_LEN + (k - 1) * CLIP_STRIDE
        for stream in STREAMS:
            at = int(rng.integers(0, 4096))
            feats = pool[at:at + k]
            out.append({**row, "stream": stream, "kind": "segment", "seg_index": 0,
                        "first_clip": 0, "num_clips": k, "is_last": True,
                        "total_frames": frames + (stream == "flow"), "padded": False,
                        "fps": 25.0, "warning": None, "data": feats.tobytes(),
                        "shape": [k, dim], "first_frame": list(range(0, k * CLIP_STRIDE, CLIP_STRIDE)),
                        "last_frame": [j * CLIP_STRIDE + CLIP_LEN - 1 for j in range(k)],
                        "start_s": [j * 0.32 for j in range(k)],
                        "end_s": [j * 0.32 + 0.64 for j in range(k)],
                        "decode_s": 0.0, "flow_s": 0.0, "features_s": 0.0})
            if len(out) == batch:
                yield pa.Table.from_pylist(out, schema=SEGMENT_SCHEMA)
                out = []
    if out:
        yield pa.Table.from_pylist(out, schema=SEGMENT_SCHEMA)


def settings(dim: int) -> dict[str, fs.StreamSettings]:
    return {s: fs.StreamSettings("synthetic", "random-init", dim, CLIP_LEN, CLIP_STRIDE, 1, 256,
                                 224, flow_method="tvl1" if s == "flow" else None)
            for s in STREAMS}


def timed(stage: str, results: dict, n: int, fn):
    """Run ``fn()`` and record (seconds, peak RSS growth, peak heap growth, heap creep in bytes
    per video from 50 % to 90 % of its time, the process's peak RSS, its peak heap) under
    ``results[stage][n]``."""
    with PeakRSS() as mem:
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
    creep = mem.creep() * seconds / n  # heap bytes per video from 50 % to 90 % of the time
    results.setdefault(stage, {})[n] = (seconds, mem.growth, mem.heap_growth, creep, mem.peak,
                                        mem.heap_peak)
    print(f"  {stage:<13} N={n:>7,}: {seconds:8.2f} s  {1e3 * seconds / n:7.3f} ms/video  "
          f"driver +{mem.growth / 2**20:7.1f} MiB (heap +{mem.heap_growth / 2**20:.1f}"
          + (f"; {creep / 1024:+.1f} KB/video from 50 to 90 % of the time" if len(mem.trace) >= 10
             else "") + ")",
          flush=True)
    return value


def run(n: int, dim: int, rows_per_file: int, part_mib: float, results: dict, root: Path,
        with_training: bool = True) -> None:
    rows = manifest_rows(n, root / "videos")
    manifest = root / "manifest.parquet"
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    store_dir = root / f"store-{n}"
    fs.write_metadata(store_dir, settings(dim))

    def write(rows):
        w = StoreWriter(store_dir, settings(dim), run_id="bench", rows_per_file=rows_per_file)
        for table in segment_batches(rows, dim, seed=n):
            w.consume(table)
        w.close()
        return len(w.files)

    files = timed("write", results, n, functools.partial(write, rows))
    # A resumed store: half the videos written, 2 % of the rest recorded as failed.
    resumed = root / f"resumed-{n}"
    fs.write_metadata(resumed, settings(dim))
    w = StoreWriter(resumed, settings(dim), run_id="bench", rows_per_file=rows_per_file)
    for table in segment_batches(rows[: n // 2], dim, seed=n):
        w.consume(table)
    for row in rows[n // 2: n // 2 + n // 50]:
        for s in STREAMS:
            w._fail((row["video_id"], s), row, "decode", "VideoError", f"{row['path']}: broken")
    w.close()
    # The benchmark's own rows (a Python dict per video) go before the stages are measured,
    # so the driver's peak RSS is the stage's and what the process keeps, not the benchmark's.
    del w, rows, table
    gc.collect()
    release_memory()
    timed("index", results, n, lambda: [len(fs.FeatureStore(store_dir).written_id_array(s)) for s in STREAMS])
    timed("train index", results, n, lambda: fs.read_index(store_dir, STREAMS))
    def plan(store: Path):  # what the job's driver does under the lock: read, list, plan
        cfg = ExtractConfig(manifest=str(manifest), out=str(store), extractor="tiny3d")
        return plan_work(cfg, read_manifest(cfg.manifest), fs.FeatureStore(store))

    timed("plan fresh", results, n, lambda: plan(root / f"empty-{n}"))
    timed("plan resumed", results, n, lambda: plan(resumed))
    shutil.rmtree(resumed)
    done = timed("compact", results, n,
                 lambda: fs.FeatureStore(store_dir).compact(int(part_mib * 2**20)))
    size = sum(f.stat().st_size for f in store_dir.rglob("*.parquet"))
    print(f"  store: {size / 2**30:.2f} GiB; part files {files} -> "
          f"{sum(c.after for c in done.values())} after compaction", flush=True)
    if with_training:
        training_stages(store_dir, n, results)
    shutil.rmtree(store_dir)


class ObjectStorePeak:
    """Peak object-store use (plasma) and spilled bytes while a block runs, read from Ray's
    memory summary every half second."""

    def __init__(self):
        self.peak = 0
        self.spilled = 0

    @staticmethod
    def _read() -> tuple[int, int]:
        from ray._private.internal_api import memory_summary

        text = memory_summary(stats_only=True)
        used = re.search(r"Plasma memory usage (\d+) MiB", text)
        spilled = re.search(r"Spilled (\d+) MiB", text)
        return (int(used.group(1)) if used else 0) * 2**20, (int(spilled.group(1)) if spilled else 0) * 2**20

    def __enter__(self):
        self.base_spilled = self._read()[1]
        self.stop = threading.Event()

        def poll():
            while not self.stop.wait(0.5):
                self.peak = max(self.peak, self._read()[0])
        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        used, spilled = self._read()
        self.peak = max(self.peak, used)
        self.spilled = spilled - self.base_spilled


def training_stages(store_dir: Path, n: int, results: dict, T: int = 25) -> None:
    """Training data for one and two streams (object store peak and spill against the sampled
    inputs' size); on the two-stream data: the PCA basis, one epoch of the trainer (2 workers)
    and val + test predicted by the Ray Data pass."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        for streams in (("rgb",), ("rgb", "flow")):
            data = _training_data(store_dir, streams, n, results, T)
            if len(streams) == 2:
                _train_and_predict(store_dir, data, n, results, T)
            del data
    finally:
        ray.shutdown()


def _training_data(store_dir: Path, streams: tuple, n: int, results: dict, T: int):
    from reslstm.distributed.train.data import load_data

    stage = f"data {len(streams)}s"
    with ObjectStorePeak() as store_mem:
        data = timed(stage, results, n, lambda: load_data(store_dir, streams, T))
    idx = data.index
    sampled = sum(idx.count(s) for s in ("train", "val")) * T * idx.feature_dim * 4 * len(streams)
    results[stage][n] += (store_mem.peak, store_mem.spilled, sampled)
    print(f"    object store peak {store_mem.peak / 2**20:,.0f} MiB = "
          f"{store_mem.peak / sampled:.2f}x the sampled train+val inputs "
          f"({sampled / 2**20:,.0f} MiB); spilled {store_mem.spilled / 2**20:,.0f} MiB", flush=True)
    return data


def _train_and_predict(store_dir: Path, data, n: int, results: dict, T: int) -> None:
    """PCA, one epoch (h = 256, L = 2, late sum, 2 workers) and the prediction pass of the
    model it trained: the costs, not results (random features)."""
    from reslstm.checkpoint import load_payload
    from reslstm.configs import TrainConfig
    from reslstm.distributed.train import checkpoints
    from reslstm.distributed.train.evaluation import predict
    from reslstm.distributed.train.trainer import build_trainer, prepare, storage_location

    timed("pca", results, n, lambda: data.pca_basis("rgb", 0, 50_000))
    cfg = TrainConfig(features=str(store_dir), out=str(store_dir.parent / f"run-{n}"),
                      fusion="late-sum", hidden=min(256, data.index.feature_dim), depth=2, T=T, epochs=1, batch_size=64,
                      workers=2)
    spec = prepare(cfg, data)  # the PCA bases fitted above are reused
    spec.log_epochs = False
    trainer = build_trainer(cfg, data, spec, name=f"scale-{n}", where=storage_location(cfg))
    result = timed("epoch", results, n, trainer.fit)
    payload = load_payload(checkpoints.best_checkpoint(result)[0])
    out = store_dir.parent / f"predictions-{n}"
    timed("predict", results, n, lambda: predict(payload, data.only(("val", "test")).datasets,
                                                 data.index.label_names, out))


def each_in_a_process(script: str, sizes: list[int], args: list[str], label: str = "") -> dict:
    """Run ``script --one N ARGS`` for each N in a fresh process (so the driver's memory is
    measured from the same start each time), echo its lines, and gather the ``RESULT`` JSON
    each prints: {stage: {N: values}}."""
    results: dict = {}
    for n in sizes:
        print(f"N = {n:,} videos" + (f", {label}" if label else ""), flush=True)
        proc = subprocess.run([sys.executable, script, "--one", str(n), *args],
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.exit(f"the run at N = {n} failed (exit {proc.returncode})")
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                for stage, value in json.loads(line[7:]).items():
                    results.setdefault(stage, {})[n] = tuple(value)
            else:
                print(line, flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", default="1000,4000,16000", help="comma list of N")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one N in this process (JSON out)
    p.add_argument("--dim", type=int, default=1024, help="feature size d")
    p.add_argument("--rows-per-file", type=int, default=50, help="rows per part file written")
    p.add_argument("--part-mib", type=float, default=128.0, help="compaction target")
    p.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    p.add_argument("--no-training", action="store_true", help="only the store's stages (no Ray)")
    a = p.parse_args()
    if a.one:
        root = Path(tempfile.mkdtemp(prefix="scale-", dir=a.dir))
        results: dict = {}
        try:
            run(a.one, a.dim, a.rows_per_file, a.part_mib, results, root, not a.no_training)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print("RESULT " + json.dumps({k: v[a.one] for k, v in results.items()}), flush=True)
        return
    sizes = [int(v) for v in a.videos.split(",")]
    results = each_in_a_process(__file__, sizes, [
        "--dim", str(a.dim), "--rows-per-file", str(a.rows_per_file), "--part-mib", str(a.part_mib),
        *(["--dir", a.dir] if a.dir else []), *(["--no-training"] if a.no_training else [])],
        f"d = {a.dim}")
    small, large = sizes[0], sizes[-1]
    print(f"\nratios, N = {large:,} against N = {small:,}: time per video; the driver's peak RSS "
          "(the whole process: what its node must have); the stage's own growth above the RSS "
          "it began with")
    for stage, by_n in results.items():
        (t0, m0, _, _, p0), (t1, m1, _, _, p1) = by_n[small][:5], by_n[large][:5]
        per = (t1 / large) / (t0 / small)
        mem = (m1 / m0) if m0 > 2**20 else float("nan")
        print(f"  {stage:<13} time/video {per:5.2f}x   peak RSS {p1 / p0:5.2f}x "
              f"({p0 / 2**20:,.0f} -> {p1 / 2**20:,.0f} MiB)   own growth {mem:5.2f}x "
              f"(+{m0 / 2**20:.0f} -> +{m1 / 2**20:.0f} MiB)")
    fresh, resumed = results["plan fresh"][large][0], results["plan resumed"][large][0]
    print(f"  resumed plan / fresh plan at N = {large:,}: {resumed / fresh:.2f}x")
    for stage in ("data 1s", "data 2s"):
        if stage in results:
            peak, spilled, sampled = results[stage][large][6:9]
            print(f"  {stage} at N = {large:,}: object store peak {peak / sampled:.2f}x the sampled "
                  f"inputs, spilled {spilled / 2**20:,.0f} MiB")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
