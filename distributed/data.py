"""Feature store -> Ray Data datasets of fixed-length (T, d_f) inputs, one per split.

Each row of a built dataset is one video: ``video_id`` (str), ``label`` (int64) and, for each
stream the model reads, a ``(T, d_f)`` float32 tensor column named after the stream (``rgb``,
``flow``). The T clips are x_t = a_{sigma(t)} (``sampling.temporal_sample``): deterministic,
so every epoch, worker and rerun sees the same inputs.

Two-stream inputs (mid and late fusion) pair the two streams of a video by ``video_id``: the
rows of both streams (reduced to the videos both have) are unioned and grouped by
``video_id``, and each group of two rows becomes one paired row. (``Dataset.join`` would need
polars, which the project does not depend on; ``zip`` after sorting relies on block order, which
Ray Data does not guarantee.) A flow sequence has one frame fewer than its RGB video and may have
one clip fewer: the two clip sequences are truncated to the shorter (``fusion.align_clips``)
before sampling, so both inputs are taken at the same clips.

``build_datasets`` materializes every split before returning: Ray Data tasks need CPUs, and
once the trainer's workers hold them (2 workers on 2 cores) a lazy read would wait forever.
The driver-side index (``read_index``) reads only the small columns with pyarrow, to learn the
classes, the splits and which videos both streams have.

Python API: ``read_index(store, streams) -> StoreIndex``; ``build_datasets(store, streams, T,
splits) -> {split: MaterializedDataset}``; ``pca_sample(ds, stream, max_vectors, seed)``; and
the pure ``sample_video`` / ``sample_pair`` that define each row.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.context import ShuffleStrategy

from reslstm import features as fs
from reslstm.fusion import align_clips
from reslstm.sampling import temporal_sample

SPLITS = ("train", "val", "test")
INDEX_COLUMNS = ["video_id", "label", "label_name", "split", "num_clips"]


@dataclass
class StoreIndex:
    """What the driver knows about a store before reading any features."""

    store: str
    streams: tuple[str, ...]
    feature_dim: int
    label_names: list[str]
    video_ids: dict[str, list[str]]  # split -> sorted ids present in every stream
    missing: dict[str, list[str]] = field(default_factory=dict)  # stream -> ids it lacks

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def count(self, split: str) -> int:
        return len(self.video_ids.get(split, []))


def _feature_dim(store, stream: str) -> int:
    files = fs.stream_files(store, stream)
    ftype = pq.read_schema(files[0]).field("features").type
    try:
        return int(ftype.value_type.list_size)
    except AttributeError:
        raise fs.StoreError(f"{files[0]}: column 'features' has type {ftype}, expected "
                            "list<fixed_size_list<float32, d_f>>; re-extract the features") from None


def read_index(store, streams: Sequence[str]) -> StoreIndex:
    """Index the store for ``streams``: classes, splits, ids that every stream has, d_f.

    Raises ``features.StoreError`` naming the stream directory when a stream is missing (with
    the command that extracts it), when a stream holds a video twice, when the streams disagree
    on a video's label or on d_f.
    """
    streams = tuple(streams)
    tables = {s: fs.read_stream(store, s, columns=INDEX_COLUMNS) for s in streams}
    names: dict[int, str] = {}
    labels: dict[str, dict[str, int]] = {}
    split_of: dict[str, str] = {}
    for s, t in tables.items():
        ids = t.column("video_id").to_pylist()
        dupes = [v for v, n in Counter(ids).items() if n > 1]
        if dupes:
            raise fs.StoreError(
                f"{fs.stream_dir(store, s)}: {len(dupes)} video(s) appear more than once, e.g. "
                f"{dupes[:3]}; remove the duplicate part files or re-extract into a new store")
        lab = t.column("label").to_pylist()
        labels[s] = dict(zip(ids, lab))
        split_of.update(zip(ids, t.column("split").to_pylist()))
        for i, n in zip(lab, t.column("label_name").to_pylist()):
            if names.setdefault(int(i), n) != n:
                raise fs.StoreError(f"{fs.stream_dir(store, s)}: label {i} is named both "
                                    f"{names[int(i)]!r} and {n!r}")
    common = set.intersection(*(set(v) for v in labels.values()))
    missing = {s: sorted(set().union(*(set(v) for v in labels.values())) - set(labels[s]))
               for s in streams}
    if len(streams) > 1:
        bad = [v for v in common if labels[streams[0]][v] != labels[streams[1]][v]]
        if bad:
            raise fs.StoreError(f"{store}: the rgb and flow rows of {len(bad)} video(s) carry "
                                f"different labels, e.g. {sorted(bad)[:3]}")
    dims = {s: _feature_dim(store, s) for s in streams}
    if len(set(dims.values())) > 1:
        raise fs.StoreError(f"{store}: streams have different feature sizes {dims}; two-stream "
                            "models need one d_f (extract both streams with matching extractors)")
    num_classes = max(names) + 1 if names else 0
    label_names = [names.get(i, f"class_{i}") for i in range(num_classes)]
    by_split: dict[str, list[str]] = {}
    for v in sorted(common):
        by_split.setdefault(split_of[v], []).append(v)
    return StoreIndex(str(store), streams, next(iter(dims.values())), label_names, by_split,
                      {s: m for s, m in missing.items() if m})


# ---------------------------------------------------------------------------------------------
# Pure sampling (no Ray): what every dataset row holds
# ---------------------------------------------------------------------------------------------

def sample_video(clips: np.ndarray, T: int) -> np.ndarray:
    """(K_v, d_f) clip features -> (T, d_f): rows sigma(1..T) (0-based ``temporal_sample``)."""
    return clips[temporal_sample(len(clips), T)]


def sample_pair(rgb: np.ndarray, flow: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Both streams of one video -> two (T, d_f) arrays taken at the same clips, after
    truncating the two (K, d_f) sequences to the shorter one."""
    rgb, flow = align_clips(rgb, flow)
    index = temporal_sample(len(rgb), T)
    return rgb[index], flow[index]


class SampleClips:
    """Ray Data callable, one stream: Arrow batch of store rows (video_id, label, features)
    -> {video_id, label, <stream>: (N, T, d_f) float32}."""

    def __init__(self, stream: str, T: int, feature_dim: int):
        self.stream, self.T, self.dim = stream, int(T), int(feature_dim)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        clips = fs.features_to_numpy(batch.column("features"))
        x = [sample_video(c, self.T) for c in clips]
        return {"video_id": np.asarray(batch.column("video_id").to_pylist(), dtype=object),
                "label": batch.column("label").to_numpy().astype(np.int64),
                self.stream: _stack(x, self.T, self.dim)}


def sample_pair_group(group: pa.Table, T: int, feature_dim: int) -> dict[str, np.ndarray]:
    """``map_groups`` function: the rgb and flow rows of ONE video (a group of the union of both
    streams, keyed by video_id) -> one row {video_id, label, rgb, flow} whose two (T, d_f)
    inputs are taken at the same clips (``sample_pair``)."""
    streams = group.column("stream").to_pylist()
    vid = group.column("video_id")[0].as_py()
    if sorted(streams) != ["flow", "rgb"]:  # read_index rules this out; never pair blindly
        raise RuntimeError(f"video {vid!r}: expected one rgb and one flow row, got {streams}")
    clips = dict(zip(streams, fs.features_to_numpy(group.column("features"))))
    rgb, flow = sample_pair(clips["rgb"], clips["flow"], T)
    return {"video_id": np.asarray([vid], dtype=object),
            "label": np.asarray([group.column("label")[0].as_py()], np.int64),
            "rgb": rgb[None].astype(np.float32), "flow": flow[None].astype(np.float32)}


def _stack(arrays: list[np.ndarray], T: int, dim: int) -> np.ndarray:
    if not arrays:  # an empty batch still has the column's (T, d_f) shape
        return np.zeros((0, T, dim), np.float32)
    return np.stack(arrays).astype(np.float32, copy=False)  # (N, T, d_f)


class _Select:
    """Ray Data callable: keep the store rows of ``ids``, tagged with their stream."""

    def __init__(self, stream: str, ids: Iterable[str]):
        self.stream, self.ids = stream, pa.array(sorted(ids), pa.string())

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = batch.filter(pc.is_in(batch.column("video_id"), value_set=self.ids))
        return pa.table({"video_id": batch.column("video_id"),
                         "label": batch.column("label").cast(pa.int64()),
                         "stream": pa.array([self.stream] * batch.num_rows, pa.string()),
                         "features": batch.column("features")})


class _KeepIds:
    """Ray Data callable: keep the rows whose video_id is in ``ids`` (NumPy batches)."""

    def __init__(self, ids: Iterable[str]):
        self.ids = frozenset(ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mask = np.fromiter((v in self.ids for v in batch["video_id"]), bool,
                           count=len(batch["video_id"]))
        return {k: v[mask] for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Ray datasets
# ---------------------------------------------------------------------------------------------

def _read(store, stream: str, ids: set[str]) -> "ray.data.Dataset":
    ds = ray.data.read_parquet(fs.stream_files(store, stream))
    ds = ds.select_columns(["video_id", "label", "features"])
    return ds.map_batches(_Select(stream, ids), batch_format="pyarrow")


def build_datasets(store, streams: Sequence[str], T: int, splits: Sequence[str] = SPLITS,
                   index: StoreIndex | None = None) -> dict[str, "ray.data.MaterializedDataset"]:
    """Materialized datasets {split: rows of video_id, label, <stream> (T, d_f)} for ``splits``.

    Only videos that every stream has are used (``StoreIndex.missing`` lists the others). A
    split without videos is left out of the result.
    """
    index = index or read_index(store, streams)
    wanted = [s for s in splits if index.count(s)]
    ids = {v for s in wanted for v in index.video_ids[s]}
    if not ids:
        raise fs.StoreError(f"{store}: no videos in splits {list(splits)} for streams "
                            f"{list(index.streams)}")
    if len(index.streams) == 2:
        both = _read(store, "rgb", ids).union(_read(store, "flow", ids))
        # Sort-based grouping runs as plain tasks; the default hash shuffle starts aggregator
        # actors that each hold CPUs, which a 2-core machine running a Tune trial lacks.
        both.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        ds = both.groupby("video_id").map_groups(
            sample_pair_group, batch_format="pyarrow",
            fn_kwargs={"T": int(T), "feature_dim": index.feature_dim})
    else:
        (stream,) = index.streams
        ds = _read(store, stream, ids).map_batches(
            SampleClips(stream, T, index.feature_dim), batch_format="pyarrow")
    ds = ds.materialize()
    if len(wanted) == 1:
        return {wanted[0]: ds}
    return {split: ds.map_batches(_KeepIds(index.video_ids[split]), batch_format="numpy")
            .materialize() for split in wanted}


def pca_sample(ds: "ray.data.Dataset", stream: str, max_vectors: int, seed: int,
               batch_size: int = 256) -> np.ndarray:
    """A uniform, seeded sample of at most ``max_vectors`` clip vectors (N, d_f) of ``stream``
    from a built dataset (the sampled clips of every video, repeats within a video removed).

    One pass over the dataset; memory stays bounded by ``max_vectors`` plus one batch. Each
    vector gets a random key seeded by (seed, video_id) and the smallest keys are kept, so the
    sample does not depend on the order in which blocks arrive.
    """
    kept = np.zeros((0, 0), np.float32)
    keys = np.zeros(0)
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        per_video = [np.unique(v, axis=0) for v in batch[stream]]
        x = np.concatenate(per_video)  # (n, d_f)
        kept = x if kept.size == 0 else np.concatenate([kept, x])
        keys = np.concatenate([keys] + [
            np.random.default_rng([seed, zlib.crc32(str(vid).encode())]).random(len(v))
            for vid, v in zip(batch["video_id"], per_video)])
        if len(kept) > max_vectors:
            top = np.argpartition(keys, max_vectors)[:max_vectors]
            kept, keys = kept[top], keys[top]
    if kept.size == 0:
        raise ValueError(f"no {stream} training features to fit PCA on")
    return kept
