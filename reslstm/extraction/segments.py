"""The segment format: what flows between the stages of extraction, one row per segment.

A *segment* is a run of at most ``clips_per_segment`` consecutive clips of one (video, stream)
together with the frames those clips need (``clips.iter_segments``). Each travels as a one-row
Arrow table of ``SEGMENT_SCHEMA``: the work item's keys, where the segment sits in its video, and
``data`` + ``shape``: uint8 frames (RGB, or quantised flow) before the feature stage, float32
clip features after it. A failure travels in the same schema (``kind = "failure"``) with the
stage, a typed error and a message naming the file, so one bad video never stops the others.
The stages (``extraction.stages``) make these rows. ``SegmentJoiner`` joins the features of a
video's segments back in order (arriving in any order, duplicates of retried tasks ignored);
the store writer (``extraction.writer``) and prediction (``reslstm.inference.predictor``) both use it.
Each stage adds the seconds it worked on a segment (``decode_s``, ``flow_s``, ``features_s``):
the writer sums them, which is how a job knows the cost of each stage (its summary, MLflow, and
``--calibrate``).
"""

from __future__ import annotations

import dataclasses
import traceback

import numpy as np
import pyarrow as pa

from reslstm.features.schema import SPAN_COLUMNS, SPAN_FIELDS

STAGES = ("decode", "flow", "features")  # the stages that time their work on each segment

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
    *SPAN_FIELDS,                     # where each clip of the segment is in the video
    *(pa.field(f"{stage}_s", pa.float64()) for stage in STAGES),  # seconds each stage worked
])

KEY_FIELDS = ("video_id", "stream", "path", "label", "label_name", "split")


def segment_row(item: dict, **fields) -> pa.Table:
    """A one-row segment table for work item ``item`` (its keys), with ``fields`` set."""
    row = {k: item.get(k) for k in KEY_FIELDS}
    row.update({"kind": "segment", "seg_index": -1, "first_clip": -1, "num_clips": 0,
                "is_last": False, "total_frames": -1, "padded": False, "fps": 0.0,
                **{f"{stage}_s": 0.0 for stage in STAGES}})
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
    return segment_row(item, kind="failure", stage=stage, error_type=error_type, message=message)


def encode(array: np.ndarray) -> dict:
    """``data`` and ``shape`` fields carrying ``array`` (uint8 frames or float32 features)."""
    array = np.ascontiguousarray(array)
    return {"data": array.tobytes(), "shape": list(array.shape)}


def frames_of(row: dict) -> np.ndarray:
    """The uint8 frames (n, H, W, C) a segment row carries before the feature stage."""
    return np.frombuffer(row["data"], dtype=np.uint8).reshape(row["shape"])


def features_of(row: dict) -> np.ndarray:
    """The (num_clips, d_f) float32 features a segment row carries after the feature stage."""
    return np.frombuffer(row["data"], dtype=np.float32).reshape(row["shape"])


def is_systemic(exc: BaseException) -> bool:
    """An error that is not about one video but about the machine or the setup (a GPU out of
    memory or in a bad state, the process out of memory): it would fail every video, so it
    stops the job instead of becoming a failure row."""
    if isinstance(exc, MemoryError):
        return True
    name, text = type(exc).__name__, str(exc)
    return (name in ("OutOfMemoryError", "AcceleratorError")
            or any(k in text for k in ("CUDA error", "CUDA out of memory", "CUBLAS_STATUS",
                                        "CUDNN_STATUS", "NCCL error")))


# ---------------------------------------------------------------------------------------------
# Joining the segments of a video
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class JoinedVideo:
    """The clip features of one (video, stream), its segments joined in order."""

    key: tuple[str, str]       # (video_id, stream)
    first: dict                # the first segment row that arrived (the work item's keys)
    last: dict                 # the last segment (total_frames, padded, fps, warning)
    features: np.ndarray       # (K_v, d_f) float32
    spans: dict | None = None  # SPAN_COLUMNS -> (K_v,) arrays: where each clip is in the video

    @property
    def num_frames(self) -> int:
        """Frames of this stream's sequence: RGB frames decoded, one fewer for flow."""
        rgb = self.last["total_frames"]
        return rgb - 1 if self.key[1] == "flow" else rgb

    def problem(self, clip_len: int, clip_stride: int, feature_dim: int
                ) -> tuple[str, str, str] | None:
        """(stage, error_type, message) when the joined features are not what the video's
        frames give (a clip lost or doubled, another feature size, NaN or inf); else None."""
        from reslstm.sampling import num_clips

        want = num_clips(max(self.num_frames, 1), clip_len, clip_stride)
        feats, path = self.features, self.first.get("path")
        if len(feats) != want or feats.shape[1] != feature_dim:
            return ("assemble", "SegmentJoinError",
                    f"{path}: joined {feats.shape} features, expected ({want}, {feature_dim}) "
                    f"for {self.num_frames} frames")
        if not np.isfinite(feats).all():
            return ("features", "NonFiniteFeatures",
                    f"{path}: the extractor produced NaN or inf features")
        if self.spans is not None and any(len(v) != want for v in self.spans.values()):
            return ("assemble", "SegmentJoinError", f"{path}: clip spans do not match its {want} clips")
        return None


@dataclasses.dataclass
class _Pending:
    first: dict
    segments: dict = dataclasses.field(default_factory=dict)   # seg_index -> (K_j, d_f)
    spans: dict = dataclasses.field(default_factory=dict)      # seg_index -> its spans or None
    last_index: int | None = None
    last: dict | None = None


class SegmentJoiner:
    """Collects the feature segment rows of any number of (video, stream) pairs; ``add``
    returns the ``JoinedVideo`` once a pair's last segment and every one before it arrived."""

    def __init__(self):
        self.pending: dict[tuple[str, str], _Pending] = {}

    def add(self, row: dict) -> JoinedVideo | None:
        key = (row["video_id"], row["stream"])
        pend = self.pending.get(key)
        if pend is None:
            pend = self.pending[key] = _Pending(first=row)
        if row["seg_index"] not in pend.segments:
            pend.segments[row["seg_index"]] = features_of(row).copy()
            pend.spans[row["seg_index"]] = (None if row.get(SPAN_COLUMNS[0]) is None
                                            else [row[c] for c in SPAN_COLUMNS])
        if row["is_last"]:
            pend.last_index, pend.last = row["seg_index"], row
        if pend.last_index is None or len(pend.segments) != pend.last_index + 1:
            return None
        del self.pending[key]
        order = range(pend.last_index + 1)
        feats = np.concatenate([pend.segments[i] for i in order], axis=0)
        spans = None
        if all(pend.spans[i] is not None for i in order):
            spans = {c: np.concatenate([np.asarray(pend.spans[i][j]) for i in order])
                     for j, c in enumerate(SPAN_COLUMNS)}
        return JoinedVideo(key, pend.first, pend.last, feats, spans)

    def discard(self, key: tuple[str, str]) -> None:
        """Forget a pair's partial segments (it failed, or its work is sent again)."""
        self.pending.pop(key, None)

    def incomplete(self) -> list[tuple[tuple[str, str], dict, str]]:
        """(key, first row, what arrived) of every pair still waiting for segments."""
        return [(key, p.first, f"segments {sorted(p.segments)} of "
                               f"{'?' if p.last_index is None else p.last_index + 1}")
                for key, p in self.pending.items()]
