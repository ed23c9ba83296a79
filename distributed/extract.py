"""Feature extraction on Ray Data: a manifest in, a Parquet feature store out.

Python API::

    from reslstm.distributed.extract import ExtractConfig, run_extraction
    summary = run_extraction(ExtractConfig(manifest="m.parquet", out="features/",
                                           extractor="i3d", weights="rgb_imagenet.pt",
                                           flow_weights="flow_imagenet.pt"))

The pipeline, one work item per (video, stream)::

    from_items -> decode_segments (CPU tasks, PyAV)
               -> compute_flow_stage (CPU tasks, flow stream only)
               -> FeatureStage (autoscaling actor pool: num_gpus=1 each on a GPU cluster)
               -> the driver's StoreWriter (one row per video, atomic part files)

Resources: only the flow tasks reserve a CPU (one each, one thread); decode tasks (at most one
per CPU) and, on a CPU-only cluster, the feature actors reserve none: decoding is cheap, the
actors mostly wait for flow, and a CPU they held would idle while flow tasks queue. This also
keeps the pipeline from deadlocking: a decode task paused by backpressure holds no CPU the flow
tasks need (``extract_stages.build_pipeline``). Stages differ in resources, so Ray Data never fuses them: the
CPU stages scale over every CPU of the cluster independently of the actor pool.

Memory does not grow with the length of a video:

- Every task holds one segment at a time: a long video is decoded and extracted in segments of
  ``clips_per_segment`` clips (consecutive segments overlap by clip_len - stride frames, so no
  clip is lost) and the driver joins the clip features back in order.
- Every row a stage emits (one segment, or a failure) leaves it as a block of its own: the
  block target (``DataContext.target_max_block_size``) is set below one segment, where Ray
  Data's default packs up to 128 MiB of a long video's segments into one block, held by the
  decode task and then by the feature actor (measured at 72x96: the actor's peak RSS was
  1.4 GB for a 1-minute video and 3.0 GB for 20 minutes).
- A task pauses once two of its blocks are waiting to be taken
  (``DataContext._max_num_blocks_in_streaming_gen_buffer``, 2), and Ray Data takes blocks only
  while the dataset's object-store budget allows: ``object_store_limit_gb``, by default
  ``extract_stages.SEGMENTS_IN_FLIGHT`` (8) segments per worker and at most half the cluster's object store.
  Decoded frames waiting for flow or for the actors never exceed that budget, however long the
  video. ``benchmarks/memory.py`` measures it (workers' peak memory for 1, 5 and 20 minutes).

Fault tolerance: Ray Data retries the tasks of a lost node and restarts lost actors (it runs
them with ``max_restarts=-1, max_task_retries=-1``); lost blocks are rebuilt from their
lineage; the driver's ``StoreWriter`` ignores segments that arrive twice. Should the pipeline
still fail with a cluster error (an object or actor lost for good), the driver runs it again on
the pairs not finished (``pipeline_retries``). Killing the driver loses only what was not yet
committed: part files appear atomically, and a rerun extracts exactly what is missing.

Rerunning on the same ``out`` extracts only what is missing (failed videos again only with
``retry_failed``); settings that differ from the store's are refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from reslstm import __version__
from reslstm import features as fs

from .extract_stages import (StageConfig, FeatureStage, build_pipeline, compute_flow_stage,
                             decode_segments, max_actors, object_store_budget)
from .store_writer import Progress, StoreWriter


class ExtractError(RuntimeError):
    """Bad options or a store that does not match them; the message says what to do."""


@dataclasses.dataclass
class ExtractConfig:
    manifest: str
    out: str
    streams: tuple[str, ...] = ("rgb", "flow")
    extractor: str = "i3d"
    weights: str | None = None          # RGB stream: a file, a torchvision enum name, or "none"
    flow_weights: str | None = None     # flow stream, likewise
    flow: str = "tvl1"
    clip_len: int | None = None         # None: the extractor's clip length (16 for all models)
    clip_stride: int = 8
    crops: int = 10
    size: int | None = None             # short side frames are decoded at; None: the model's
    batch_size: int = 32
    actors: int | None = None           # max actor-pool size; None: one per GPU, or CPUs // 2
    actor_cpus: float | None = None     # CPUs each feature actor reserves; None: 1 with GPUs, else 0
    clips_per_segment: int = 32
    min_frame_ratio: float | None = 0.9
    retry_failed: bool = False
    overwrite: bool = False
    allow_cpu_raft: bool = False
    raft_size: str = "large"            # --flow raft: torchvision's raft_small or raft_large
    raft_weights: str | None = "C_T_V2" # a Raft_*_Weights name (torchvision's cache), a file, "none"
    address: str | None = None
    object_store_limit_gb: float | None = None
    rows_per_file: int = 256
    progress_every_s: float = 10.0
    pipeline_retries: int = 2           # reruns of the unfinished pairs after a cluster failure
    extractor_options: dict = dataclasses.field(default_factory=dict)


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

    @property
    def videos_per_s(self) -> float:
        return sum(self.written.values()) / self.seconds if self.seconds > 0 else 0.0

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
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

def _weights_arg(cfg: ExtractConfig, stream: str):
    w = cfg.weights if stream == "rgb" else cfg.flow_weights
    if w is None and cfg.extractor != "tiny3d":
        flag = "--weights" if stream == "rgb" else "--flow-weights"
        raise ExtractError(
            f"{flag} is required for extractor {cfg.extractor!r} ({stream} stream): a checkpoint "
            f"file, a torchvision weights name such as KINETICS400_V1, or 'none' for random "
            f"initialisation (features recorded as random-init, for testing only)")
    return None if (w is None or str(w).lower() == "none") else w


def resolve_settings(cfg: ExtractConfig) -> tuple[StageConfig, dict[str, fs.StreamSettings]]:
    """Instantiate each stream's extractor once (on CPU) to learn its sizes and weights id."""
    from reslstm.extractors import create_extractor

    if not cfg.streams or any(s not in fs.STREAMS for s in cfg.streams):
        raise ExtractError(f"--streams must be a comma list of {fs.STREAMS}, got {cfg.streams}")
    if cfg.crops not in (1, 10):
        raise ExtractError(f"--crops must be 1 or 10, got {cfg.crops}")
    flow_method = cfg.flow
    raft_weights = None if str(cfg.raft_weights).lower() == "none" else cfg.raft_weights
    if cfg.flow == "raft" and "flow" in cfg.streams:
        from reslstm.flow import RaftFlow

        # Loaded once here on the CPU to fail early on missing weights and to record which
        # RAFT made the flow: other RAFT weights give other features.
        try:
            raft = RaftFlow(size=cfg.raft_size, weights=raft_weights, device="cpu", allow_cpu=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ExtractError(f"--flow raft: {exc}") from exc
        flow_method = f"raft-{cfg.raft_size}:{raft.weights_id}"
        del raft
    weights, settings, resize = {}, {}, {}
    for stream in cfg.streams:
        weights[stream] = _weights_arg(cfg, stream)
        ext = create_extractor(cfg.extractor, stream, weights[stream], **cfg.extractor_options)
        clip_len = cfg.clip_len or ext.clip_len
        lo, hi = getattr(ext, "min_clip_len", 1), getattr(ext, "max_clip_len", None)
        if clip_len < lo or (hi is not None and clip_len > hi):
            raise ExtractError(f"--clip-len {clip_len} is outside what {cfg.extractor} accepts "
                               f"({lo}..{hi})")
        resize[stream] = cfg.size or ext.resize_short
        if resize[stream] < ext.input_size:
            raise ExtractError(f"--size {resize[stream]} is smaller than {cfg.extractor}'s "
                               f"{ext.input_size}-pixel input")
        settings[stream] = fs.StreamSettings(
            extractor=cfg.extractor, weights_id=ext.weights_id, feature_dim=ext.feature_dim,
            clip_len=clip_len, clip_stride=cfg.clip_stride, crops=cfg.crops,
            input_size=ext.input_size, resize_short=resize[stream],
            flow_method=flow_method if stream == "flow" else None,
            flow_pretrained=bool(getattr(ext, "flow_pretrained", True)) if stream == "flow" else True,
            code_version=__version__)
        del ext
    clip_len = settings[cfg.streams[0]].clip_len
    stage = StageConfig(
        clip_len=clip_len, clip_stride=cfg.clip_stride, clips_per_segment=cfg.clips_per_segment,
        resize_short=resize, flow_method=cfg.flow, min_frame_ratio=cfg.min_frame_ratio,
        extractor=cfg.extractor, weights=weights, extractor_options=dict(cfg.extractor_options),
        crops=cfg.crops, batch_size=cfg.batch_size, allow_cpu_raft=cfg.allow_cpu_raft,
        raft_size=cfg.raft_size, raft_weights=raft_weights)
    return stage, settings


def prepare_store(cfg: ExtractConfig, settings: dict[str, fs.StreamSettings]) -> None:
    """Check the requested settings against the store's; reset streams on ``overwrite``."""
    out = Path(cfg.out)
    old = fs.read_metadata(out)
    clashes = {s: old[s].differences(settings[s]) for s in settings if s in old}
    clashes = {s: d for s, d in clashes.items() if d}
    if clashes and not cfg.overwrite:
        detail = "; ".join(f"{s}: " + ", ".join(d) for s, d in clashes.items())
        raise ExtractError(f"{out} was extracted with other settings ({detail}). Use another "
                           f"--out, the same settings, or --overwrite to discard those streams.")
    if cfg.overwrite:
        for s in settings:
            shutil.rmtree(fs.stream_dir(out, s), ignore_errors=True)
        _drop_failures(out, set(settings))
    for d in [out / s for s in fs.STREAMS] + [out / fs.FAILURES_DIR]:
        fs.remove_temporaries(d)
    merged = {**{s: v for s, v in old.items() if s not in settings}, **settings}
    fs.write_metadata(out, merged, manifest=str(Path(cfg.manifest).resolve()))


def _drop_failures(out: Path, streams: set[str]) -> None:
    old = fs.read_failures(out, current_only=False)
    files = fs._parquet_files(out / fs.FAILURES_DIR)
    keep = old.filter(pa.compute.invert(pa.compute.is_in(old.column("stream"),
                                                         pa.array(sorted(streams)))))
    if keep.num_rows:
        fs.write_part(out / fs.FAILURES_DIR, keep)
    for f in files:
        Path(f).unlink()


@contextlib.contextmanager
def store_lock(out: str | Path):
    """One writer per store: an advisory lock the OS releases when the process dies."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExtractError(f"{out} is being written by another extraction job; wait for it "
                               f"or use another --out") from None
        yield


def plan_work(cfg: ExtractConfig, manifest: pa.Table) -> tuple[list[dict], int, int]:
    """The (video, stream) pairs to extract, and how many were skipped as done / failed.

    Largest files first (the streams of one video together, flow first): the longest work
    starts early and short videos fill the CPUs at the end, instead of one long video running
    alone on one CPU while the others idle (on the synthetic set, about 3 % of the wall time).
    """
    items, done_n, failed_n = [], 0, 0
    rows = manifest.select(["video_id", "path", "label", "label_name", "split"]).to_pylist()
    paths = sorted({r["path"] for r in rows})
    with ThreadPoolExecutor(16) as pool:  # stat() on network storage: overlap the round trips
        size = dict(zip(paths, pool.map(_file_size, paths)))
    rows.sort(key=lambda r: -size[r["path"]])
    streams = sorted(cfg.streams, key=lambda s: s != "flow")
    done = {s: fs.written_ids(cfg.out, s) for s in streams}
    failed = {s: set() if cfg.retry_failed else fs.failed_ids(cfg.out, s) for s in streams}
    for r in rows:
        for stream in streams:
            if r["video_id"] in done[stream]:
                done_n += 1
            elif r["video_id"] in failed[stream]:
                failed_n += 1
            else:
                items.append({**r, "stream": stream})
    return items, done_n, failed_n


def _file_size(path: str) -> int:
    """Bytes of a video file; 0 when it cannot be read (its decode task records why)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_manifest(path: str) -> pa.Table:
    from reslstm.datasets.manifest import read_manifest

    if not Path(path).exists():
        raise ExtractError(f"--manifest {path}: no such file (make one with jobs/synth.py or "
                           f"reslstm.datasets.manifest)")
    return read_manifest(path)


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------

def run_extraction(cfg: ExtractConfig, out=None) -> ExtractSummary:
    """Extract every (video, stream) of the manifest not yet in ``cfg.out``; print a summary."""
    out = out or sys.stdout
    import ray

    from .runtime import cluster_cpus, cluster_gpus, init_ray

    manifest = _read_manifest(cfg.manifest)
    stage, settings = resolve_settings(cfg)
    with store_lock(cfg.out):
        where = init_ray(cfg.address)
        gpus, cpus = cluster_gpus(), cluster_cpus()
        if cfg.flow == "raft" and "flow" in cfg.streams and not gpus and not cfg.allow_cpu_raft:
            raise ExtractError("--flow raft needs a GPU and the cluster has none: pick tvl1, "
                               "farneback or dis, or pass --allow-cpu-raft (very slow)")
        prepare_store(cfg, settings)
        items, skipped_done, skipped_failed = plan_work(cfg, manifest)
        store_bytes = object_store_budget(
            stage, cfg.streams, cpus + max_actors(cfg.actors, gpus, cpus),
            ray.cluster_resources().get("object_store_memory", 0), cfg.object_store_limit_gb)
        print(f"[extract] {where}", file=out, flush=True)
        print(f"[extract] {len(items)} (video, stream) pairs to extract with {cfg.extractor} "
              f"(weights {', '.join(f'{s}={v.weights_id}' for s, v in settings.items())}), "
              f"crops={cfg.crops}, clips of {stage.clip_len} every {stage.clip_stride} frames"
              + (f", flow={cfg.flow}" if "flow" in cfg.streams else ""), file=out, flush=True)
        print(f"[extract] segments in the object store: at most {store_bytes / 2 ** 20:,.0f} MiB"
              + ("" if cfg.object_store_limit_gb else " (--object-store-limit-gb to change)"),
              file=out, flush=True)
        return _drive(cfg, settings, items, skipped_done, skipped_failed, out,
                      lambda todo: build_pipeline(todo, stage, cfg.streams, cfg.actors, gpus, cpus,
                                                  store_bytes, cfg.actor_cpus)
                      .iter_batches(batch_size=None, batch_format="pyarrow"),
                      retry_if=_cluster_failure)


def run_local(cfg: ExtractConfig, out=None) -> ExtractSummary:
    """The same stages in one plain Python loop in this process (no Ray): a baseline."""
    out = out or sys.stdout
    manifest = _read_manifest(cfg.manifest)
    stage, settings = resolve_settings(cfg)

    def batches(todo):
        features = FeatureStage(stage, cfg.streams)
        for item in todo:
            for seg in decode_segments(pa.Table.from_pylist([item]), stage):
                yield features(compute_flow_stage(seg, stage))

    with store_lock(cfg.out):
        prepare_store(cfg, settings)
        items, skipped_done, skipped_failed = plan_work(cfg, manifest)
        return _drive(cfg, settings, items, skipped_done, skipped_failed, out, batches)


def _cluster_failure(exc: BaseException) -> bool:
    """A failure of the cluster (a node, a worker or an object lost), not of our code: the
    stages turn every error of theirs into a failure row, so nothing else reaches the driver."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        return isinstance(exc.cause, rex.RayError) and _cluster_failure(exc.cause)
    return isinstance(exc, (rex.ObjectLostError, rex.RayActorError, rex.NodeDiedError,
                            rex.WorkerCrashedError, rex.LocalRayletDiedError, rex.RaySystemError))


def _drive(cfg, settings, items, skipped_done, skipped_failed, out, batches,
           retry_if=lambda exc: False) -> ExtractSummary:
    """Feed ``batches(items)`` to one StoreWriter. When the pipeline fails and ``retry_if``
    says the failure was the cluster's, it runs again on the pairs not finished yet (at most
    ``cfg.pipeline_retries`` times): what is written stays written, once."""
    start = time.monotonic()
    writer = StoreWriter(cfg.out, settings, run_id=uuid.uuid4().hex[:12],
                         rows_per_file=cfg.rows_per_file)
    progress = Progress(len(items), every_s=cfg.progress_every_s, out=out)
    if items:
        todo = items
        try:
            for attempt in range(cfg.pipeline_retries + 1):
                try:
                    for batch in batches(todo):
                        writer.consume(batch)
                        progress.update(writer.num_done, writer.num_failed, writer.clips)
                    break
                except Exception as exc:
                    if attempt == cfg.pipeline_retries or not retry_if(exc):
                        raise
                    writer.flush()
                    todo = writer.unfinished(items)
                    first = (str(exc).strip().splitlines() or [""])[0][:200]
                    print(f"[extract] the pipeline failed ({type(exc).__name__}: {first}); running "
                          f"it again on the {len(todo)} unfinished (video, stream) pairs (retry "
                          f"{attempt + 1} of {cfg.pipeline_retries})", file=out, flush=True)
        finally:
            # Interrupted or not, what is complete is committed; the rest is redone on rerun.
            writer.flush()
        writer.close(expected=items)
        progress.update(writer.num_done, writer.num_failed, writer.clips, force=True)
    summary = ExtractSummary(
        store=str(Path(cfg.out).resolve()), written=dict(writer.written), failed=dict(writer.failed),
        clips=writer.clips, warnings=writer.warnings, skipped_done=skipped_done,
        skipped_failed=skipped_failed, seconds=time.monotonic() - start,
        failures_path=str((Path(cfg.out) / fs.FAILURES_DIR).resolve()))
    print(summary.report(), file=out, flush=True)
    return summary


def failure_counts(store: str | Path) -> Counter:
    """Current failures of a store by error type."""
    return Counter(fs.read_failures(store).column("error_type").to_pylist())


def verify(out: str, manifest: str | None = None, stream=None) -> bool:
    """Check a feature store row by row (``features.verify_store``) against its manifest
    (the one recorded in its metadata unless given); print the report; True when all is well."""
    if not (Path(out) / fs.METADATA_FILE).exists():
        raise ExtractError(f"{out}: no {fs.METADATA_FILE}; not a feature store")
    manifest = manifest or fs.read_metadata_extra(out).get("manifest")
    table = _read_manifest(manifest) if manifest else None
    report = fs.verify_store(out, table)
    stream = stream or sys.stdout
    print(f"[verify] {out}" + (f" against {manifest}" if manifest else " (no manifest to check coverage)"),
          file=stream)
    print(report.text(), file=stream, flush=True)
    return report.ok
