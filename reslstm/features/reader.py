"""Reading a feature store: rows of a stream, its failures, the index training starts from, and
a row-by-row check.

All functions take the store as a path, a URI or a ``FeatureStore``. ``read_index`` reads only
the small columns (no features) to learn the classes, the splits and which videos every
requested stream has; ``verify_store`` reads everything and lists every problem.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reslstm.memory import release_memory

from .sampled import StreamLocations, locate
from .schema import METADATA_FILE, SPAN_COLUMNS, StoreError, features_to_numpy, span_columns
from .store import FeatureStore, as_store


def stream_files(store, stream: str) -> list[str]:
    """The committed Parquet files of one stream (for ``ray.data.read_parquet``)."""
    return as_store(store).stream_files(stream)


def has_stream(store, stream: str) -> bool:
    return as_store(store).has_stream(stream)


def read_stream(store, stream: str, splits: Iterable[str] | None = None,
                columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of one stream (optionally only some splits / columns) as one Arrow table."""
    import pyarrow.dataset as pads

    filt = pads.field("split").isin(list(splits)) if splits is not None else None
    return as_store(store).dataset(stream).to_table(columns=list(columns) if columns else None,
                                                  filter=filt)


def written_ids(store, stream: str) -> set[str]:
    """video_ids that already have a row in ``stream``."""
    return as_store(store).written_ids(stream)


def read_failures(store, current_only: bool = True) -> pa.Table:
    """The failures table (``FeatureStore.failures``)."""
    return as_store(store).failures(current_only)


def failed_ids(store, stream: str) -> set[str]:
    """video_ids whose latest attempt on ``stream`` failed."""
    return as_store(store).failed_ids(stream)


# ---------------------------------------------------------------------------------------------
# The index training starts from
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class StoreIndex:
    """What the driver knows about a store before reading any features."""

    store: str
    streams: tuple[str, ...]
    feature_dim: int
    label_names: list[str]
    video_ids: dict[str, np.ndarray]  # split -> sorted ids (NumPy str) present in every stream
    # stream -> sorted ids (NumPy str) that other streams have and it lacks
    missing: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # stream -> where each video's row is (``sampled.locate``), for reading training inputs
    locations: dict[str, StreamLocations] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def count(self, split: str) -> int:
        return len(self.video_ids.get(split, ()))


def _feature_dim(store: FeatureStore, stream: str) -> int:
    ftype = store.dataset(stream).schema.field("features").type
    try:
        return int(ftype.value_type.list_size)
    except AttributeError:
        raise StoreError(f"{store.stream_dir(stream)}: column 'features' has type {ftype}, expected "
                            "list<fixed_size_list<float32, d_f>>; re-extract the features") from None


def _labels_named(store: FeatureStore, stream: str, table: pa.Table, names: dict[int, str]) -> None:
    """Add the (label, label_name) pairs of ``table`` to ``names``; a label named two ways is a
    ``StoreError``. Works on the distinct pairs (one per class), not on every row."""
    pairs = table.group_by(["label", "label_name"]).aggregate([])
    for i, n in zip(pairs.column("label").to_pylist(), pairs.column("label_name").to_pylist()):
        if names.setdefault(int(i), n) != n:
            raise StoreError(f"{store.stream_dir(stream)}: label {i} is named both "
                             f"{names[int(i)]!r} and {n!r}")


def read_index(store, streams: Sequence[str]) -> StoreIndex:
    """Index the store for ``streams``: classes, splits, ids that every stream has, d_f.

    The ids stay in NumPy string arrays (sorted) from the files' small columns to the result:
    no Python object per video, so the driver holds tens of bytes per video and stream.

    Raises ``features.StoreError`` naming the stream directory when a stream is missing (with
    the command that extracts it), when a stream holds a video twice, when the streams disagree
    on a video's label or on d_f.
    """
    streams, store = tuple(streams), as_store(store)
    located = {}
    for s in streams:
        located[s] = locate(store, s)
        # Reading thousands of part files' small columns leaves freed pages in the allocators
        # (about 35 MiB per stream at 128k videos in 2 560 files); give them back.
        release_memory()
    names: dict[int, str] = {}
    for s, (table, loc) in located.items():
        dupes = np.unique(loc.ids[1:][loc.ids[1:] == loc.ids[:-1]])
        if len(dupes):
            raise StoreError(
                f"{store.stream_dir(s)}: {len(dupes)} video(s) appear more than once, e.g. "
                f"{dupes[:3].tolist()}; remove the duplicate part files or re-extract into a new "
                "store")
        _labels_named(store, s, table, names)
    # Set operations on the sorted ids by binary search: no concatenated or re-sorted copies.
    first_ids = located[streams[0]][1].ids
    common = first_ids[np.logical_and.reduce(
        [_member(first_ids, located[s][1].ids) for s in streams[1:]], initial=True)]
    missing = {}
    for s, (_, loc) in located.items():
        lacking = [other.ids[~_member(other.ids, loc.ids)]
                   for t, (_, other) in located.items() if t != s]
        missing[s] = functools.reduce(np.union1d, lacking, np.zeros(0, loc.ids.dtype))
    if len(streams) > 1:
        first, second = (located[s][1] for s in streams[:2])
        bad = common[first.label[first.positions(common)] != second.label[second.positions(common)]]
        if len(bad):
            raise StoreError(f"{store}: the rgb and flow rows of {len(bad)} video(s) carry "
                             f"different labels, e.g. {bad[:3].tolist()}")
    dims = {s: _feature_dim(store, s) for s in streams}
    if len(set(dims.values())) > 1:
        raise StoreError(f"{store}: streams have different feature sizes {dims}; two-stream "
                         "models need one d_f (extract both streams with matching extractors)")
    num_classes = max(names) + 1 if names else 0
    label_names = [names.get(i, f"class_{i}") for i in range(num_classes)]
    table, loc = located[streams[-1]]  # rows in the order of loc.ids (``locate``)
    split = pc.dictionary_encode(table.column("split")).combine_chunks()  # codes, no str per row
    code = split.indices.to_numpy(zero_copy_only=False)[loc.positions(common)]
    by_split = {name: common[code == i] for i, name in enumerate(split.dictionary.to_pylist())
                if (code == i).any()}
    index = StoreIndex(str(store), streams, next(iter(dims.values())), label_names, by_split,
                       {s: m for s, m in missing.items() if len(m)},
                       {s: where for s, (_, where) in located.items()})
    del located, table, split, code
    release_memory()
    return index


def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For sorted ``a`` and sorted unique ``b``: whether each element of ``a`` is in ``b``."""
    if not len(b):
        return np.zeros(len(a), bool)
    pos = np.searchsorted(b, a)
    pos[pos == len(b)] = 0
    return b[pos] == a

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


def verify_store(store, manifest: pa.Table | None = None) -> VerifyReport:
    """Check every row of every stream: finite features of the recorded width, ``num_clips``
    consistent with ``num_frames`` and the clip settings, one row per (video, stream), and, given
    the manifest, that each of its videos is either extracted or recorded as a failure."""
    from reslstm.sampling import num_clips as expected_clips

    report = VerifyReport()
    store = as_store(store)
    settings = store.read_metadata()
    if not settings:
        report.problems.append(f"{store.root.join(METADATA_FILE)}: missing; not a feature store")
        return report
    failures = store.failures()
    fail_pairs = set(zip(failures.column("video_id").to_pylist(), failures.column("stream").to_pylist()))
    wanted = set(manifest.column("video_id").to_pylist()) if manifest is not None else None
    for stream, s in sorted(settings.items()):
        seen: set[str] = set()
        n = 0
        for path in store.stream_files(stream):
            with store.root.filesystem.open_input_file(path) as fh:
                batches = list(pq.ParquetFile(fh).iter_batches(batch_size=256))
            for batch in batches:
                ids = batch.column("video_id").to_pylist()
                frames = batch.column("num_frames").to_pylist()
                clips = batch.column("num_clips").to_pylist()
                streams = batch.column("stream").to_pylist()
                feats = features_to_numpy(batch.column("features"))
                spans = ([batch.column(c).to_pylist() for c in SPAN_COLUMNS]
                         if span_columns(batch.schema) else [[None] * batch.num_rows] * 4)
                width = batch.schema.field("features").type.value_type.list_size
                where = path.rsplit("/", 1)[-1]
                if width != s.feature_dim:
                    report.problems.append(f"{where}: features are {width}-d, metadata says {s.feature_dim}")
                for vid, nf, k, st, f, *span in zip(ids, frames, clips, streams, feats, *spans):
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
                    if span[0] is not None and _bad_spans(span, k):
                        report.problems.append(f"{tag}: clip spans {_bad_spans(span, k)}")
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


def _bad_spans(span: list, clips: int) -> str | None:
    """What is wrong with a row's clip spans (first, last, start, end lists), or None."""
    first, last, start, end = span
    if any(v is None or len(v) != clips for v in span):
        return f"do not list its {clips} clips"
    if any(a > b for a, b in zip(first, last)) or any(a >= b for a, b in zip(start, end)):
        return "end before they start"
    return None
