"""The extraction planner against reality: ``jobs/extract.py --dry-run`` on a large manifest, and
the ETA of ``--calibrate N`` against the measured time of the real run.

1. Dry run: a manifest of ``--links`` entries (default 10 000), hard links to one synthetic
   video (every entry is its own file to open), read with ``--dry-run`` on a local Ray. Target:
   under a minute on 2 cores. Printed: the wall time of the command and of the header reading,
   and the peak RSS of the command's own process (the driver).
2. ETA: a synthetic set of ``--videos-per-class`` x 11 videos (default 18: 198) extracted with
   tiny3d, one crop and ``--flow`` (default tvl1, the slow CPU stage); first ``--dry-run
   --calibrate N`` (default 8) prints the estimated time, then the real run prints its own
   (the summary's "time", the same span the estimate models: from the first work sent to the
   last row written). Target: the estimate within 25 % of the measured time.

Each command runs as a user runs it, ``python jobs/extract.py ...`` in a new process with its
own local Ray.

    python benchmarks/plan_eta.py
    python benchmarks/plan_eta.py --links 2000 --videos-per-class 6 --calibrate 4   # quicker
    python benchmarks/plan_eta.py --no-eta                                          # 1. only
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest
from reslstm.datasets.synthetic import generate_synthetic

REPO = Path(__file__).resolve().parents[1]


PEAK_RSS = {"last": 0}  # the last command's peak RSS (its own process: the driver), bytes


def extract(*args: str) -> tuple[str, float]:
    """Run jobs/extract.py; (its output, wall seconds). Its driver's peak RSS, polled every
    20 ms, goes to ``PEAK_RSS["last"]``."""
    import psutil

    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "extract.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir())
    peak, me = 0, psutil.Process(proc.pid)
    stop = threading.Event()

    def poll():
        nonlocal peak
        while not stop.wait(0.02):
            try:
                peak = max(peak, me.memory_info().rss)
            except psutil.Error:
                return

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    stop.set()
    watcher.join()
    wall = time.monotonic() - start
    PEAK_RSS["last"] = peak
    if proc.returncode:
        sys.exit(f"jobs/extract.py {' '.join(args)} failed:\n{stdout}\n{stderr}")
    return stdout, wall


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if not match:
        sys.exit(f"no match for {pattern!r} in:\n{text}")
    return float(match.group(1).replace(",", ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--links", type=int, default=10_000, help="manifest entries of the dry run")
    p.add_argument("--videos-per-class", type=int, default=18, help="x 11 videos for the ETA")
    p.add_argument("--calibrate", type=int, default=8, help="videos the calibration extracts")
    p.add_argument("--flow", default="tvl1", help="flow method of the ETA runs")
    p.add_argument("--no-eta", action="store_true", help="only the dry run (1.)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. the dry run over many files
        one = pq.read_table(generate_synthetic(tmp / "one", videos_per_class=1, seed=0)).slice(0, 1)
        src = Path(one.column("path")[0].as_py())
        src = src if src.is_absolute() else tmp / "one" / src
        (tmp / "links").mkdir()
        rows = []
        for i in range(a.links):
            dst = tmp / "links" / f"v{i:06d}.mp4"
            os.link(src, dst)
            rows.append({"video_id": f"v{i:06d}", "path": str(dst), "label": 0,
                         "label_name": "a", "split": "train"})
        write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp / "links.parquet")
        out, wall = extract("--manifest", str(tmp / "links.parquet"), "--out", str(tmp / "s0"),
                            "--extractor", "tiny3d", "--dry-run")
        headers = number(r"headers read in ([\d.]+) s", out)
        print(f"dry run, {a.links:,} files: {wall:.1f} s for the command, {headers:.1f} s reading "
              f"headers ({a.links / headers:,.0f} files/s), the driver's peak RSS "
              f"{PEAK_RSS['last'] / 2**20:,.0f} MiB; target under 60 s: "
              f"{'met' if wall < 60 else 'MISSED'}")
        if a.no_eta:
            return
        # 2. the ETA against the real run
        manifest = generate_synthetic(tmp / "set", videos_per_class=a.videos_per_class, seed=1)
        n = pq.read_table(manifest).num_rows
        flags = ["--manifest", str(manifest), "--out", str(tmp / "store"), "--extractor", "tiny3d",
                 "--crops", "1", "--flow", a.flow]
        out, _ = extract(*flags, "--dry-run", "--calibrate", str(a.calibrate))
        eta = number(r"estimated time of the whole job[^\n]*\(([\d,]+) s\)", out)
        bottleneck = re.search(r"bottleneck: (\w+)", out).group(1)
        out, wall = extract(*flags)
        real = number(r"time: ([\d.]+)s", out)
        err = eta / real - 1
        print(f"ETA from --calibrate {a.calibrate} on {n} videos ({a.flow} flow): {eta:.0f} s "
              f"(bottleneck {bottleneck}); the real run: {real:.0f} s ({wall:.0f} s with Ray's "
              f"start); estimate / measured = {eta / real:.2f} ({err:+.0%}); target within 25 %: "
              f"{'met' if abs(err) <= 0.25 else 'MISSED'}")


if __name__ == "__main__":
    main()
