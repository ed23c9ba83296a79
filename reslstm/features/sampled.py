"""Training inputs read straight from the store: where each video's row is, which reads make
a split, and the T clips x_t = a_{sigma(t)} taken while reading.

Nothing here shuffles raw features. The index (``locate``, one pass over the small columns of
each stream's files) records for every video and stream the file, the row group and the row it
sits in. ``plan_reads`` turns the ids of one split into read plans: the videos ordered by where
their first stream's row is, cut at row-group boundaries into plans of about ``max_rows``
videos. One plan reads each row group it needs once (its first stream's groups, and the groups
of the second stream that hold the same videos), keeps only its videos' rows and samples them
(``read_sampled``): both streams of a video are sampled at the same clips, after truncating to
the shorter one (``sampling.sample_pair``'s rule), so a plan's output is already the
fixed-size model input, T x d_f per video and stream, never the raw K_v x d_f sequences.

What a plan reads: its own row groups of the first stream, plus every row group of the second
stream holding one of its videos. The writer commits both streams of a video close in time, so
these groups largely overlap and each is read about once or twice per split; a store whose
streams were written in unrelated orders reads more (each plan touches more groups) but never
holds more than its own groups and output at once.

No Ray here: ``distributed.train.data`` runs the plans as Ray Data read tasks.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reslstm.sampling import temporal_sample

from .schema import StoreError, features_to_numpy
from .store import FeatureStore

INDEX_COLUMNS = ["video_id", "label", "label_name", "split", "num_clips"]
BLOCK_ROWS = 256      # videos per output block of a plan
PLAN_ROWS = 1024      # videos per plan, unless one row group holds more
READ_THREADS = 16     # files whose small columns are read at once (object storage: latency)


@dataclasses.dataclass
class StreamLocations:
    """Where the rows of one stream are: ``files`` (paths on the store's filesystem) and, per
    video (``ids``, sorted), its ``label``, ``clips`` (K_v), ``file`` (index into ``files``),
    ``group`` (row group in that file) and ``row`` (row within the group)."""

    files: list[str]
    ids: np.ndarray
    label: np.ndarray
    clips: np.ndarray
    file: np.ndarray
    group: np.ndarray
    row: np.ndarray

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Index into this object's arrays of each of ``ids`` (all must be present)."""
        pos = np.searchsorted(self.ids, ids)
        if len(ids) and (pos.max() >= len(self.ids) or (self.ids[pos] != ids).any()):
            raise KeyError("some ids are not in this stream")
        return pos


def _file_index(store: FeatureStore, path: str, i: int) -> pa.Table:
    """The index columns of one part file, with each row's (file, group, row)."""
    with store.root.filesystem.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        parts = []
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=INDEX_COLUMNS)
            n = t.num_rows
            parts.append(t.append_column("file", pa.array(np.full(n, i, np.int32)))
                         .append_column("group", pa.array(np.full(n, g, np.int32)))
                         .append_column("row", pa.array(np.arange(n, dtype=np.int32))))
    if not parts:
        return _empty_index()
    return pa.concat_tables(parts, promote_options="permissive")


def _empty_index() -> pa.Table:
    return pa.table({"video_id": pa.array([], pa.string()), "label": pa.array([], pa.int32()),
                     "label_name": pa.array([], pa.string()), "split": pa.array([], pa.string()),
                     "num_clips": pa.array([], pa.int32()), "file": pa.array([], pa.int32()),
                     "group": pa.array([], pa.int32()), "row": pa.array([], pa.int32())})


def locate(store: FeatureStore, stream: str) -> tuple[pa.Table, StreamLocations]:
    """One pass over the small columns of a stream's files: (each row's label, label_name and
    split, where each video's row is), both in the order of the sorted ids. Raises
    ``StoreError`` when the stream has no files."""
    files = store.stream_files(stream)
    if not files:
        store.dataset(stream)  # raises the error that names the command to run
    with ThreadPoolExecutor(min(READ_THREADS, len(files))) as pool:
        tables = list(pool.map(lambda a: _file_index(store, *a), zip(files, range(len(files)))))
    table = pa.concat_tables(tables, promote_options="permissive")
    del tables
    # Sorted by Arrow (UTF-8 byte order is code point order, as NumPy's), ids made NumPy
    # strings a chunk at a time: no Python string per video held at once.
    order = pc.sort_indices(table.column("video_id")).to_numpy()
    ids = _as_str(table.column("video_id").take(order))
    col = lambda name, dtype: table.column(name).to_numpy()[order].astype(dtype)  # noqa: E731
    return table.select(["label", "label_name", "split"]).take(order), StreamLocations(
        files, ids, col("label", np.int64), col("num_clips", np.int64), col("file", np.int32),
        col("group", np.int32), col("row", np.int32))


def _as_str(values: pa.Array | pa.ChunkedArray, chunk: int = 65_536) -> np.ndarray:
    """Arrow strings as a NumPy str array, ``chunk`` Python strings at a time."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    width = pc.max(pc.utf8_length(values)).as_py() or 1
    out = np.empty(len(values), f"<U{width}")
    for a in range(0, len(values), chunk):
        out[a:a + chunk] = values.slice(a, chunk).to_numpy(zero_copy_only=False)
    return out


@dataclasses.dataclass
class ReadPlan:
    """The videos one read task samples, in output order, with where each stream's row is."""

    video_id: np.ndarray          # (n,) str
    label: np.ndarray             # (n,) int64
    clips: np.ndarray             # (n,) int64: K_v after truncating to the shorter stream
    where: dict[str, np.ndarray]  # stream -> (n, 3) int32: file, group, row

    def __len__(self) -> int:
        return len(self.video_id)

    def groups(self, stream: str) -> list[tuple[int, int]]:
        """The (file, group) pairs this plan reads of ``stream``."""
        return sorted({(int(f), int(g)) for f, g, _ in self.where[stream]})


def plan_reads(locations: Mapping[str, StreamLocations], ids: Sequence[str],
               max_rows: int = PLAN_ROWS) -> list[ReadPlan]:
    """Read plans for the videos ``ids`` (each present in every stream of ``locations``): the
    videos in the order of their first stream's rows, cut at that stream's row-group boundaries
    into plans of at most ``max_rows`` videos (a larger row group is one plan)."""
    ids = np.sort(np.asarray(ids, dtype=str))
    streams = list(locations)
    if not len(ids):
        return []
    pos = {s: locations[s].positions(ids) for s in streams}
    where = {s: np.stack([locations[s].file[p], locations[s].group[p], locations[s].row[p]], 1)
             for s, p in pos.items()}
    first = where[streams[0]]
    order = np.lexsort((first[:, 2], first[:, 1], first[:, 0]))
    clips = np.min([locations[s].clips[p] for s, p in pos.items()], axis=0)
    label = locations[streams[0]].label[pos[streams[0]]]
    keys = first[order, :2]
    starts = [0, *(np.flatnonzero((np.diff(keys, axis=0) != 0).any(axis=1)) + 1).tolist()]
    cuts, size = [0], 0
    for a, b in zip(starts, [*starts[1:], len(order)]):  # one row group: order[a:b]
        if size and size + (b - a) > max_rows:
            cuts.append(a)
            size = 0
        size += b - a
    cuts.append(len(order))
    plans = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        idx = order[a:b]
        plans.append(ReadPlan(ids[idx], label[idx], clips[idx],
                              {s: w[idx] for s, w in where.items()}))
    return plans


def _read_groups(store: FeatureStore, files: list[str], groups: list[tuple[int, int]]
                 ) -> dict[tuple[int, int], tuple[list, list[np.ndarray]]]:
    """{(file, group): (video ids, per-row (K_v, d_f) views)} of the groups a plan reads."""
    out = {}
    for f in sorted({f for f, _ in groups}):
        try:
            fh = store.root.filesystem.open_input_file(files[f])
        except FileNotFoundError:
            raise StoreError(f"{files[f]}: gone; the store changed since it was indexed (a "
                             "compaction or another job?): start the run again") from None
        with fh:
            pf = pq.ParquetFile(fh)
            for g in sorted(g for ff, g in groups if ff == f):
                t = pf.read_row_group(g, columns=["video_id", "features"])
                out[(f, g)] = (t.column("video_id").to_pylist(),
                               features_to_numpy(t.column("features").combine_chunks()))
    return out


def read_sampled(store: FeatureStore, files: Mapping[str, list[str]], plan: ReadPlan, T: int,
                 block_rows: int = BLOCK_ROWS) -> Iterator[dict[str, np.ndarray]]:
    """The model inputs of ``plan``: blocks of at most ``block_rows`` videos, each
    {video_id, label, <stream>: (n, T, d_f) float32 per stream}, x_t = a_{sigma(t)} over the
    first ``plan.clips`` clips of every stream (the same clips in both)."""
    rows = {s: _read_groups(store, files[s], plan.groups(s)) for s in plan.where}
    sigma = {int(k): temporal_sample(int(k), T) for k in np.unique(plan.clips)}
    for start in range(0, len(plan), block_rows):
        sl = slice(start, start + block_rows)
        out = {"video_id": plan.video_id[sl].astype(object), "label": plan.label[sl]}
        for s, where in plan.where.items():
            x = []
            for vid, k, (f, g, r) in zip(plan.video_id[sl], plan.clips[sl], where[sl]):
                ids, views = rows[s][(int(f), int(g))]
                if ids[r] != vid:
                    raise StoreError(f"{files[s][f]}: row {r} of row group {g} is {ids[r]!r}, "
                                     f"expected {vid!r}; the store changed since it was indexed")
                x.append(views[r][sigma[int(k)]])
            out[s] = np.stack(x).astype(np.float32, copy=False)
        yield out
