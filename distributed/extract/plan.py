"""``jobs/extract.py --dry-run`` and ``--calibrate N``: what a job will cost, on this cluster.

``dry_run(cfg)`` reads the container headers of the manifest's videos, in parallel on the
cluster (a Ray Data task per block of manifest rows; nothing is decoded), and adds them up in
the driver one batch at a time (``reslstm.extraction.planner.DryRun``): only counts stay there,
plus the first few unreadable files (all of them go to a CSV beside the working directory's
other outputs, ``--dry-run-list``). Nothing is written to the store, and its lock is not taken.

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

import ray

from reslstm import features as fs
from reslstm.configs import ExtractConfig
from reslstm.distributed.runtime import cluster_cpus, cluster_gpus, init_ray
from reslstm.extraction.driver import read_manifest, video_location
from reslstm.extraction.planner import DryRun, Estimate, facts_batch
from reslstm.extraction.settings import ExtractError

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
    ids = set(manifest.column("video_id").to_pylist())
    todo, in_store, failed_n = {}, 0, 0
    for s in cfg.streams:
        written = store.written_ids(s) & ids
        failed = set() if cfg.retry_failed else (store.failed_ids(s) & ids) - written
        todo[s] = ids - written - failed
        in_store += len(written)
        failed_n += len(failed)
    report = DryRun(streams=tuple(cfg.streams), clip_len=clip_len, clip_stride=cfg.clip_stride,
                    feature_dim=dim, fps=cfg.fps, todo=todo, in_store=in_store,
                    recorded_failed=failed_n)
    where = init_ray(cfg.address)
    log.info(f"[dry run] reading the headers of {manifest.num_rows:,} videos (no decoding) on "
             f"{where}")
    blocks = [manifest.slice(i, ROWS_PER_TASK) for i in range(0, manifest.num_rows, ROWS_PER_TASK)]
    ds = ray.data.from_arrow(blocks or [manifest]).map_batches(
        facts_batch, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"videos": video_location(cfg)})
    bad, done, started = [], 0, time.monotonic()
    last = started
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        bad += report.add(batch)
        done += batch.num_rows
        if time.monotonic() - last > cfg.progress_every_s:
            last = time.monotonic()
            log.info(f"[dry run] {done:,}/{manifest.num_rows:,} headers read")
    log.info(f"[dry run] {manifest.num_rows:,} headers read in {time.monotonic() - started:.1f} s",
             extra={"block": True})
    log.info(report.text(), extra={"block": True})
    if bad:
        path = Path(list_file or "extract-dry-run-unreadable.csv")
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("video_id", "path", "error_type", "message"))
            writer.writerows((b["video_id"], b["path"], b["error_type"], b["message"]) for b in bad)
        log.info(f"  every file that cannot be opened, with why: {path}")
    return report


def sample(report: DryRun, n: int) -> list[str]:
    """``n`` readable videos still to do, spread evenly from the fewest frames to the most."""
    vids = sorted(report.frames_per_video.items(), key=lambda kv: (kv[1], kv[0]))
    if not vids:
        raise ExtractError("--calibrate: no readable video is left to extract (see the dry run)")
    n = min(n, len(vids))
    picks = {vids[round(i * (len(vids) - 1) / max(n - 1, 1))][0] for i in range(n)}
    return sorted(picks)


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
    frames = sum(report.frames_per_video[v] for v in picks for s in cfg.streams
                 if v in report.todo.get(s, ()))
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
