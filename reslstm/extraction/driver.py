"""Driving an extraction: the work plan, the loop that feeds the store writer, progress and the
summary, and ``run_local``, the same stages in one plain process (no Ray).

``start(cfg)`` opens the store under its lock, checks and records the settings and plans the
(video, stream) pairs still to do, largest files first; ``drive(run, batches)`` feeds every
segment row that ``batches(items)`` yields to one ``StoreWriter``, printing progress, and
reruns the unfinished pairs when ``retry_if`` says a failure was the cluster's
(``distributed.extract.job`` passes Ray's). ``run_local`` is the single-process baseline of
``benchmarks/extract_scaling.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
import uuid
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reslstm import storage
from reslstm.configs import ExtractConfig
from reslstm.features import FeatureStore, StreamSettings
from reslstm.listing import file_size_array
from reslstm.memory import release_memory

from .segments import STAGES
from .settings import ExtractError, TooManyFailures, resolve_settings
from .stages import FeatureStage, StageConfig, decode_segments, flow_stage
from .writer import StoreWriter

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExtractSummary:
    store: str
    written: dict            # stream -> rows written by this run
    failed: dict             # error_type -> count (this run)
    clips: int
    warnings: int
    skipped_done: int        # (video, stream) pairs already in the store
    skipped_failed: int      # pairs that failed before (rerun with retry_failed)
    seconds: float
    failures_path: str
    stage_seconds: dict = dataclasses.field(default_factory=dict)  # stage -> seconds worked
    first_row_s: float = 0.0  # seconds until the pipeline's first row came back
    first_row_work_s: float = 0.0  # the stages' own seconds on that row

    @property
    def startup_s(self) -> float:
        """The pipeline's start-up: until the first row came back, less that row's own work."""
        return max(0.0, self.first_row_s - self.first_row_work_s)

    @property
    def videos(self) -> int:
        """(video, stream) pairs written by this run."""
        return sum(self.written.values())

    @property
    def videos_per_s(self) -> float:
        return self.videos / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> str:
        lines = [f"feature store: {self.store}"]
        for stream, n in sorted(self.written.items()):
            lines.append(f"  {stream}: {n} videos written")
        lines.append(f"  clips: {self.clips}, rows with warnings: {self.warnings}")
        nfail = sum(self.failed.values())
        lines.append(f"  failed: {nfail}" + (f" (failures table: {self.failures_path})" if nfail else ""))
        for err, n in sorted(self.failed.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {n:6d}  {err}")
        if self.skipped_done or self.skipped_failed:
            lines.append(f"  skipped: {self.skipped_done} already extracted, {self.skipped_failed} "
                         f"failed before (--retry-failed retries them)")
        lines.append(f"  time: {self.seconds:.1f}s, {self.videos_per_s:.2f} videos/s, "
                     f"{self.clips / max(self.seconds, 1e-9):.1f} clips/s")
        busy = {k: v for k, v in self.stage_seconds.items() if v > 0}
        if busy:
            lines.append("  stages worked (seconds, summed over workers): " + ", ".join(
                f"{k} {v:.1f}" for k, v in busy.items()))
        return "\n".join(lines)


class Progress:
    """One line every ``every_s`` seconds: done / total, failures, rate and ETA."""

    def __init__(self, total: int, every_s: float = 10.0):
        self.total, self.every_s = total, every_s
        self.start = self.last = time.monotonic()

    def update(self, done: int, failed: int, clips: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.start
        rate = (done + failed) / elapsed if elapsed > 0 else 0.0
        left = self.total - done - failed
        eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
        log.info(f"{done + failed}/{self.total} (video, stream) pairs: {done} written, "
                 f"{failed} failed, {clips} clips, {rate:.2f}/s, ETA {eta}")


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """One extraction, planned: its config, store, stage config, settings and work items."""

    cfg: ExtractConfig
    store: FeatureStore
    stage: StageConfig
    settings: dict[str, StreamSettings]
    items: pa.Table          # one row per (video, stream) pair: the manifest's columns and stream
    skipped_done: int
    skipped_failed: int


def read_manifest(path) -> pa.Table:
    from reslstm.datasets.manifest import read_manifest as read

    loc = storage.resolve(path)
    if not loc.exists():
        raise ExtractError(f"--manifest {loc}: no such file (make one with jobs/synth.py or "
                           "reslstm.datasets)")
    return read(loc)


def video_location(cfg: ExtractConfig) -> storage.Location | None:
    """Where option-free video URIs of the manifest are read from (``StageConfig.videos``):
    the manifest's own object storage, else the store's; None when both are local."""
    for where in (cfg.manifest, cfg.out):
        loc = storage.resolve(where)
        if not loc.local:
            return loc
    return None


def plan_work(cfg: ExtractConfig, manifest: pa.Table, store: FeatureStore | None = None,
              videos: storage.Location | None = None) -> tuple[pa.Table, int, int]:
    """The (video, stream) pairs to extract, and how many were skipped as done / failed.

    Largest files first (the streams of one video together, flow first): the longest work
    starts early and short videos fill the CPUs at the end, instead of one long video running
    alone on one CPU while the others idle (on the synthetic set, about 3 % of the wall time).
    """
    store = store or FeatureStore(cfg.out)
    rows = manifest.select(["video_id", "path", "label", "label_name", "split"])
    # One listing per folder, not a stat per video; a file that cannot be read sorts last (its
    # decode task records why).
    sizes = file_size_array(rows.column("path"), like=videos)
    streams = sorted(cfg.streams, key=lambda s: s != "flow")
    # The items are taken from the manifest once, in this order (no sorted copy of it first).
    return store.plan(rows, streams, cfg.retry_failed, order=np.argsort(-sizes, kind="stable"))


@contextlib.contextmanager
def start(cfg: ExtractConfig, check: Callable[[StageConfig], None] = lambda stage: None,
          subset: Iterable[str] | None = None, record: dict | None = None) -> Iterator[Run]:
    """Hold the store's lock, check and record the settings, plan the work (module docstring).
    ``check(stage)`` runs under the lock before the store is touched (e.g. that the cluster
    has the GPU a flow method needs); ``subset``: only these video_ids of the manifest (a
    calibration run); ``record``: this job's tracking run, appended to the store's
    ``extraction_runs`` (earlier entries are kept either way)."""
    manifest = read_manifest(cfg.manifest)
    if subset is not None:
        manifest = manifest.filter(pc.is_in(manifest.column("video_id"),
                                            pa.array(sorted(set(subset)), pa.string())))
    stage, settings = resolve_settings(cfg)
    stage = dataclasses.replace(stage, videos=video_location(cfg))
    store = FeatureStore(cfg.out)
    with store.lock():
        check(stage)
        runs = store.read_metadata_extra().get("extraction_runs", []) + ([record] if record else [])
        # The manifest as a person reads it: a URI without options or credentials.
        store.prepare(settings, overwrite=cfg.overwrite, manifest=str(storage.resolve(cfg.manifest)),
                      **({"extraction_runs": runs} if runs else {}))
        items, done, failed = plan_work(cfg, manifest, store, stage.videos)
        # The job holds its work items only: not the manifest, nor the store's ids it planned with.
        del manifest
        store.forget_ids()
        release_memory()
        yield Run(cfg, store, stage, settings, items, done, failed)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def drive(run: Run, batches: Callable[[list[dict]], Iterable[pa.Table]],
          retry_if: Callable[[BaseException], bool] = lambda exc: False) -> ExtractSummary:
    """Feed ``batches(items)`` to one StoreWriter. When the pipeline fails and ``retry_if``
    says the failure was the cluster's, it runs again on the pairs not finished yet (at most
    ``cfg.pipeline_retries`` times): what is written stays written, once."""
    cfg, items = run.cfg, run.items
    start_time = time.monotonic()
    writer = StoreWriter(run.store, run.settings, run_id=uuid.uuid4().hex[:12],
                         part_bytes=int(cfg.part_mib * 2**20), rows_per_file=cfg.rows_per_file)
    progress = Progress(len(items), every_s=cfg.progress_every_s)
    first_row = first_work = 0.0
    if len(items):
        todo = items
        try:
            for attempt in range(cfg.pipeline_retries + 1):
                try:
                    for batch in batches(todo):
                        if not first_row and batch.num_rows:
                            first_row = time.monotonic() - start_time
                            first_work = sum(batch.column(f"{stage}_s")[0].as_py() or 0.0
                                             for stage in STAGES)
                        writer.consume(batch)
                        progress.update(writer.num_done, writer.num_failed, writer.clips)
                    break
                except Exception as exc:
                    if attempt == cfg.pipeline_retries or not retry_if(exc):
                        raise ExtractError(
                            f"the pipeline stopped: {root_cause(exc)}. {writer.num_done} (video, "
                            f"stream) pairs were written before it stopped; fix the cause and "
                            "rerun the same command to extract the rest.") from exc
                    writer.flush()
                    todo = writer.unfinished(items)
                    first = (str(exc).strip().splitlines() or [""])[0][:200]
                    log.warning(f"the pipeline failed ({type(exc).__name__}: {first}); running it "
                                f"again on the {len(todo)} unfinished (video, stream) pairs "
                                f"(retry {attempt + 1} of {cfg.pipeline_retries})")
        finally:
            # Interrupted or not, what is complete is committed; the rest is redone on rerun.
            writer.flush()
        writer.close(expected=items)
        progress.update(writer.num_done, writer.num_failed, writer.clips, force=True)
    if cfg.compact:
        compact(run.store, cfg.part_mib)
    summary = ExtractSummary(
        store=str(run.store), written=dict(writer.written), failed=dict(writer.failed),
        clips=writer.clips, warnings=writer.warnings, skipped_done=run.skipped_done,
        skipped_failed=run.skipped_failed, seconds=time.monotonic() - start_time,
        failures_path=str(run.store.failures_dir), stage_seconds=dict(writer.stage_seconds),
        first_row_s=first_row, first_row_work_s=first_work)
    log.info(summary.report(), extra={"block": True})
    attempted = len(items)
    failed = sum(summary.failed.values())
    if attempted and failed > cfg.max_failed * attempted:
        raise TooManyFailures(summary,
            f"{failed} of the {attempted} (video, stream) pairs this run attempted failed, more "
            f"than --max-failed {cfg.max_failed:g} allows; the {attempted - failed} others are "
            f"written. Why each failed: the failures table {summary.failures_path}")
    return summary


def compact(store: FeatureStore, part_mib: float) -> dict:
    """Merge the store's small part files into files of about ``part_mib`` MiB (the caller
    holds the store's lock): one console line for what was merged."""
    start_time = time.monotonic()
    done = store.compact(int(part_mib * 2**20))
    merged = [c.line(name) for name, c in done.items() if c.merged]
    if merged:
        log.info(f"compacted {store}: " + "; ".join(merged)
                 + f" in {time.monotonic() - start_time:.1f} s")
    return done


def root_cause(exc: BaseException) -> str:
    """The original error of an exception, as one line: Ray wraps a remote task's or actor's
    error in its own, whose text ends with the original ``SomeError: message`` line."""
    found = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines()
             if _ERROR_LINE.match(ln.strip())]
    return found[-1] if found else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(\([^)]*\))?: \S")


def run_local(cfg: ExtractConfig) -> ExtractSummary:
    """The same stages in one plain Python loop in this process (no Ray): a baseline."""
    with start(cfg) as run:
        def batches(todo):
            features = FeatureStage(run.stage, cfg.streams)
            for i in range(len(todo)):
                for seg in decode_segments(todo.slice(i, 1), run.stage):
                    yield features(flow_stage(seg, run.stage))

        return drive(run, batches)
