"""The segment format: what flows between the stages of extraction, one row per segment.

A *segment* is a run of at most ``clips_per_segment`` consecutive clips of one (video, stream)
together with the frames those clips need (``clips.iter_segments``). Each travels as a one-row
Arrow table of ``SEGMENT_SCHEMA``: the work item's keys, where the segment sits in its video, and
``data`` + ``shape``: uint8 frames (RGB, or quantised flow) before the feature stage, float32
clip features after it. A failure travels in the same schema (``kind = "failure"``) with the
stage, a typed error and a message naming the file, so one bad video never stops the others.
The stages (``extraction.stages``) make these rows; the store writer (``features.writer``)
joins the features of a video's segments back into one row.
"""

from __future__ import annotations

import traceback

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

KEY_FIELDS = ("video_id", "stream", "path", "label", "label_name", "split")


def segment_row(item: dict, **fields) -> pa.Table:
    """A one-row segment table for work item ``item`` (its keys), with ``fields`` set."""
    row = {k: item.get(k) for k in KEY_FIELDS}
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
