"""``FeatureStore``: one feature store, local or on object storage, and everything that writes it.

Layout of a store (a directory or a prefix: any ``storage.resolve`` path or URI)::

    STORE/metadata.json             settings per stream (extractor, weights id, clips, crops, flow)
    STORE/rgb/part-*.parquet        one row per video: the RGB clip features
    STORE/flow/part-*.parquet       one row per video: the optical-flow clip features
    STORE/failures/part-*.parquet   one row per (video, stream) that could not be extracted

Each stream directory is a plain Parquet dataset, readable by pyarrow, pandas or DuckDB without
this package. The object owns what a writer needs: the settings check and reset of streams
(``prepare``), one writer at a time (``lock``) and the sets of written and failed video ids,
read once per object as Arrow arrays (``written_id_array`` / ``failed_id_array``, used by
``plan``; ``written_ids`` / ``failed_ids`` as Python sets).

The promises, and how each is kept on a local disk and on object storage (S3, GCS), which has
neither rename nor file locks, but makes an object visible only once its upload completed and
lists strongly consistently (S3 since 2020, GCS always: a listing made after an upload
completed shows it):

- Files appear only when complete. On a disk a part file is written under a hidden name, fsynced
  and renamed. On object storage it is built in memory and uploaded once, under its final,
  unique, time-ordered name, only after it was written without an error
  (``storage.Location.open_output``); a job killed during the upload leaves no object (an
  unfinished multipart upload is invisible; a bucket lifecycle rule aborts such uploads).
- A rerun never duplicates a row. The plan skips every video whose id is in a committed part
  file (``written_ids``, read from a listing made under the lock); within a run the writer
  commits each (video, stream) once, ignoring segments that retried tasks send twice. A killed
  job leaves only complete files, so the rerun's listing shows exactly what was committed.
- Two writers are refused. On a disk: an ``fcntl`` lock on ``STORE/.lock``, released by the OS
  when the process dies. On object storage: a lease. Each writer puts a marker
  ``STORE/_lock/<time>-<id>.json`` (host, PID, expiry), then lists the markers, and proceeds
  only if its own is the only live one; otherwise it deletes its marker and, after two more
  tries a moment apart, is refused. Of two writers, the one that listed last saw the other's
  marker (it was put before the other listed), so at most one proceeds. The holder rewrites
  its expiry every ``LEASE_S / 4`` seconds; it stops committing (``check_lock``) when it could
  not renew for ``LEASE_S / 2``, before another job may take over. A marker is stale once its
  expiry passed, or at once when its writer ran on this host and has ended (a killed job
  rerun on the same machine need not wait); stale markers are deleted by the next writer.
- Part files are about ``compaction.PART_MIB`` MiB: the writer flushes at that size (and at
  least once a minute), and a job ends by merging the small files it and earlier runs left
  (``compact``; ``features.compaction`` says how a reader sees each row once meanwhile, also
  when the job is killed mid-way).
- Settings mismatches are refused: under the lock, ``prepare`` compares the requested settings
  with metadata.json (one object, replaced whole) for every stream that holds rows or failures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reslstm import storage
from reslstm.errors import ConfigError
from reslstm.fusion import STREAMS

from . import compaction
from .lease import Lease
from .schema import (FAILURE_SCHEMA, FAILURES_DIR, METADATA_FILE, STORE_FORMAT_VERSION, StoreError,
                     StreamSettings)

LOCK_FILE = ".lock"
LOCK_DIR = "_lock"
LEASE_S = 300.0  # a lease marker of a killed job stops counting after this long


def write_part(directory, table: pa.Table, name: str | None = None) -> str:
    """Write ``table`` as ``directory/<name>`` (default: a new time-ordered part name) so that
    it appears only when complete; returns the file's path on its filesystem."""
    # Time-ordered names: readers that must prefer the latest record sort by name.
    name = name or f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    target = storage.resolve(directory).join(name)
    with target.open_output() as f:
        pq.write_table(table, f)
    return target.path


def read_column(files: Sequence[str], column: str, filesystem, type_: pa.DataType,
                threads: int | None = None) -> pa.Array:
    """One column of Parquet ``files``, in order, read ``threads`` files at a time, each file's
    metadata dropped once read. A pyarrow dataset over the same files keeps every file's
    metadata until the scan ends: 5 120 part files of a killed job's store took +238 MiB to
    read their ids that way, +32 MiB this way. Threads: by default 16 on object storage (each
    read waits on a request), one per CPU on a local disk, where each read is CPU work and more
    threads only contend (2 561 files of 50 rows on 2 CPUs: 1.0 s with 16 threads, 0.5-0.65 s
    with 2); each file is decoded on its own thread alone."""
    if threads is None:
        local = isinstance(filesystem, pafs.LocalFileSystem)
        threads = max(1, min(16, os.cpu_count() or 1)) if local else 16

    def one(path: str) -> pa.ChunkedArray:
        with filesystem.open_input_file(path) as f:
            return pq.ParquetFile(f).read(columns=[column], use_threads=False).column(column)

    with ThreadPoolExecutor(threads) as pool:
        chunks = [c for col in pool.map(one, files) for c in col.chunks]
    return pa.chunked_array(chunks, type_).combine_chunks()


def _is_in(values: pa.ChunkedArray | pa.Array, ids: pa.Array) -> np.ndarray:
    """(N,) bool: which ``values`` are among ``ids``."""
    return pc.is_in(values, value_set=ids).to_numpy(zero_copy_only=False)


def as_store(store) -> "FeatureStore":
    """``store`` as a ``FeatureStore`` (paths and URIs are opened; a store passes through)."""
    return store if isinstance(store, FeatureStore) else FeatureStore(store)


def remove_temporaries(directory) -> int:
    """Delete the hidden ``.*.tmp`` files a killed writer left in ``directory``; how many."""
    d = storage.resolve(directory)
    files = d.list(".tmp", hidden=True)
    for f in files:
        d.filesystem.delete_file(f)
    return len(files)


class FeatureStore:
    """A feature store at ``root`` (path or URI); see the module docstring."""

    def __init__(self, root):
        self.root = storage.resolve(root)
        self._written: dict[str, set[str]] | None = None
        self._failures: pa.Table | None = None
        self._lease: Lease | None = None

    def __str__(self) -> str:
        return self.root.uri

    # -- layout -------------------------------------------------------------------------------
    def stream_dir(self, stream: str) -> storage.Location:
        if stream not in STREAMS:
            raise ConfigError(f"unknown stream {stream!r}; expected one of {STREAMS}")
        return self.root.join(stream)

    @property
    def failures_dir(self) -> storage.Location:
        return self.root.join(FAILURES_DIR)

    def stream_files(self, stream: str) -> list[str]:
        """The committed Parquet files of one stream (paths on ``self.root.filesystem``)."""
        return compaction.visible(self.stream_dir(stream))

    def has_stream(self, stream: str) -> bool:
        return bool(self.stream_files(stream))

    def dataset(self, stream: str) -> pads.Dataset:
        files = self.stream_files(stream)
        if not files:
            raise StoreError(f"{self.stream_dir(stream)}: no {stream} features in the store; "
                             f"run jobs/extract.py --streams {stream} --out {self.root} first")
        fs = self.root.filesystem
        # The schema from the first and the last part file: a store written before the clip-span
        # columns and extended since reads them as null for its older rows (names are time
        # ordered, so the last file is the newest), instead of dropping them for all rows.
        ends = {files[0], files[-1]}
        schema = pa.unify_schemas([pq.read_schema(f, filesystem=fs) for f in sorted(ends)])
        return pads.dataset(files, format="parquet", filesystem=fs, schema=schema)

    # -- metadata -----------------------------------------------------------------------------
    def metadata_doc(self) -> dict:
        """metadata.json as it is written ({} for a new store)."""
        loc = self.root.join(METADATA_FILE)
        if not loc.exists():
            return {}
        try:
            return json.loads(loc.read_text())
        except ValueError as exc:
            raise StoreError(f"{loc}: unreadable store metadata ({exc}); fix or remove the file") from exc

    def read_metadata(self) -> dict[str, StreamSettings]:
        """Settings per stream recorded in ``metadata.json`` ({} for a new store)."""
        doc = self.metadata_doc()
        try:
            return {s: StreamSettings(**v) for s, v in doc.get("streams", {}).items()}
        except TypeError as exc:
            raise StoreError(f"{self.root.join(METADATA_FILE)}: unreadable store metadata ({exc}); "
                             "fix or remove the file") from exc

    def read_metadata_extra(self) -> dict:
        """The fields of metadata.json beyond the stream settings (e.g. the manifest path)."""
        return {k: v for k, v in self.metadata_doc().items()
                if k not in ("streams", "format_version")}

    def write_metadata(self, streams: Mapping[str, StreamSettings], **extra) -> str:
        """Write ``metadata.json`` atomically (settings per stream plus ``extra`` fields)."""
        doc = {"format_version": STORE_FORMAT_VERSION,
               "streams": {s: dataclasses.asdict(v) for s, v in sorted(streams.items())}, **extra}
        loc = self.root.join(METADATA_FILE)
        loc.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return loc.path

    # -- which videos it holds (read once per object) -----------------------------------------
    def written_id_array(self, stream: str) -> pa.Array:
        """video_ids that have a row in ``stream``, as Arrow strings: tens of bytes per id, so
        a plan of 100k+ videos holds no Python set of them."""
        if self._written is None:
            self._written = {}
        if stream not in self._written:
            self._written[stream] = read_column(self.stream_files(stream), "video_id",
                                                self.root.filesystem, pa.string())
        return self._written[stream]

    def forget_ids(self) -> None:
        """Drop the ids and failures read so far; they are read again when next asked for (a
        job plans with them once and should not hold them while it runs)."""
        self._written, self._failures = None, None

    def written_ids(self, stream: str) -> set[str]:
        """video_ids that have a row in ``stream``."""
        return set(self.written_id_array(stream).to_pylist())

    def failures(self, current_only: bool = True) -> pa.Table:
        """The failures table. ``current_only``: drop failures of (video, stream) pairs that a
        later run extracted (``--retry-failed``) and keep the latest failure of each pair."""
        if self._failures is None:
            files = compaction.visible(self.failures_dir)
            self._failures = (pads.dataset(files, format="parquet", schema=FAILURE_SCHEMA,
                                           filesystem=self.root.filesystem).to_table()
                              if files else FAILURE_SCHEMA.empty_table())
        table = self._failures
        if not current_only or table.num_rows == 0:
            return table
        vids, streams = table.column("video_id"), table.column("stream")
        current = np.zeros(table.num_rows, bool)
        for stream in STREAMS:  # a failure of a pair written since is not current
            current |= (pc.equal(streams, stream).to_numpy(zero_copy_only=False)
                        & ~_is_in(vids, self.written_id_array(stream)))
        latest: dict[tuple[str, str], int] = {}
        for i in np.flatnonzero(current):  # files are read in name order; later rows win
            latest[(vids[i].as_py(), streams[i].as_py())] = int(i)
        return table.take(sorted(latest.values()))

    def failed_id_array(self, stream: str) -> pa.Array:
        """video_ids whose latest attempt on ``stream`` failed, as Arrow strings."""
        t = self.failures()
        return t.filter(pc.equal(t.column("stream"), stream)).column("video_id").combine_chunks()

    def failed_ids(self, stream: str) -> set[str]:
        """video_ids whose latest attempt on ``stream`` failed."""
        return set(self.failed_id_array(stream).to_pylist())

    def plan(self, rows: pa.Table | Sequence[dict], streams: Iterable[str],
             retry_failed: bool = False, order: np.ndarray | None = None
             ) -> tuple[pa.Table, int, int]:
        """Work items, the rows of ``rows`` (a table with ``video_id``) with a ``stream`` column,
        for the (video, stream) pairs not written yet, in the order of ``rows`` (or of the row
        indices ``order``) and ``streams``; plus how many pairs were skipped as written and as
        failed before (retried only with ``retry_failed``). Arrow throughout, and the items
        taken from ``rows`` in one pass: the plan of a Kinetics-size manifest costs about the
        manifest's own bytes, not a Python object per pair."""
        streams = list(streams)
        if not isinstance(rows, pa.Table):
            rows = pa.Table.from_pylist(list(rows))
        ids = rows.column("video_id")
        keep, done_n, failed_n = [], 0, 0
        # Each id array read once per stream: the plan is one vectorised pass, O(videos).
        for stream in streams:
            written = _is_in(ids, self.written_id_array(stream))
            failed = (np.zeros(len(ids), bool) if retry_failed
                      else _is_in(ids, self.failed_id_array(stream)) & ~written)
            done_n += int(written.sum())
            failed_n += int(failed.sum())
            keep.append(~(written | failed))
        todo = np.stack(keep, axis=1) if streams and len(ids) else np.zeros((0, 1), bool)
        if order is not None:
            todo = todo[order]
        video, stream = np.nonzero(todo)
        if order is not None:
            video = np.asarray(order)[video]
        names = pa.DictionaryArray.from_arrays(pa.array(stream, pa.int32()),
                                               pa.array(streams, pa.string()))
        items = rows.take(pa.array(video, pa.int64())).append_column(
            "stream", names.cast(pa.string()))
        return items, done_n, failed_n

    # -- preparing a run ----------------------------------------------------------------------
    def prepare(self, settings: Mapping[str, StreamSettings], overwrite: bool = False,
                **extra) -> None:
        """Check the requested settings against the store's and record them (``extra`` goes to
        metadata.json too, e.g. the manifest). A stream that holds rows or failures made with
        other settings is refused, unless ``overwrite``, which discards its rows and failures."""
        old = self.read_metadata()
        clashes = {s: old[s].differences(settings[s]) for s in settings if s in old}
        clashes = {s: d for s, d in clashes.items() if d and self._holds(s)}
        if clashes and not overwrite:
            detail = "; ".join(f"{s}: " + ", ".join(d) for s, d in clashes.items())
            raise StoreError(f"{self.root} was extracted with other settings ({detail}). Use "
                             "another --out, the same settings, or --overwrite to discard "
                             "those streams.")
        if overwrite:
            for s in settings:
                self.stream_dir(s).delete_dir()
            self._drop_failures(set(settings))
        self._remove_temporaries()
        for d in self._directories():  # what a compaction killed before its deletes left
            compaction.finish(d)
        self.write_metadata({**{s: v for s, v in old.items() if s not in settings}, **settings},
                            **extra)
        self.forget_ids()

    def _holds(self, stream: str) -> bool:
        return len(self.written_id_array(stream)) > 0 or stream in set(
            self.failures(current_only=False).column("stream").to_pylist())

    def _drop_failures(self, streams: set[str]) -> None:
        old = self.failures(current_only=False)
        files = self.failures_dir.list(".parquet")
        keep = old.filter(pc.invert(pc.is_in(old.column("stream"), pa.array(sorted(streams)))))
        if keep.num_rows:
            write_part(self.failures_dir, keep)
        for f in files:
            self.root.filesystem.delete_file(f)

    def _directories(self) -> list[storage.Location]:
        return [self.stream_dir(s) for s in STREAMS] + [self.failures_dir]

    def _remove_temporaries(self) -> int:
        return sum(remove_temporaries(d) for d in self._directories())

    def compact(self, target_bytes: int = compaction.PART_MIB * 2**20
                ) -> dict[str, compaction.Compacted]:
        """Merge the small part files of every stream and of the failures table into files of
        about ``target_bytes`` (``features.compaction``); the caller holds the lock."""
        names = [s for s in STREAMS if self.stream_dir(s).exists()] + [FAILURES_DIR]
        done = {name: compaction.compact(self.root.join(name), target_bytes, self.check_lock)
                for name in names}
        self.forget_ids()
        return done

    # -- one writer at a time -----------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store for one writer (see the module docstring); raises ``StoreError`` when
        another job holds it."""
        busy = (f"{self.root} is being written by another extraction job; wait for it or use "
                "another --out")
        if self.root.local:
            import fcntl

            self.root.mkdir()
            with open(os.path.join(self.root.path, LOCK_FILE), "w") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreError(busy) from None
                yield
            return
        with Lease(self.root.join(LOCK_DIR), busy, LEASE_S) as lease:
            self._lease = lease
            try:
                yield
            finally:
                self._lease = None

    def check_lock(self) -> None:
        """Raise ``StoreError`` when this object holds an object-storage lease that it could not
        renew in time: another job may own the store by now, so nothing more may be committed."""
        if self._lease is not None:
            self._lease.check()

    def __getstate__(self) -> dict:
        # Ray workers get the location and ids, never the lease (its thread stays here).
        return {**self.__dict__, "_lease": None}
