"""Classifying new videos with a trained model: a few files in this process, or many on Ray Data.

Python API::

    from reslstm.configs import PredictConfig
    from reslstm.distributed.predict.batch import run_predict
    run_predict(PredictConfig(model="runs/late", videos=("a.mp4",)))          # in-process
    run_predict(PredictConfig(model="runs/late", manifest="m.parquet", out="predictions/"))

Files (``predict_files``, ``reslstm.distributed.predict.files``): no Ray; the model reference
kinds are listed there (``load_model``).

Batch (``run_batch``): the manifest's (or folder's) videos go through the Ray Data pipeline of
extraction (``extract_pipeline.build_pipeline``: decode and flow tasks, the feature actor pool),
then one model actor (``ModelStage``) takes the feature segments as they come, joins each
video's in order once all its streams are in (``reslstm.inference.assembly``) and classifies it.
One pipeline runs a window of ``--window-videos`` videos, both streams of each (its actors and
models are built once per window, and no shuffle holds the videos back; windows keep Ray Data's
per-block statistics in the driver bounded: ``reslstm.distributed.extract.pipeline``); the
driver writes the rows every ``chunk_videos`` videos::

    OUT/model.json                  the model: reference, fusion, classes, a weights fingerprint
    OUT/predictions/part-*.parquet  one row per video (``reslstm.inference.predictor.BATCH_SCHEMA``)
    OUT/failures/part-*.parquet     video_id, stream, path, stage, error_type, message, run_id

A rerun predicts only the videos not in ``predictions/`` (those in ``failures/`` again only
with ``retry_failed``); another model's ``OUT`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reslstm import storage
from reslstm.checkpoint import model_from_payload
from reslstm.configs import PredictConfig
from reslstm.configs.options import window_videos
from reslstm.datasets.manifest import (CHUNK_ROWS, ManifestError, duplicated, read_table,
                                      resolve_path_column)
from reslstm.features import FAILURE_SCHEMA, write_part
from reslstm.inference.chain import PredictError, chain_settings, model_streams, stream_settings
from reslstm.inference.assembly import Assembled, VideoAssembler
from reslstm.inference.predictor import BATCH_SCHEMA, ModelHead, prediction_rows
from reslstm.memory import release_arrow_memory, release_free_heap

from .files import load_model, predict_files

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv",
                  ".wmv", ".ogv", ".3gp", ".ts")
MODEL_FILE = "model.json"


# ---------------------------------------------------------------------------------------------
# Many videos, on Ray Data
# ---------------------------------------------------------------------------------------------

def read_videos(source: str) -> pa.Table:
    """(video_id, path) of a manifest Parquet (``video_id`` optional; relative paths are read
    from its folder) or of every video file under a folder (ids: paths below it, without the
    suffix)."""
    loc = storage.resolve(source)
    if loc.is_dir():
        infos = loc.filesystem.get_file_info(pafs.FileSelector(loc.path, recursive=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File
                       and i.path.lower().endswith(VIDEO_SUFFIXES)
                       and not PurePosixPath(i.path).name.startswith(storage.HIDDEN))
        if not files:
            raise PredictError(f"--manifest {loc}: a folder without video files "
                               f"({', '.join(VIDEO_SUFFIXES)})")
        ids = [str(PurePosixPath(f).relative_to(loc.path).with_suffix("")) for f in files]
        paths = [f if loc.local else loc.join(str(PurePosixPath(f).relative_to(loc.path))).uri
                 for f in files]
        return pa.table({"video_id": ids, "path": paths})
    if not loc.is_file():
        raise PredictError(f"--manifest {loc}: no such file or folder")
    try:
        table, _ = read_table(loc)
    except ManifestError as exc:
        raise PredictError(f"--manifest {exc}") from None
    if "path" not in table.column_names:
        raise PredictError(f"--manifest {loc}: no 'path' column (columns: {table.column_names})")
    try:
        paths = resolve_path_column(table.column("path"), loc)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PredictError(f"--manifest {loc}: the 'path' column is not text ({exc})") from None
    if paths.null_count:
        raise PredictError(f"--manifest {loc}: {paths.null_count} rows without a 'path'")
    if "video_id" in table.column_names:
        ids = table.column("video_id").combine_chunks().cast(pa.string())
    else:  # the path without its suffix, CHUNK_ROWS at a time
        ids = pa.concat_arrays([pa.array([str(PurePosixPath(p).with_suffix(""))
                                          for p in paths.slice(a, CHUNK_ROWS).to_pylist()], pa.string())
                                for a in range(0, len(paths), CHUNK_ROWS)] or [pa.array([], pa.string())])
    if ids.null_count:
        raise PredictError(f"--manifest {loc}: {ids.null_count} rows without a 'video_id'")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise PredictError(f"--manifest {loc}: video_id not unique (e.g. {duplicated(ids)[:3]})")
    return pa.table({"video_id": ids, "path": paths})


def fingerprint(payload: dict) -> str:
    """sha256 over the model's weights (names, shapes and values): one model, one fingerprint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(payload["model_state"].items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class BatchSummary:
    out: str
    predicted: int
    failed: dict             # error_type -> videos (this run; a video counts once)
    skipped_done: int
    skipped_failed: int
    seconds: float

    def report(self) -> str:
        nfail = sum(self.failed.values())
        table = storage.join(self.out, "failures")  # self.out: printable, no credentials
        lines = [f"predictions: {self.out}", f"  predicted: {self.predicted} videos",
                 f"  failed: {nfail} videos" + (f" (failures table: {table})" if nfail else "")]
        lines += [f"    {n:6d}  {err}"
                  for err, n in sorted(self.failed.items(), key=lambda kv: -kv[1])]
        if self.skipped_done or self.skipped_failed:
            lines.append(f"  skipped: {self.skipped_done} predicted before, {self.skipped_failed} "
                         "failed before (--retry-failed predicts them again)")
        rate = self.predicted / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"  time: {self.seconds:.1f}s, {rate:.2f} videos/s")
        return "\n".join(lines)


def _ids(directory: storage.Location) -> pa.Array:
    files = directory.list(".parquet")
    if not files:
        return pa.array([], pa.string())
    table = pq.read_table(files, columns=["video_id"], filesystem=directory.filesystem)
    return pc.unique(table.column("video_id").combine_chunks())


def prepare_out(out: storage.Location, doc: dict, overwrite: bool) -> None:
    """Record the model in ``OUT/model.json``; another model's predictions are refused (or, with
    ``overwrite``, removed)."""
    record = out.join(MODEL_FILE)
    if record.exists():
        try:
            old = json.loads(record.read_text())
        except ValueError as exc:
            raise PredictError(f"{record}: not JSON ({exc}); remove it or pick another --out") from None
        if old.get("fingerprint") != doc["fingerprint"]:
            if not overwrite:
                raise PredictError(f"--out {out} holds predictions of another model "
                                   f"({old.get('model')}, weights "
                                   f"{old.get('fingerprint', '?')[:12]}); pick another --out or "
                                   "pass --overwrite to replace them")
            for sub in ("predictions", "failures"):
                if out.join(sub).exists():
                    out.join(sub).delete_dir()
    record.write_text(json.dumps(doc, indent=1) + "\n")


STAGE_SCHEMA = pa.schema(list(BATCH_SCHEMA) + [
    ("kind", pa.string()), ("stream", pa.string()), ("stage", pa.string()),
    ("error_type", pa.string()), ("message", pa.string())])


class ModelStage:
    """Ray Data callable (one actor for the whole job): feature segment rows of any videos, in
    any order -> the prediction of each video once all its streams are in, or the failure rows
    of its streams, as rows of ``STAGE_SCHEMA``. The model is loaded once; partial videos wait
    in its ``VideoAssembler`` (memory: the videos in flight)."""

    def __init__(self, payload: dict, top_k: int):
        import ray

        payload = ray.get(payload["ref"])  # wrapped, so Ray Data passes the reference as is
        self.head = ModelHead(model_from_payload(payload), payload)
        self.assembler = VideoAssembler(self.head.streams,
                                        stream_settings(payload, self.head.streams))
        self.top_k = top_k

    def __call__(self, batch: pa.Table) -> pa.Table:
        videos = [v for v in map(self.assembler.add, batch.to_pylist()) if v is not None]
        return stage_rows(videos, self.head, self.top_k)


def stage_rows(videos: list[Assembled], head: ModelHead, top_k: int) -> pa.Table:
    """``STAGE_SCHEMA`` rows: a prediction per whole video, the failure rows of the others."""
    fails = [{**f, "kind": "failure"} for v in videos if v.failures for f in v.failures]
    preds = prediction_rows([head.prediction(v.video_id, v.path, v.joined)
                             for v in videos if not v.failures], top_k)
    n = preds.num_rows
    cols = {name: preds.column(name) for name in BATCH_SCHEMA.names}
    cols["kind"] = pa.array(["prediction"] * n, pa.string())
    for name in ("stream", "stage", "error_type", "message"):
        cols[name] = pa.nulls(n, pa.string())
    return pa.concat_tables([pa.table(cols, schema=STAGE_SCHEMA),
                             pa.Table.from_pylist(fails, schema=STAGE_SCHEMA)])


def run_batch(cfg: PredictConfig) -> BatchSummary:
    """Classify every video of ``cfg.manifest`` not yet in ``cfg.out`` on Ray Data (module
    docstring); log a summary."""
    if not cfg.out:
        raise PredictError("--manifest needs --out: the directory the predictions go to")
    started = time.monotonic()
    videos = read_videos(cfg.manifest)
    model, payload = load_model(cfg.model, cfg.mlflow_uri)
    stage, settings = chain_settings(payload, cfg)  # weights checked before anything starts
    streams = model_streams(payload)
    out = storage.resolve(cfg.out)
    # Option-free video URIs (what read_videos lists for a folder or manifest on S3) are read
    # with the manifest's filesystem (endpoint, credentials), else the output's, on every node.
    remote = [loc for loc in (storage.resolve(cfg.manifest), out) if not loc.local]
    if remote:
        stage = dataclasses.replace(stage, videos=remote[0])
    prepare_out(out, {"model": str(cfg.model), "fingerprint": fingerprint(payload),
                      "fusion": model.config.fusion, "labels": list(payload["label_names"]),
                      "features": {s: dataclasses.asdict(v) for s, v in settings.items()}},
                cfg.overwrite)
    # Arrow throughout: what the driver holds per video is its manifest row, not Python objects.
    ids = videos.column("video_id")
    done = pc.is_in(ids, value_set=_ids(out.join("predictions"))).to_numpy(zero_copy_only=False)
    failed_before = pc.is_in(ids, value_set=_ids(out.join("failures"))).to_numpy(
        zero_copy_only=False) & ~done
    todo = videos.filter(pa.array(~(done | (failed_before & (not cfg.retry_failed)))))
    summary = BatchSummary(out=str(out), predicted=0, failed={}, skipped_done=int(done.sum()),
                           skipped_failed=0 if cfg.retry_failed else int(failed_before.sum()),
                           seconds=0.0)
    if todo.num_rows:
        _run_stream(cfg, todo, payload, stage, streams, out, summary)
    summary.seconds = time.monotonic() - started
    log.info(summary.report(), extra={"block": True})
    return summary


def _run_stream(cfg: PredictConfig, todo: pa.Table, payload: dict, stage, streams,
                out: storage.Location, summary: BatchSummary) -> None:
    """A pipeline per window of ``todo``: extraction's stages, then the model actor; the rows are
    written every ``chunk_videos`` videos. Counts go to ``summary``."""
    import ray
    from ray.data import ActorPoolStrategy

    from reslstm.distributed.extract.pipeline import PipelinePlan, build_pipeline, windows
    from reslstm.distributed.runtime import cluster_cpus, cluster_gpus, init_ray
    from reslstm.flow.methods import needs_gpu

    log.info(init_ray(cfg.address))
    if needs_gpu(stage.flow_method) and not cluster_gpus() and not cfg.allow_cpu_raft:
        raise PredictError(f"the model's flow is {stage.flow_method}, which needs a GPU, and the "
                           "cluster has none (--allow-cpu-raft runs it on CPUs, slowly)")
    plan = PipelinePlan.make(stage, streams, cluster_cpus(), cluster_gpus(),
                             ray.cluster_resources().get("object_store_memory", 0),
                             cfg.actors, cfg.actor_cpus)
    window = window_videos(cfg.window_videos, cluster_cpus())
    log.info(f"{len(todo)} videos to classify with {cfg.model}, written every "
             f"{cfg.chunk_videos} videos" + (f", one pipeline per {window} videos "
                                            "(--window-videos)" if 0 < window < len(todo) else ""))
    order = sorted(streams, key=lambda s: s != "flow")
    model_ref = {"ref": ray.put(payload)}

    def pipeline(videos: pa.Table) -> "ray.data.Dataset":  # both streams of a video in one
        pairs = [{**r, "stream": s} for r in videos.to_pylist() for s in order]
        return build_pipeline(pairs, plan).map_batches(
            ModelStage, fn_constructor_kwargs={"payload": model_ref, "top_k": cfg.top_k},
            compute=ActorPoolStrategy(min_size=1, max_size=1), batch_format="pyarrow",
            batch_size=None, num_cpus=0)

    writer = _Rows(out, payload, uuid.uuid4().hex[:12], summary, len(todo))
    for videos in windows(todo, window):
        for batch in pipeline(videos).iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(batch)
            if writer.videos >= cfg.chunk_videos:
                writer.flush()
        writer.end_window(videos)
        release_free_heap()
    writer.flush()


class _Rows:
    """The driver's side: prediction and failure rows, written in parts (a killed job loses
    only what was not written); one count per video in ``summary``. It remembers the ids of
    the current window only (``end_window``)."""

    def __init__(self, out, payload: dict, run_id: str, summary: BatchSummary, total: int):
        self.out, self.run_id, self.summary, self.total = out, run_id, summary, total
        self.labels = json.dumps(list(payload["label_names"]))
        self.parts: list[pa.Table] = []
        self.seen: set[str] = set()   # videos of this window with rows
        self.videos = 0               # ... not written yet
        self.done = 0                 # videos of the job with rows
        self.failed = Counter(summary.failed)

    def add(self, rows: pa.Table) -> None:
        if rows.num_rows:
            # A copy: the rows Ray Data hands over are views of its whole deserialized block,
            # which a held view keeps alive until the chunk is written (measured: about 80 KB
            # more per video in the driver than holding copies of its few hundred bytes).
            self.parts.append(rows.take(np.arange(rows.num_rows)))
            new = set(rows.column("video_id").to_pylist()) - self.seen
            self.seen |= new
            self.videos += len(new)
            self.done += len(new)

    def end_window(self, videos: pa.Table) -> None:
        """The window's pipeline ended: its videos that got no row become failures."""
        self.add(_missing(videos, self.seen))
        self.seen = set()

    def flush(self) -> None:
        result = pa.concat_tables(self.parts) if self.parts else STAGE_SCHEMA.empty_table()
        self.parts, self.videos = [], 0
        preds = result.filter(pc.equal(result.column("kind"), "prediction")).select(
            BATCH_SCHEMA.names).cast(BATCH_SCHEMA).replace_schema_metadata({"labels": self.labels})
        fails = result.filter(pc.equal(result.column("kind"), "failure")).select(
            ["video_id", "stream", "path", "stage", "error_type", "message"]).to_pylist()
        fails = pa.Table.from_pylist([{**r, "run_id": self.run_id} for r in fails],
                                     schema=FAILURE_SCHEMA)
        if preds.num_rows:
            write_part(self.out.join("predictions"), preds)
        if fails.num_rows:
            write_part(self.out.join("failures"), fails)
        self.summary.predicted += preds.num_rows
        first_error = dict(zip(reversed(fails.column("video_id").to_pylist()),
                               reversed(fails.column("error_type").to_pylist())))
        self.failed.update(first_error.values())  # one count per video, its first stream's
        self.summary.failed = dict(self.failed)
        del result, preds, fails
        release_arrow_memory()
        log.info(f"{self.done}/{self.total} videos: {self.summary.predicted} classified, "
                 f"{sum(self.failed.values())} failed")


def _missing(todo: pa.Table, seen: set[str]) -> pa.Table:
    """Failure rows for the videos the pipeline returned nothing for."""
    lost = todo.filter(pc.invert(pc.is_in(todo.column("video_id"),
                                          value_set=pa.array(sorted(seen), pa.string()))))
    videos = VideoAssembler((), {}).close(lost.to_pylist())
    return pa.Table.from_pylist([{**f, "kind": "failure"} for v in videos for f in v.failures],
                                schema=STAGE_SCHEMA)


def run_predict(cfg: PredictConfig):
    """The job: the files given (in this process) or ``--manifest`` (a batch on Ray)."""
    if bool(cfg.videos) == bool(cfg.manifest):
        raise PredictError("give video files to classify here, or --manifest (and --out) for a "
                           "batch on Ray, not both" if cfg.videos else
                           "give video files, or --manifest M.parquet --out DIR")
    return predict_files(cfg) if cfg.videos else run_batch(cfg)
