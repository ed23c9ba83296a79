"""``jobs/extract.py --dry-run`` and ``--calibrate N``: what a job will cost, on this cluster.

``dry_run(cfg)`` reads the container headers of the manifest's videos, in parallel on the
cluster (a Ray Data task per block of manifest rows; nothing is decoded), and adds them up in
the driver one batch at a time (``reslstm.extraction.planner.DryRun``): each video's work is
counted in the tasks, and the driver sums columns; it keeps the counts, the first few
unreadable files (all of them go to a CSV beside the working directory's other outputs,
``--dry-run-list``, written as they are found) and three Arrow columns of the readable videos
to do, for ``--calibrate``. Nothing is written to the store, and its lock is not taken.

``calibrate(cfg, n, report)`` then extracts ``n`` of the videos still to do, picked across their
frame counts (shortest to longest, evenly), with the job's own settings on the current cluster,
into a scratch store that is deleted afterwards; what each stage worked, per frame, gives the
whole job's time (``planner.Estimate``).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reslstm import features as fs
from reslstm.configs import ExtractConfig
from reslstm.distributed.runtime import cluster_cpus, cluster_gpus, init_ray
from reslstm.extraction.driver import read_manifest, video_location
from reslstm.extraction.planner import DryRun, Estimate, facts_batch
from reslstm.extraction.settings import ExtractError
from reslstm.fusion import STREAMS

from .job import run_extraction

log = logging.getLogger(__name__)

ROWS_PER_TASK = 256  # manifest rows per header-reading task


def _layout(cfg: ExtractConfig) -> tuple[int, int]:
    """(clip_len, feature_dim) of the job's extractor, without building it."""
    from reslstm.extractors import extractor_info

    try:
        info = extractor_info(cfg.extractor)
    except ValueError as exc:
        raise ExtractError(f"--extractor: {exc}") from None
    return cfg.clip_len or info.clip_len, info.feature_dim


def dry_run(cfg: ExtractConfig, list_file: str | None = None) -> DryRun:
    """Count the job's work from the headers (module docstring); log the report."""
    manifest = read_manifest(cfg.manifest).select(["video_id", "path"])
    clip_len, dim = _layout(cfg)
    store = fs.FeatureStore(cfg.out)
    ids = manifest.column("video_id")
    report = DryRun(streams=tuple(cfg.streams), clip_len=clip_len, clip_stride=cfg.clip_stride,
                    feature_dim=dim, fps=cfg.fps)
    for s in STREAMS:  # which streams of each video are still to do, as columns of its row
        todo = pa.array(np.zeros(len(ids), bool))
        if s in cfg.streams:
            written = pc.is_in(ids, value_set=store.written_id_array(s))
            failed = (pa.array(np.zeros(len(ids), bool)) if cfg.retry_failed else
                      pc.and_(pc.is_in(ids, value_set=store.failed_id_array(s)), pc.invert(written)))
            report.in_store += pc.sum(written).as_py() or 0
            report.recorded_failed += pc.sum(failed).as_py() or 0
            todo = pc.invert(pc.or_(written, failed))
        manifest = manifest.append_column(f"todo_{s}", todo)
    store.forget_ids()
    total = manifest.num_rows
    del ids
    where = init_ray(cfg.address)
    log.info(f"[dry run] reading the headers of {manifest.num_rows:,} videos (no decoding) on "
             f"{where}")
    blocks = [manifest.slice(i, ROWS_PER_TASK) for i in range(0, manifest.num_rows, ROWS_PER_TASK)]
    ds = ray.data.from_arrow(blocks or [manifest]).map_batches(
        facts_batch, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"videos": video_location(cfg), "layout": report.layout})
    del blocks, manifest
    path = Path(list_file or "extract-dry-run-unreadable.csv")
    listed, done, started = None, 0, time.monotonic()
    last = started
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            bad = report.add(batch)
            if bad.num_rows:  # every file that cannot be opened, written as found
                if listed is None:
                    fh = open(path, "w", newline="")
                    listed = csv.writer(fh)
                    listed.writerow(bad.column_names)
                listed.writerows(zip(*(bad.column(c).to_pylist() for c in bad.column_names)))
            done += batch.num_rows
            if time.monotonic() - last > cfg.progress_every_s:
                last = time.monotonic()
                log.info(f"[dry run] {done:,}/{total:,} headers read")
    finally:
        if listed is not None:
            fh.close()
    log.info(f"[dry run] {total:,} headers read in {time.monotonic() - started:.1f} s",
             extra={"block": True})
    log.info(report.text(), extra={"block": True})
    if listed is not None:
        log.info(f"  every file that cannot be opened, with why: {path}")
    return report


def sample(report: DryRun, n: int) -> list[str]:
    """``n`` readable videos still to do, spread evenly from the fewest frames to the most."""
    table = report.frames_table()
    if not table.num_rows:
        raise ExtractError("--calibrate: no readable video is left to extract (see the dry run)")
    table = table.take(pc.sort_indices(table, [("frames", "ascending"), ("video_id", "ascending")]))
    last = table.num_rows - 1
    n = min(n, table.num_rows)
    picks = sorted({round(i * last / max(n - 1, 1)) for i in range(n)})
    return sorted(table.column("video_id").take(pa.array(picks, pa.int64())).to_pylist())


def calibrate(cfg: ExtractConfig, n: int, report: DryRun) -> Estimate:
    """Extract ``n`` sampled videos into a scratch store and estimate the whole job (module
    docstring); log the estimate."""
    picks = sample(report, n)
    scratch = tempfile.mkdtemp(prefix="reslstm-calibrate-")
    log.info(f"[calibrate] extracting {len(picks)} of the videos to do into a scratch store "
             f"({scratch}, deleted afterwards); the store at {cfg.out} is not touched")
    try:
        summary = run_extraction(dataclasses.replace(
            cfg, out=str(Path(scratch) / "store"), overwrite=False, retry_failed=False,
            max_failed=1.0), subset=picks)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = report.frames_table()
    frames = pc.sum(table.filter(pc.is_in(table.column("video_id"), value_set=pa.array(
        picks, pa.string()))).column("work_frames")).as_py() or 0
    estimate = Estimate(stage_seconds=summary.stage_seconds, sample_frames=frames,
                        wall_s=summary.seconds, startup_s=summary.startup_s,
                        total_frames=report.frames, cpus=cluster_cpus(), gpus=cluster_gpus())
    log.info(estimate.text(), extra={"block": True})
    return estimate


def plan_job(cfg: ExtractConfig, calibrate_videos: int | None = None,
             list_file: str | None = None) -> Estimate | DryRun:
    """``--dry-run`` (and ``--calibrate N``): the report, then the estimate."""
    if calibrate_videos is not None and calibrate_videos < 1:
        raise ExtractError(f"--calibrate must be a number of videos >= 1, got {calibrate_videos}")
    report = dry_run(cfg, list_file)
    return calibrate(cfg, calibrate_videos, report) if calibrate_videos else report
