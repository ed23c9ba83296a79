"""Videos/s of the extraction with its manifest, videos and feature store on S3, against the same
extraction on the local disk, in the same run.

The synthetic set (``generate_synthetic``, ``--videos-per-class``, default 2: 22 videos) is
extracted, RGB and DIS flow (the cheap CPU flow, so that reading and writing weigh as much as
they can), with tiny3d and one crop, each time into a new store:

- local: manifest, videos and store in a local directory;
- S3: the same manifest, videos and store in a bucket of a local S3 API (moto's server, started
  here on 127.0.0.1 like the tests' fixture); the videos are streamed by the decode tasks
  through ranged reads, the store's part files uploaded by the driver.

Both run on one local Ray instance (``--cpus``, default 2), started once and warmed up by a
first, unmeasured run, interleaved (local, S3, S3, local, ...; ``--repeats``) so that the
machine's load hits both alike; ``--runner local`` runs ``run_local`` (one process, no Ray)
instead. Printed: videos/s per run ((video, stream) pairs written / wall time of the call),
the medians and the ratio S3 / local. moto is a Python server on the same cores: its CPU time
is work a real object store does elsewhere, so the ratio is a lower bound for a real S3 bucket
in the same region; its latency (a few ms here) is lower than a real bucket's (tens of ms).

    python benchmarks/extract_s3.py                       # 22 videos, 3 repeats
    python benchmarks/extract_s3.py --videos-per-class 4 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reslstm.configs import ExtractConfig
from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest
from reslstm.datasets.synthetic import generate_synthetic
from reslstm.extraction.driver import run_local

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from s3_fixture import start_s3_server, stop_s3_server  # noqa: E402  (moto, the dev extra)

BUCKET = "bench"


def config(manifest: str, out: str, flow: str) -> ExtractConfig:
    return ExtractConfig(manifest=manifest, out=out, extractor="tiny3d", flow=flow, crops=1,
                         progress_every_s=1e9)


def timed(fn, cfg: ExtractConfig) -> tuple[float, int]:
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        summary = fn(cfg)
        secs = time.perf_counter() - start
    if summary.failed:
        raise RuntimeError(f"extraction failed for some videos: {summary.failed}")
    return secs, sum(summary.written.values())


def upload(server, local_dir: Path, manifest: Path) -> str:
    """The videos and a manifest listing them by relative path, in the bucket; its URI."""
    server.bucket(BUCKET)
    pafs.copy_files(str(local_dir / "videos"), f"{BUCKET}/synth/videos",
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=server.filesystem())
    rows = pq.read_table(manifest).select(MANIFEST_SCHEMA.names).to_pylist()
    for r in rows:
        r["path"] = os.path.relpath(r["path"], local_dir)
    uri = server.uri(BUCKET, "synth/manifest.parquet")
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), uri)
    return uri


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos-per-class", type=int, default=2, help="synthetic videos per class (2: 22 videos)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each (3)")
    parser.add_argument("--flow", default="dis", help="flow method (dis: cheap, so I/O weighs most)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (2)")
    parser.add_argument("--runner", choices=("ray", "local"), default="ray",
                        help="the Ray job's extraction, or run_local in this process")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="reslstm-s3bench-")
    work = Path(tmp.name)
    server, proc = start_s3_server(str(work))
    try:
        manifest = generate_synthetic(work / "synth", videos_per_class=args.videos_per_class, seed=0)
        s3_manifest = upload(server, work / "synth", manifest)
        size = sum(f.stat().st_size for f in (work / "synth" / "videos").rglob("*.mp4"))
        print(f"synthetic set: {args.videos_per_class * 11} videos ({size / 2 ** 20:.1f} MiB); RGB + "
              f"{args.flow} flow, tiny3d, 1 crop; S3: moto at {server.endpoint}; "
              f"{os.cpu_count()} cores on this machine", flush=True)

        if args.runner == "ray":
            import ray

            from reslstm.distributed.extract.job import run_extraction
            from reslstm.distributed.runtime import local_system_config

            ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                     logging_level="ERROR", _system_config=local_system_config(args.cpus))
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
            fn = run_extraction
        else:
            fn = run_local

        def local(i):
            return timed(fn, config(str(manifest), str(work / f"local_{i}"), args.flow))

        def on_s3(i):
            return timed(fn, config(s3_manifest, server.uri(BUCKET, f"store_{i}"), args.flow))

        if args.runner == "ray":
            local("warmup")  # Ray's workers and actors start once, outside the measurements
        runs = {local: [], on_s3: []}
        for i in range(args.repeats):
            for f in ((local, on_s3) if i % 2 == 0 else (on_s3, local)):
                secs, n = f(i)
                runs[f].append(n / secs)
                print(f"  {'local' if f is local else 'S3':5s} run {i}: {n} pairs in {secs:6.1f}s = "
                      f"{n / secs:.3f} videos/s", flush=True)
        base, s3 = statistics.median(runs[local]), statistics.median(runs[on_s3])
        print(f"local disk: {base:.3f} videos/s (median)")
        print(f"S3 (moto):  {s3:.3f} videos/s (median), {s3 / base:.2f}x local disk", flush=True)
    finally:
        if args.runner == "ray" and "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        stop_s3_server(proc)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
