"""The feature store: its Arrow schema, its on-disk layout, atomic writes and its readers.

Layout of a store directory::

    STORE/metadata.json             settings per stream (extractor, weights id, clips, crops, flow)
    STORE/rgb/part-*.parquet        one row per video: the RGB clip features
    STORE/flow/part-*.parquet       one row per video: the optical-flow clip features
    STORE/failures/part-*.parquet   one row per (video, stream) that could not be extracted

Each stream directory is a plain Parquet dataset, readable by pyarrow, pandas or DuckDB without
Ray (``pyarrow.dataset.dataset(STORE / "rgb")``). ``features`` is a
``list<fixed_size_list<float32, d_f>>`` column: the K_v clip features of the video in order.
``num_frames`` counts the frames of that stream's sequence: decoded RGB frames for ``rgb``,
flow frames (one fewer) for ``flow``, so ``num_clips == sampling.num_clips(num_frames, s, r)``.

Files are written under a name starting with ``.`` and renamed when complete, so a reader
(pyarrow ignores names starting with ``.`` or ``_``) never sees a half-written file, whatever
happens to the writer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

STREAMS = ("rgb", "flow")
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


def feature_schema(feature_dim: int) -> pa.Schema:
    """Schema of one stream's rows, with K_v x ``feature_dim`` float32 features."""
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
    ])


class StoreError(RuntimeError):
    """A feature store that is missing, inconsistent, or not what the caller asked for."""


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------

# Settings that change the features: a rerun into the same store must match them.
COMPARED_SETTINGS = ("extractor", "weights_id", "feature_dim", "clip_len", "clip_stride", "crops",
                     "input_size", "resize_short", "flow_method")


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

    def differences(self, other: "StreamSettings") -> list[str]:
        """Human-readable differences in the settings that change the features."""
        out = []
        for key in COMPARED_SETTINGS:
            a, b = getattr(self, key), getattr(other, key)
            if a != b:
                out.append(f"{key}: store has {a!r}, requested {b!r}")
        return out


def read_metadata(store: str | os.PathLike) -> dict[str, StreamSettings]:
    """Settings per stream recorded in ``STORE/metadata.json`` ({} for a new store)."""
    path = Path(store) / METADATA_FILE
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {s: StreamSettings(**v) for s, v in doc.get("streams", {}).items()}
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{path}: unreadable store metadata ({exc}); fix or remove the file") from exc


def write_metadata(store: str | os.PathLike, streams: dict[str, StreamSettings], **extra) -> Path:
    """Write ``metadata.json`` atomically (settings per stream plus ``extra`` fields)."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    doc = {"format_version": STORE_FORMAT_VERSION,
           "streams": {s: dataclasses.asdict(v) for s, v in sorted(streams.items())}, **extra}
    path = store / METADATA_FILE
    tmp = store / f".{METADATA_FILE}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_metadata_extra(store: str | os.PathLike) -> dict:
    """The fields of metadata.json beyond the stream settings (e.g. the manifest path)."""
    path = Path(store) / METADATA_FILE
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return {k: v for k, v in doc.items() if k not in ("streams", "format_version")}


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


# ---------------------------------------------------------------------------------------------
# Writing: atomic part files
# ---------------------------------------------------------------------------------------------

def write_part(directory: str | os.PathLike, table: pa.Table, name: str | None = None) -> Path:
    """Write ``table`` as ``directory/<name>`` so that it appears only when complete.

    The data goes to a hidden temporary file (ignored by pyarrow datasets), is flushed to disk,
    and is renamed into place; killing the writer at any moment leaves either no file or the
    whole file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Time-ordered names: readers that must prefer the latest record sort by name.
    name = name or f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    final = directory / name
    tmp = directory / f".{name}.tmp"
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def remove_temporaries(directory: str | os.PathLike) -> int:
    """Delete leftover hidden ``.*.tmp`` files of a killed writer; returns how many."""
    directory = Path(directory)
    n = 0
    if directory.is_dir():
        for p in directory.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def stream_dir(store: str | os.PathLike, stream: str) -> Path:
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; expected one of {STREAMS}")
    return Path(store) / stream


def _parquet_files(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(str(p) for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))


def has_stream(store: str | os.PathLike, stream: str) -> bool:
    return bool(_parquet_files(stream_dir(store, stream)))


def read_stream(store: str | os.PathLike, stream: str, splits: Iterable[str] | None = None,
                columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of one stream (optionally only some splits / columns) as one Arrow table."""
    files = _parquet_files(stream_dir(store, stream))
    if not files:
        raise StoreError(f"{stream_dir(store, stream)}: no {stream} features in the store; "
                         f"run jobs/extract.py --streams {stream} --out {store} first")
    dataset = pads.dataset(files, format="parquet")
    filt = None
    if splits is not None:
        filt = pads.field("split").isin(list(splits))
    return dataset.to_table(columns=list(columns) if columns else None, filter=filt)


def stream_files(store: str | os.PathLike, stream: str) -> list[str]:
    """The committed Parquet files of one stream (for ``ray.data.read_parquet``)."""
    return _parquet_files(stream_dir(store, stream))


def written_ids(store: str | os.PathLike, stream: str) -> set[str]:
    """video_ids that already have a row in ``stream``."""
    if not has_stream(store, stream):
        return set()
    return set(read_stream(store, stream, columns=["video_id"]).column("video_id").to_pylist())


def read_failures(store: str | os.PathLike, current_only: bool = True) -> pa.Table:
    """The failures table. ``current_only``: drop failures of (video, stream) pairs that were
    extracted by a later run (``--retry-failed``) and keep the latest failure of each pair."""
    files = _parquet_files(Path(store) / FAILURES_DIR)
    if not files:
        return FAILURE_SCHEMA.empty_table()
    table = pads.dataset(files, format="parquet", schema=FAILURE_SCHEMA).to_table()
    if not current_only or table.num_rows == 0:
        return table
    done = {s: written_ids(store, s) for s in STREAMS}
    latest: dict[tuple[str, str], int] = {}
    for i, (vid, stream) in enumerate(zip(table.column("video_id").to_pylist(),
                                          table.column("stream").to_pylist())):
        if vid not in done.get(stream, set()):
            latest[(vid, stream)] = i  # files are read in name order; later rows win
    return table.take(sorted(latest.values()))


def failed_ids(store: str | os.PathLike, stream: str) -> set[str]:
    """video_ids whose latest attempt on ``stream`` failed."""
    t = read_failures(store)
    return {v for v, s in zip(t.column("video_id").to_pylist(), t.column("stream").to_pylist())
            if s == stream}


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class VerifyReport:
    """What ``verify_store`` found: counts per stream and every problem, one line each."""

    rows: dict = dataclasses.field(default_factory=dict)        # stream -> rows checked
    failures: dict = dataclasses.field(default_factory=dict)    # stream -> current failures
    problems: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self, limit: int = 50) -> str:
        lines = [f"{s}: {n} rows, {self.failures.get(s, 0)} recorded failures"
                 for s, n in sorted(self.rows.items())]
        lines.append("OK: no problems found" if self.ok else f"{len(self.problems)} problem(s):")
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def verify_store(store: str | os.PathLike, manifest: pa.Table | None = None) -> VerifyReport:
    """Check every row of every stream: finite features of the recorded width, ``num_clips``
    consistent with ``num_frames`` and the clip settings, one row per (video, stream), and, given
    the manifest, that each of its videos is either extracted or recorded as a failure."""
    from .sampling import num_clips as expected_clips

    report = VerifyReport()
    settings = read_metadata(store)
    if not settings:
        report.problems.append(f"{Path(store) / METADATA_FILE}: missing; not a feature store")
        return report
    failures = read_failures(store)
    fail_pairs = set(zip(failures.column("video_id").to_pylist(), failures.column("stream").to_pylist()))
    wanted = set(manifest.column("video_id").to_pylist()) if manifest is not None else None
    for stream, s in sorted(settings.items()):
        seen: set[str] = set()
        n = 0
        for path in _parquet_files(stream_dir(store, stream)):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
                ids = batch.column("video_id").to_pylist()
                frames = batch.column("num_frames").to_pylist()
                clips = batch.column("num_clips").to_pylist()
                streams = batch.column("stream").to_pylist()
                feats = features_to_numpy(batch.column("features"))
                width = batch.schema.field("features").type.value_type.list_size
                where = f"{Path(path).name}"
                if width != s.feature_dim:
                    report.problems.append(f"{where}: features are {width}-d, metadata says {s.feature_dim}")
                for vid, nf, k, st, f in zip(ids, frames, clips, streams, feats):
                    n += 1
                    tag = f"{stream}/{vid} ({where})"
                    if vid in seen:
                        report.problems.append(f"{tag}: duplicate row")
                    seen.add(vid)
                    if st != stream:
                        report.problems.append(f"{tag}: stream column says {st!r}")
                    want = expected_clips(nf, s.clip_len, s.clip_stride) if nf and nf > 0 else None
                    if want is None or k != want or len(f) != k:
                        report.problems.append(f"{tag}: num_clips {k}, {len(f)} feature rows, "
                                               f"expected {want} for {nf} frames")
                    if not np.isfinite(f).all():
                        report.problems.append(f"{tag}: non-finite features")
                    if wanted is not None and vid not in wanted:
                        report.problems.append(f"{tag}: not in the manifest")
        report.rows[stream] = n
        report.failures[stream] = sum(1 for _, st in fail_pairs if st == stream)
        if wanted is not None:
            missing = sorted(v for v in wanted - seen if (v, stream) not in fail_pairs)
            for v in missing[:20]:
                report.problems.append(f"{stream}/{v}: in the manifest but neither extracted nor failed")
            if len(missing) > 20:
                report.problems.append(f"{stream}: {len(missing) - 20} more manifest videos missing")
    return report
