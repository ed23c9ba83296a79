"""The single writer of a feature store: joins segment features into one row per video.

The extraction driver feeds every output row of the pipeline (``extraction.segments``) to
``StoreWriter.consume``. For each (video, stream) it keeps the features of the segments that
arrived (in any order, duplicates from retried tasks ignored: ``segments.SegmentJoiner``) and,
once the last segment and all before it are in, makes one row. Rows are flushed in part files
of about ``part_bytes`` of features (and at least every ``flush_every_s``) that appear only when complete (``features.store.write_part``), so a job killed at any moment
leaves only complete files and a rerun extracts exactly what is missing. A failure row discards that video's partial segments and is
recorded in the failures table. ``close`` reports anything still incomplete as a failure:
nothing is silently skipped.

The writer remembers which (video, stream) pairs this run finished (``FinishedIds``, one per
stream): a retried task's late duplicate of a finished pair is ignored, and a rerun of the
pipeline, or ``close``, knows what was never returned. The newest few thousand ids are a
Python set; older ones move into one Arrow array sorted by their hash, about 40 bytes an id
(65 at the most, with the set) instead of 110 for a set entry and a string object each (which also stayed scattered through Python's
small-object arenas among the rows' transient objects, keeping those arenas from being freed).
"""

from __future__ import annotations

import collections
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reslstm.features.schema import (FAILURE_SCHEMA, SPAN_COLUMNS, SPAN_FIELDS, StreamSettings,
                                     feature_schema, features_to_arrow)
from reslstm.features.compaction import PART_MIB
from reslstm.features.store import FeatureStore, write_part
from reslstm.memory import release_arrow_memory

from .segments import STAGES, JoinedVideo, SegmentJoiner


_hash = hash  # of a str: stable within the process, which is all the set needs


class FinishedIds:
    """A growing set of id strings held compactly (module docstring): ``add``, ``in``, ``len``
    and ``array()``, all of them exact (a hash only narrows where an id can be)."""

    RECENT = 4096  # ids kept as a Python set (at least) before they move into the Arrow array

    def __init__(self):
        self.recent: set[str] = set()
        self.hashes = np.zeros(0, np.int64)       # sorted: the hash of each older id
        self.older = pa.array([], pa.string())    # the older ids, in the order of ``hashes``

    def add(self, vid: str) -> None:
        if vid in self:
            return
        self.recent.add(vid)
        # The set may hold an eighth of what moved before it: a move copies the array, so the
        # moves of a job cost about 9 copies of its ids in all, not one per RECENT ids.
        if len(self.recent) >= max(self.RECENT, len(self.older) // 8):
            self._move()

    def _move(self) -> None:
        new = list(self.recent)
        hashes = np.concatenate([self.hashes, np.fromiter(map(_hash, new), np.int64, len(new))])
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.older = pa.concat_arrays([self.older, pa.array(new, pa.string())]).take(order)
        self.recent = set()

    def __contains__(self, vid: str) -> bool:
        if vid in self.recent:
            return True
        h, hashes = _hash(vid), self.hashes
        i = int(hashes.searchsorted(h))
        while i < len(hashes) and hashes[i] == h:  # every id of that hash (one, in practice)
            if self.older[i].as_py() == vid:
                return True
            i += 1
        return False

    def __len__(self) -> int:
        return len(self.recent) + len(self.older)

    def array(self) -> pa.Array:
        """Every id (in no particular order)."""
        return pa.concat_arrays([self.older, pa.array(list(self.recent), pa.string())])


class StoreWriter:
    """Joins segment rows into store rows (module docstring); ``store`` is a path, URI or
    ``FeatureStore``; ``settings`` the stream settings the rows are checked against."""

    def __init__(self, store, settings: dict[str, StreamSettings], run_id: str,
                 part_bytes: int = PART_MIB * 2**20, rows_per_file: int | None = None,
                 flush_every_s: float = 60.0):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.settings = settings
        self.run_id = run_id
        self.part_bytes = part_bytes
        self.rows_per_file = rows_per_file
        self.flush_every_s = flush_every_s
        self.held = collections.Counter()          # stream -> bytes of features held
        self.joiner = SegmentJoiner()
        # stream -> ids of the pairs committed or failed in this run (module docstring)
        self.finished: dict[str, FinishedIds] = collections.defaultdict(FinishedIds)
        self.rows: dict[str, list[dict]] = collections.defaultdict(list)
        self.failures: list[dict] = []
        self.last_flush = time.monotonic()
        self.written = collections.Counter()        # stream -> rows
        self.clips = 0
        self.failed = collections.Counter()         # error_type -> count
        self.warnings = 0
        self.files: list[str] = []
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)  # work of every segment that arrived

    # -- input ----------------------------------------------------------------------------------
    def consume(self, table: pa.Table) -> None:
        # The features stay in Arrow memory: each row's ``data`` is a zero-copy buffer that the
        # joiner copies once into the video's array, which goes to Arrow whole when flushed.
        data = table.column("data")
        for i, row in enumerate(table.drop_columns(["data"]).to_pylist()):
            value = data[i]
            row["data"] = value.as_buffer() if value.is_valid else None
            key = (row["video_id"], row["stream"])
            if key[0] in self.finished[key[1]]:
                continue  # a retried task's duplicate of something already complete or failed
            if row["kind"] == "failure":
                self._fail(key, row)
                continue
            for stage in STAGES:  # a retried task's work counts too: it was spent
                self.stage_seconds[stage] += row.get(f"{stage}_s") or 0.0
            joined = self.joiner.add(row)
            if joined is not None:
                self._complete(joined)
        if time.monotonic() - self.last_flush > self.flush_every_s:
            self.flush()

    def _fail(self, key, row: dict, stage: str | None = None, error_type: str | None = None,
              message: str | None = None) -> None:
        self.joiner.discard(key)
        self.finished[key[1]].add(key[0])
        rec = {"video_id": key[0], "stream": key[1], "path": row.get("path"),
               "stage": stage or row.get("stage"), "error_type": error_type or row.get("error_type"),
               "message": message or row.get("message"), "run_id": self.run_id}
        self.failures.append(rec)
        self.failed[rec["error_type"]] += 1

    def _complete(self, joined: JoinedVideo) -> None:
        key, s = joined.key, self.settings[joined.key[1]]
        problem = joined.problem(s.clip_len, s.clip_stride, s.feature_dim)
        if problem is not None:
            self._fail(key, joined.first, *problem)
            return
        self.finished[key[1]].add(key[0])
        last, feats = joined.last, joined.features
        self.rows[key[1]].append({
            "video_id": key[0], "label": last["label"], "label_name": last["label_name"],
            "split": last["split"], "stream": key[1], "num_frames": joined.num_frames,
            "fps": last["fps"], "num_clips": len(feats), "padded": bool(last["padded"]),
            "warning": last["warning"], "features": feats, "spans": joined.spans})
        self.clips += len(feats)
        self.warnings += last["warning"] is not None
        self.held[key[1]] += feats.nbytes
        if (self.held[key[1]] >= self.part_bytes
                or (self.rows_per_file and len(self.rows[key[1]]) >= self.rows_per_file)):
            self._flush_stream(key[1])

    # -- output ---------------------------------------------------------------------------------
    def _flush_stream(self, stream: str) -> None:
        rows = self.rows.pop(stream, [])
        self.held.pop(stream, None)
        if not rows:
            return
        dim = self.settings[stream].feature_dim
        schema = feature_schema(dim)
        feats = features_to_arrow([r.pop("features") for r in rows], dim)
        spans = [r.pop("spans") for r in rows]
        small = pa.schema([f for f in schema if f.name != "features" and f.name not in SPAN_COLUMNS])
        table = pa.Table.from_pylist(rows, schema=small).append_column(schema.field("features"), feats)
        for field in SPAN_FIELDS:
            table = table.append_column(field, pa.array(
                [None if s is None else s[field.name] for s in spans], field.type))
        self.store.check_lock()
        self.files.append(write_part(self.store.stream_dir(stream), table))
        self.written[stream] += len(rows)
        del table, feats, rows, spans
        release_arrow_memory()

    def flush(self) -> None:
        for stream in list(self.rows):
            self._flush_stream(stream)
        if self.failures:
            table = pa.Table.from_pylist(self.failures, schema=FAILURE_SCHEMA)
            self.store.check_lock()
            write_part(self.store.failures_dir, table)
            self.failures = []
        self.last_flush = time.monotonic()

    def _unfinished(self, items: pa.Table) -> pa.Table:
        """The rows of the work items (a table with video_id and stream) not finished."""
        if items.num_rows == 0:
            return items
        done = np.zeros(items.num_rows, bool)
        for stream, ids in self.finished.items():
            if len(ids):
                done |= (pc.equal(items.column("stream"), stream).to_numpy(zero_copy_only=False)
                         & pc.is_in(items.column("video_id"), value_set=ids.array())
                         .to_numpy(zero_copy_only=False))
        return items.filter(pa.array(~done))

    def unfinished(self, items: pa.Table) -> pa.Table:
        """The work items neither written nor failed yet; their partial segments are dropped,
        as a rerun of the pipeline sends them all again."""
        todo = self._unfinished(items)
        for vid, stream in zip(todo.column("video_id").to_pylist(),
                               todo.column("stream").to_pylist()):
            self.joiner.discard((vid, stream))
        return todo

    def close(self, expected: pa.Table | None = None) -> None:
        """Flush everything; (video, stream) pairs still incomplete, or ``expected`` work items
        the pipeline never returned anything for, become failure rows."""
        for key, first, have in self.joiner.incomplete():
            self._fail(key, first, "assemble", "IncompleteVideo",
                       f"{first['path']}: the pipeline ended with {have}; rerun to retry")
        if expected is not None:
            for it in self._unfinished(expected).to_pylist():
                self._fail((it["video_id"], it["stream"]), it, "assemble", "IncompleteVideo",
                           f"{it.get('path')}: the pipeline returned nothing for it; rerun to retry")
        self.flush()

    @property
    def num_done(self) -> int:
        return sum(self.written.values()) + sum(len(r) for r in self.rows.values())

    @property
    def num_failed(self) -> int:
        return sum(self.failed.values())
