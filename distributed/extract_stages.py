"""The stages of feature extraction, as plain Python callables that Ray Data runs.

Work flows as one-row Arrow tables (``SEGMENT_SCHEMA``), one per *segment*: a run of at most
``clips_per_segment`` consecutive clips of one (video, stream) together with the frames those
clips need. Long videos therefore never sit whole in memory: they stream through as segments
that overlap by ``clip_len - clip_stride`` frames, and the writer joins the segment features
back in order (``distributed.store_writer``).

    decode_segments   (CPU task)  manifest row -> RGB frame segments, or a failure row
    compute_flow_stage (CPU task) flow segments: RGB frames -> quantised optical flow
    FeatureStage      (actor)     frames -> clip features (the 3D CNN, crops averaged)

A segment of the flow stream is cut with clips of ``clip_len + 1`` RGB frames, because flow
frame i is the motion between RGB frames i and i + 1: its K clips are exactly the flow clips.
Any error becomes a failure row naming the stage; nothing raises out of a stage, so one bad
file never takes a block (and the other videos in it) down with it.

``build_pipeline`` assembles them into the Ray Data pipeline with their resources, block size
and object-store budget (why each is what it is: ``distributed.extract``). The same callables
run without Ray in ``run_local`` (the single-process baseline of
``benchmarks/extract_scaling.py``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import traceback
from typing import Iterator

import numpy as np
import pyarrow as pa

SEGMENT_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("stream", pa.string()),
    ("path", pa.string()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("split", pa.string()),
    ("kind", pa.string()),            # "segment" or "failure"
    ("seg_index", pa.int32()),
    ("first_clip", pa.int32()),
    ("num_clips", pa.int32()),
    ("is_last", pa.bool_()),
    ("total_frames", pa.int32()),     # RGB frames decoded (on the last segment), else -1
    ("padded", pa.bool_()),
    ("fps", pa.float32()),
    ("warning", pa.string()),
    ("data", pa.large_binary()),      # frames (uint8) before the feature stage, features after
    ("shape", pa.list_(pa.int32())),
    ("stage", pa.string()),           # failures: where it failed
    ("error_type", pa.string()),
    ("message", pa.string()),
])

_KEY_FIELDS = ("video_id", "stream", "path", "label", "label_name", "split")

MAX_BLOCKS = 20_000
TASK_BASE_BYTES = 256 * 1024 ** 2    # a Ray worker with PyAV, NumPy, Arrow and OpenCV loaded
ACTOR_BASE_BYTES = 1024 ** 3         # ... with torch and an extractor
SEGMENTS_IN_FLIGHT = 8               # object-store budget per worker, in segments


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """What every stage needs to know; plain data so Ray can ship it to any node."""

    clip_len: int
    clip_stride: int
    clips_per_segment: int
    resize_short: dict             # stream -> short side frames are decoded at
    flow_method: str               # tvl1 | farneback | dis | raft
    min_frame_ratio: float | None  # decoded / declared frames below this: a failure
    extractor: str
    weights: dict                  # stream -> weights argument of create_extractor
    extractor_options: dict
    crops: int
    batch_size: int
    device: str | None = None      # None: CUDA when the worker has a GPU, else CPU
    allow_cpu_raft: bool = False
    raft_size: str = "large"
    raft_weights: str | None = "C_T_V2"  # torchvision enum name, a file, or None (random init)
    task_threads: int | None = None   # torch/OpenCV threads in the CPU tasks (None: as is)
    actor_threads: int | None = None  # torch threads of a CPU feature actor (None: as is)


def limit_threads(n: int | None) -> None:
    """Use ``n`` threads in torch and OpenCV in this process: a Ray worker that reserved n CPUs
    should not spread over every core of the node (None: leave the libraries' defaults)."""
    if not n:
        return
    import sys

    import cv2

    cv2.setNumThreads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _row(item: dict, **fields) -> pa.Table:
    row = {k: item.get(k) for k in _KEY_FIELDS}
    row.update({"kind": "segment", "seg_index": -1, "first_clip": -1, "num_clips": 0,
                "is_last": False, "total_frames": -1, "padded": False, "fps": 0.0})
    row.update(fields)
    return pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA)


def failure_row(item: dict, stage: str, exc: BaseException) -> pa.Table:
    """A failure row for ``item``: the stage, a typed error and a message naming the file."""
    kind = getattr(exc, "kind", None)
    error_type = type(exc).__name__ + (f":{kind}" if kind else "")
    message = str(exc) or repr(exc)
    if item.get("path") and str(item["path"]) not in message:
        message = f"{item['path']}: {message}"
    if not kind and not isinstance(exc, (ValueError, OSError)):
        # Unexpected errors: keep the innermost frames so the row alone explains them.
        message += "\n" + "".join(traceback.format_exception(exc)[-3:])
    return _row(item, kind="failure", stage=stage, error_type=error_type, message=message)


def _frames_of(row: dict) -> np.ndarray:
    return np.frombuffer(row["data"], dtype=np.uint8).reshape(row["shape"])


# ---------------------------------------------------------------------------------------------
# Stage 1: decode (CPU task)
# ---------------------------------------------------------------------------------------------

def decode_segments(batch: pa.Table, cfg: StageConfig) -> Iterator[pa.Table]:
    """Manifest rows (with a ``stream`` column) -> one table per frame segment, or a failure."""
    from reslstm.video import VideoReader, iter_segments

    limit_threads(cfg.task_threads)
    for item in batch.to_pylist():
        stream = item["stream"]
        seg_clip = cfg.clip_len + 1 if stream == "flow" else cfg.clip_len
        try:
            reader = VideoReader(item["path"], short_side=cfg.resize_short[stream],
                                 min_frame_ratio=cfg.min_frame_ratio)
            for index, seg in enumerate(iter_segments(reader, seg_clip, cfg.clip_stride,
                                                      cfg.clips_per_segment)):
                fps = float(reader.info.fps or 0.0)  # known once the first frame is decoded
                warning = None
                if seg.is_last and reader.declared_frames and reader.decoded_frames < reader.declared_frames:
                    warning = (f"decoded {reader.decoded_frames} of {reader.declared_frames} "
                               f"frames the container declares")
                frames = np.ascontiguousarray(seg.frames)
                yield _row(item, seg_index=index, first_clip=seg.first_clip, num_clips=seg.num_clips,
                           is_last=seg.is_last,
                           total_frames=seg.total_frames if seg.is_last else -1,
                           padded=seg.padded, fps=fps, warning=warning,
                           data=frames.tobytes(), shape=list(frames.shape))
        except Exception as exc:  # noqa: BLE001 - every error becomes a failure row
            yield failure_row(item, "decode", exc)


# ---------------------------------------------------------------------------------------------
# Stage 2: optical flow on the CPU (task); RGB segments and failures pass through
# ---------------------------------------------------------------------------------------------

class TooShortForFlow(ValueError):
    kind = "too_short_for_flow"


def flow_segment(rgb: np.ndarray, num_real: int, clip_len: int, method: str) -> np.ndarray:
    """Quantised uint8 flow (n - 1, H, W, 2) of an RGB segment (n, H, W, 3).

    ``num_real`` < n means the segment was padded (a video shorter than one flow clip): the flow
    is computed on the real frames and its last flow frame repeated up to ``clip_len``.
    """
    from reslstm.flow import compute_flow, quantize_flow

    if num_real < 2:
        raise TooShortForFlow(f"{num_real} frame(s): optical flow needs at least 2")
    flow = quantize_flow(compute_flow(rgb[:num_real], method))
    if len(flow) < clip_len:
        flow = np.concatenate([flow, np.repeat(flow[-1:], clip_len - len(flow), axis=0)])
    return flow


def compute_flow_stage(batch: pa.Table, cfg: StageConfig) -> pa.Table:
    limit_threads(cfg.task_threads)
    out = []
    for row in batch.to_pylist():
        if row["kind"] != "segment" or row["stream"] != "flow" or cfg.flow_method == "raft":
            out.append(pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA))
            continue
        try:
            rgb = _frames_of(row)
            num_real = row["total_frames"] if row["padded"] else len(rgb)
            flow = flow_segment(rgb, num_real, cfg.clip_len, cfg.flow_method)
            row.update(data=flow.tobytes(), shape=list(flow.shape))
            out.append(pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA))
        except Exception as exc:  # noqa: BLE001
            out.append(failure_row(row, "flow", exc))
    return pa.concat_tables(out) if out else SEGMENT_SCHEMA.empty_table()


# ---------------------------------------------------------------------------------------------
# Stage 3: features (actor: the models are loaded once)
# ---------------------------------------------------------------------------------------------

class FeatureStage:
    """Loads one extractor per stream (and RAFT for ``--flow raft``) once, then turns frame
    segments into clip features: (num_clips, d_f) float32, crops averaged (eq. 5)."""

    def __init__(self, cfg: StageConfig, streams: tuple[str, ...]):
        import torch

        from reslstm.extractors import create_extractor

        self.cfg = cfg
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            limit_threads(cfg.actor_threads)
        self.extractors = {}
        for s in streams:
            ext = create_extractor(cfg.extractor, s, cfg.weights.get(s), **cfg.extractor_options)
            self.extractors[s] = ext.to(self.device).eval()
        self.raft = None
        if "flow" in streams and cfg.flow_method == "raft":
            from reslstm.flow import RaftFlow

            self.raft = RaftFlow(size=cfg.raft_size, weights=cfg.raft_weights, device=self.device,
                                 allow_cpu=cfg.allow_cpu_raft)

    def features(self, row: dict) -> np.ndarray:
        from reslstm.extractors import clip_features

        frames = _frames_of(row)
        if row["stream"] == "flow" and self.raft is not None:
            from reslstm.flow import quantize_flow

            num_real = row["total_frames"] if row["padded"] else len(frames)
            if num_real < 2:
                raise TooShortForFlow(f"{num_real} frame(s): optical flow needs at least 2")
            flow = quantize_flow(self.raft(frames[:num_real]))
            if len(flow) < self.cfg.clip_len:
                flow = np.concatenate([flow, np.repeat(flow[-1:], self.cfg.clip_len - len(flow), 0)])
            frames = flow
        feats = clip_features(self.extractors[row["stream"]], frames, self.cfg.clip_len,
                              self.cfg.clip_stride, self.cfg.crops, self.cfg.batch_size, self.device)
        if len(feats) != row["num_clips"]:
            raise RuntimeError(f"segment {row['seg_index']} gave {len(feats)} clip features, "
                               f"expected {row['num_clips']}")
        return feats

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            if row["kind"] == "segment":
                try:
                    feats = np.ascontiguousarray(self.features(row), dtype=np.float32)
                    row.update(data=feats.tobytes(), shape=list(feats.shape))
                except Exception as exc:  # noqa: BLE001
                    row = failure_row(row, "features", exc).to_pylist()[0]
            out.append(row)
        return pa.Table.from_pylist(out, schema=SEGMENT_SCHEMA)


def segment_features(row: dict) -> np.ndarray:
    """The (num_clips, d_f) features carried by a feature-stage output row."""
    return np.frombuffer(row["data"], dtype=np.float32).reshape(row["shape"])


# ---------------------------------------------------------------------------------------------
# The Ray Data pipeline: the stages, their resources and the budget of segments in flight
# ---------------------------------------------------------------------------------------------

def _segment_bytes(stage: StageConfig, stream: str) -> int:
    """Bytes of one full segment of decoded frames (the largest row a stage emits)."""
    side = stage.resize_short[stream]
    frames = (stage.clips_per_segment - 1) * stage.clip_stride + stage.clip_len + 1 + stage.clip_stride
    return frames * side * (side * 16 // 9) * 3  # widest common aspect ratio


def _block_target_bytes(stage: StageConfig, streams: tuple[str, ...]) -> int:
    """A Ray Data block target below the size of any frame segment (one clip of flow at the
    smallest side): every segment then leaves its task as a block of its own."""
    return min(stage.clip_len * stage.resize_short[s] ** 2 * 2 for s in streams)


def object_store_budget(stage: StageConfig, streams: tuple[str, ...], workers: int,
                        cluster_store_bytes: float, limit_gb: float | None = None) -> int:
    """Object-store bytes the pipeline may hold at once: ``limit_gb`` when given, else
    ``SEGMENTS_IN_FLIGHT`` full segments per worker (CPU tasks and actors), and never more than
    Ray Data's own default (half the cluster's object store)."""
    if limit_gb:
        return int(limit_gb * 1024 ** 3)
    seg = max(_segment_bytes(stage, s) for s in streams)
    return int(min(SEGMENTS_IN_FLIGHT * seg * max(workers, 1), 0.5 * cluster_store_bytes))


@contextlib.contextmanager
def _pipeline_context(stage: StageConfig, streams: tuple[str, ...], object_store_bytes: int | None):
    """Set the DataContext fields the pipeline needs while its source is created (a Dataset
    copies the current context then, and every stage after it keeps that copy); the caller's
    context is restored afterwards."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size, ctx.execution_options
    try:
        # Ray Data packs the rows a task emits into blocks of up to target_max_block_size
        # (128 MiB by default) before yielding them: a decode task would hold 128 MiB of a long
        # video's segments in its output buffer, and the feature actor receive them as one block.
        ctx.target_max_block_size = _block_target_bytes(stage, streams)
        ctx.execution_options = copy.deepcopy(saved[1])
        if object_store_bytes:
            # Ray Data stops reading task outputs and starting tasks when the dataset holds this
            # much: decoded frames wait in the object store for at most this many bytes.
            ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
                object_store_memory=object_store_bytes)
        yield
    finally:
        ctx.target_max_block_size, ctx.execution_options = saved


def max_actors(actors: int | None, gpus: int, cpus: int) -> int:
    return actors or gpus or max(1, cpus // 2)


def actor_resources(gpus: int, actor_cpus: float | None) -> dict:
    """Ray resources of one feature actor: with GPUs one GPU and (by default) one CPU to feed
    it; on a CPU-only cluster no reserved CPU by default (see ``build_pipeline``)."""
    if gpus:
        return {"num_gpus": 1, "num_cpus": 1 if actor_cpus is None else actor_cpus}
    return {"num_cpus": 0 if actor_cpus is None else actor_cpus}


def build_pipeline(items: list[dict], stage: StageConfig, streams: tuple[str, ...],
                   actors: int | None, gpus: int, cpus: int, object_store_bytes: int | None = None,
                   actor_cpus: float | None = None):
    """The lazy Ray Dataset of feature-stage output rows (segments and failures).

    CPUs: only the flow tasks reserve one each. Decoding is cheap next to optical flow (under
    1 % of TV-L1's time), and the feature actor on a CPU-only cluster is idle most of the time:
    a CPU reserved for either sat unused while flow tasks queued for the others (on 2 CPUs the
    pipeline ran at the speed of one). Decode tasks are capped at one per CPU instead and share
    the cores. It also makes the pipeline deadlock-free: a decode task paused by backpressure
    (its segments not yet taken) holds no CPU, so the flow tasks that drain it can always start,
    also after a node is lost; with decode and the actor each holding one of two CPUs, a long
    video hung. ``actor_cpus`` reserves CPUs (and torch threads) per actor when the model is the
    slow stage (I3D on CPU).
    """
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    resources = actor_resources(gpus, actor_cpus)
    # A task that reserved one CPU (or none) runs torch and OpenCV on one thread.
    stage = dataclasses.replace(stage, task_threads=1,
                                actor_threads=max(1, int(round(resources["num_cpus"]))))
    seg = max(_segment_bytes(stage, s) for s in streams)
    with _pipeline_context(stage, streams, object_store_bytes):
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_BLOCKS)))
    # `memory` is what a worker holds at most: the process itself plus the segments in hand
    # (decode: the segment being filled, the next one, and the one being sent; flow: the RGB
    # segment in and the flow segment out, with their copies; features: two queued inputs).
    ds = ds.map_batches(decode_segments, fn_kwargs={"cfg": stage}, batch_size=1,
                        batch_format="pyarrow", num_cpus=0,
                        compute=TaskPoolStrategy(size=max(1, cpus)),
                        memory=TASK_BASE_BYTES + 3 * seg)
    if "flow" in streams and stage.flow_method != "raft":
        ds = ds.map_batches(compute_flow_stage, fn_kwargs={"cfg": stage}, batch_size=1,
                            batch_format="pyarrow", num_cpus=1, memory=TASK_BASE_BYTES + 4 * seg)
    pool = ActorPoolStrategy(min_size=1, max_size=max_actors(actors, gpus, cpus))
    return ds.map_batches(FeatureStage, fn_constructor_kwargs={"cfg": stage, "streams": streams},
                          compute=pool, batch_size=1, batch_format="pyarrow",
                          memory=ACTOR_BASE_BYTES + 3 * seg, **resources)
