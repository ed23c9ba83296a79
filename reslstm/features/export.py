"""A feature store in the formats other training code reads (``jobs/export.py``).

- ``npy``: ``<name>_<stream>.npy`` per video and stream, the (K_v, d_f) float32 clip features
  exactly as stored, ``index.csv`` with one line per file (``INDEX_FIELDS``) and ``clips.csv``
  with one line per clip: video_id, stream, clip, then where it is in the video
  (``schema.SPAN_COLUMNS``: first and last frame, start and end in seconds; rows of a store
  written before those columns have no lines there). ``name`` is
  the video_id where it is a safe file name, else the id with other characters replaced and a
  short hash of the id appended (two ids never share a file).
- ``hdf5``: one file (``h5py``, the optional extra ``hdf5``), a group ``/videos/<name>`` per
  video with one dataset per stream (K_v, d_f) float32; the group's attributes hold video_id,
  label, label_name and split, each dataset's its num_frames, fps, num_clips, padded; beside
  each stream's dataset ``<stream>_frames`` (K_v, 2) int32 first and last frame and
  ``<stream>_seconds`` (K_v, 2) float64 start and end of every clip (when the store has them);
  the root's ``store_metadata`` the store's metadata.json.

The store is read one row at a time (``pyarrow.parquet.ParquetFile.iter_batches``), from a
local folder or an object-store URI: memory holds one video's features (and the row group being
read), whatever the store's size. Each file appears whole (written to a temporary name, then
renamed), so an export stopped midway leaves no partial array behind; running it again
rewrites everything.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from reslstm.errors import ConfigError

from .schema import SPAN_COLUMNS, features_to_numpy
from .store import as_store

FORMATS = ("npy", "hdf5")
INDEX_FIELDS = ("video_id", "stream", "label", "label_name", "split", "num_clips", "num_frames",
                "fps", "file")
ROW_ATTRS = ("num_frames", "fps", "num_clips", "padded")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class ExportSummary:
    out: str
    videos: int = 0
    arrays: dict[str, int] = field(default_factory=dict)  # stream -> arrays written
    bytes: int = 0


def safe_name(video_id: str) -> str:
    """A file and HDF5 group name for ``video_id``: itself when it is safe, else a cleaned form
    with a hash of the id (so distinct ids stay distinct)."""
    clean = _SAFE.sub("_", video_id).lstrip(".") or "_"
    if clean == video_id:
        return video_id
    return f"{clean[:80]}-{hashlib.sha1(video_id.encode()).hexdigest()[:10]}"


def iter_rows(store, stream: str) -> Iterator[tuple[dict, np.ndarray]]:
    """(the row's other columns, its (K_v, d_f) features) of every row of ``stream``, one at a
    time, in file order."""
    st = as_store(store)
    fs = st.root.filesystem
    for path in st.stream_files(stream):
        with fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1):
                (feats,) = features_to_numpy(batch.column("features"))
                (row,) = batch.drop_columns(["features"]).to_pylist()
                yield row, feats


def _streams(store, streams: Sequence[str] | None) -> list[str]:
    st = as_store(store)
    have = [s for s in st.read_metadata() if st.has_stream(s)]
    if not have:
        raise ConfigError(f"{st.root.uri}: no feature store here (no stream with rows); point "
                          "--store at the --out of jobs/extract.py")
    if streams:
        missing = [s for s in streams if s not in have]
        if missing:
            raise ConfigError(f"{st.root.uri} has no {', '.join(missing)} rows (it has "
                              f"{', '.join(have)})")
        return list(streams)
    return have


def export_npy(store, out: str | Path, streams: Sequence[str] | None = None,
               progress: Callable[[int], None] | None = None) -> ExportSummary:
    """One .npy per video and stream, and index.csv (module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary, seen = ExportSummary(str(out)), set()
    index_tmp, clips_tmp = out / ".index.csv.tmp", out / ".clips.csv.tmp"
    with open(index_tmp, "w", newline="") as fh, open(clips_tmp, "w", newline="") as ch:
        writer = csv.DictWriter(fh, fieldnames=INDEX_FIELDS)
        writer.writeheader()
        clips = csv.writer(ch)
        clips.writerow(("video_id", "stream", "clip") + SPAN_COLUMNS)
        for stream in _streams(store, streams):
            for row, feats in iter_rows(store, stream):
                name = f"{safe_name(row['video_id'])}_{stream}.npy"
                tmp = out / f".{name}.tmp"
                with open(tmp, "wb") as f:
                    np.save(f, feats)
                os.replace(tmp, out / name)
                writer.writerow({**{k: row.get(k) for k in INDEX_FIELDS}, "stream": stream,
                                 "file": name})
                if row.get(SPAN_COLUMNS[0]) is not None:
                    clips.writerows((row["video_id"], stream, k, *span)
                                    for k, span in enumerate(zip(*(row[c] for c in SPAN_COLUMNS))))
                _count(summary, seen, row, stream, feats, progress)
    os.replace(clips_tmp, out / "clips.csv")
    os.replace(index_tmp, out / "index.csv")
    return summary


def export_hdf5(store, out: str | Path, streams: Sequence[str] | None = None,
                progress: Callable[[int], None] | None = None) -> ExportSummary:
    """One HDF5 file, a group per video (module docstring)."""
    try:
        import h5py
    except ImportError:
        raise ConfigError("--format hdf5 needs h5py, the optional extra hdf5: pip install -e "
                          "'.[hdf5]' (or pip install h5py)") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    summary, seen = ExportSummary(str(out)), set()
    st = as_store(store)
    with h5py.File(tmp, "w") as h5:
        h5.attrs["store"] = st.root.uri
        h5.attrs["store_metadata"] = json.dumps(st.metadata_doc())
        videos = h5.require_group("videos")
        for stream in _streams(store, streams):
            for row, feats in iter_rows(store, stream):
                group = videos.require_group(safe_name(row["video_id"]))
                for key in ("video_id", "label", "label_name", "split"):
                    group.attrs[key] = row[key] if row[key] is not None else ""
                data = group.create_dataset(stream, data=feats)
                for key in ROW_ATTRS:
                    data.attrs[key] = row[key]
                if row.get(SPAN_COLUMNS[0]) is not None:
                    first, last, start, end = (row[c] for c in SPAN_COLUMNS)
                    group.create_dataset(f"{stream}_frames", data=np.array([first, last], np.int32).T)
                    group.create_dataset(f"{stream}_seconds", data=np.array([start, end], np.float64).T)
                _count(summary, seen, row, stream, feats, progress)
    os.replace(tmp, out)
    return summary


def _count(summary: ExportSummary, seen: set, row: dict, stream: str, feats: np.ndarray,
           progress) -> None:
    summary.arrays[stream] = summary.arrays.get(stream, 0) + 1
    summary.bytes += feats.nbytes
    if row["video_id"] not in seen:
        seen.add(row["video_id"])
        summary.videos += 1
    if progress is not None:
        progress(sum(summary.arrays.values()))
