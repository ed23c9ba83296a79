"""The feature store's data: its Arrow schemas, stream settings, and the features column.

One row per video and stream (``feature_schema``): ``video_id``, ``label``, ``label_name``,
``split``, ``stream``, ``num_frames`` (of that stream's sequence: decoded RGB frames for ``rgb``,
flow frames, one fewer, for ``flow``), ``fps``, ``num_clips``, ``padded``, ``warning`` and
``features``, a plain ``list<fixed_size_list<float32, d_f>>``: the K_v clip features in order,
so ``num_clips == sampling.num_clips(num_frames, s, r)``. Failures are rows of
``FAILURE_SCHEMA``. ``StreamSettings`` says how a stream's features were made (metadata.json).

Where each clip is in its video (``SPAN_FIELDS``, one list entry per clip, after ``features``):
``first_frame`` and ``last_frame``, the 0-based indices in decode order of the first and last
decoded frame the clip reads (a flow clip reads one RGB frame more than its clip_len flow
frames), and ``start_s`` / ``end_s``, the seconds it covers from the start of the video stream:
its first frame's presentation time to the end of its last frame (with ``--fps``, grid times:
``reslstm.video.timing``). Stores written before these columns existed have none; readers treat
them as absent (``span_columns``), and a store mixing old and new part files reads them as null
for the old rows.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pyarrow as pa

from reslstm.errors import ReslstmError

FAILURES_DIR = "failures"
METADATA_FILE = "metadata.json"
STORE_FORMAT_VERSION = 1

FAILURE_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("stream", pa.string()),
    ("path", pa.string()),
    ("stage", pa.string()),        # manifest, decode, flow, features, assemble
    ("error_type", pa.string()),   # e.g. VideoDecodeError:truncated
    ("message", pa.string()),
    ("run_id", pa.string()),
])


SPAN_FIELDS = (pa.field("first_frame", pa.list_(pa.int32())),
               pa.field("last_frame", pa.list_(pa.int32())),
               pa.field("start_s", pa.list_(pa.float64())),
               pa.field("end_s", pa.list_(pa.float64())))
SPAN_COLUMNS = tuple(f.name for f in SPAN_FIELDS)


def span_columns(schema: pa.Schema) -> list[str]:
    """The clip-span columns a store's (or a file's) schema has: all of them, or none."""
    return [c for c in SPAN_COLUMNS if c in schema.names]


def feature_schema(feature_dim: int, spans: bool = True) -> pa.Schema:
    """Schema of one stream's rows, with K_v x ``feature_dim`` float32 features (``spans``
    False: without the clip-span columns, as stores written before them are)."""
    return pa.schema([
        ("video_id", pa.string()),
        ("label", pa.int32()),
        ("label_name", pa.string()),
        ("split", pa.string()),
        ("stream", pa.string()),
        ("num_frames", pa.int32()),
        ("fps", pa.float32()),
        ("num_clips", pa.int32()),
        ("padded", pa.bool_()),        # shorter than one clip: the last frame was repeated
        ("warning", pa.string()),      # e.g. fewer frames decoded than the container declares
        ("features", pa.list_(pa.list_(pa.float32(), feature_dim))),
        *(SPAN_FIELDS if spans else ()),
    ])


class StoreError(ReslstmError, RuntimeError):
    """A feature store that is missing, inconsistent, or not what the caller asked for."""


COMPARED_SETTINGS = ("extractor", "weights_id", "feature_dim", "clip_len", "clip_stride", "crops",
                     "input_size", "resize_short", "flow_method", "extractor_options", "fps")


@dataclasses.dataclass
class StreamSettings:
    """How one stream's features were made; recorded in metadata.json."""

    extractor: str
    weights_id: str          # sha256 of the weights file, "random-init", or "torchvision:<ENUM>"
    feature_dim: int
    clip_len: int
    clip_stride: int
    crops: int
    input_size: int
    resize_short: int
    flow_method: str | None = None   # flow stream only
    flow_pretrained: bool = True     # False: an RGB model inflated to 2 channels, or random init
    code_version: str = ""
    extractor_options: dict = dataclasses.field(default_factory=dict)  # e.g. c3d's layer
    fps: float | None = None         # frames resampled to this rate (--fps); None: as decoded

    def differences(self, other: "StreamSettings") -> list[str]:
        """Human-readable differences in the settings that change the features."""
        out = []
        for key in COMPARED_SETTINGS:
            a, b = getattr(self, key), getattr(other, key)
            if a != b:
                out.append(f"{key}: store has {a!r}, requested {b!r}")
        return out


# ---------------------------------------------------------------------------------------------
# Arrow <-> NumPy for the features column
# ---------------------------------------------------------------------------------------------

def features_to_arrow(arrays: Sequence[np.ndarray], feature_dim: int) -> pa.Array:
    """A list<fixed_size_list<float32, d_f>> array from per-video (K_v, d_f) arrays (one copy)."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int32)
    for a in arrays:
        if a.ndim != 2 or a.shape[1] != feature_dim:
            raise ValueError(f"features of shape {a.shape} do not match feature_dim {feature_dim}")
    flat = (np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in arrays])
            if len(arrays) else np.zeros(0, np.float32))
    clips = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), feature_dim)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), clips)


def features_to_numpy(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """Per-row (K_v, d_f) float32 arrays from a features column, without copying each row."""
    if isinstance(column, pa.ChunkedArray):
        return [a for chunk in column.chunks for a in features_to_numpy(chunk)]
    d = column.type.value_type.list_size
    # A sliced ListArray keeps the whole child array; its offsets index into that child.
    offsets = column.offsets.to_numpy()
    clips = column.values  # FixedSizeListArray of all clips
    values = clips.values.to_numpy(zero_copy_only=False)
    # FixedSizeListArray.values ignores the clips' own offset: apply it by hand.
    base = clips.offset * d
    matrix = values[base: base + len(clips) * d].reshape(len(clips), d)
    return [matrix[offsets[i]: offsets[i + 1]] for i in range(len(column))]
