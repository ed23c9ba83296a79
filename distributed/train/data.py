"""Feature store -> Ray Data datasets of fixed-length (T, d_f) inputs, one per split.

Each row of a built dataset is one video: ``video_id`` (str), ``label`` (int64) and, for each
stream the model reads, a ``(T, d_f)`` float32 tensor column named after the stream (``rgb``,
``flow``). The T clips are x_t = a_{sigma(t)} (``sampling.sample_video``): deterministic, so
every epoch, worker and rerun sees the same inputs.

Two-stream inputs (mid and late fusion) pair the two streams of a video by ``video_id``: the
rows of both streams (reduced to the videos both have) are unioned and grouped by
``video_id``, and each group of two rows becomes one paired row (``sampling.sample_pair``:
both inputs at the same clips, after truncating to the shorter stream; a flow sequence has one
frame fewer than its RGB video and may have one clip fewer). ``Dataset.join`` would need
polars, which the project does not depend on; ``zip`` after sorting relies on block order,
which Ray Data does not guarantee.

``load_data`` indexes the store (``features.read_index``: small columns only) and builds every
requested split, materialized before returning: Ray Data tasks need CPUs, and once the
trainer's workers hold them (2 workers on 2 cores) a lazy read would wait forever.
``pca_sample`` draws the training clip vectors PCA is fitted on.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.context import ShuffleStrategy

from reslstm import features as fs
from reslstm.sampling import sample_pair, sample_video

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class RunData:
    """The driver's data of one (streams, T): the store's index and a materialized dataset per
    split. Several runs (the trials of a sweep) share one."""

    index: fs.StoreIndex
    datasets: dict[str, "ray.data.Dataset"]

    def only(self, splits: Sequence[str]) -> "RunData":
        return RunData(self.index, {s: d for s, d in self.datasets.items() if s in splits})


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

def _read(store: fs.FeatureStore, stream: str, ids: set[str]) -> "ray.data.Dataset":
    ds = ray.data.read_parquet(store.stream_files(stream), filesystem=store.root.filesystem,
                               columns=["video_id", "label", "features"])
    return ds.map_batches(_Select(stream, ids), batch_format="pyarrow")


def build_datasets(store, streams: Sequence[str], T: int, splits: Sequence[str] = SPLITS,
                   index: fs.StoreIndex | None = None) -> dict[str, "ray.data.MaterializedDataset"]:
    """Materialized datasets {split: rows of video_id, label, <stream> (T, d_f)} for ``splits``.

    Only videos that every stream has are used (``StoreIndex.missing`` lists the others). A
    split without videos is left out of the result.
    """
    store = fs.as_store(store)
    index = index or fs.read_index(store, streams)
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


def load_data(store, streams: Sequence[str], T: int,
              splits: Sequence[str] = SPLITS) -> RunData:
    """Index the store and build the materialized datasets of ``splits`` (driver side)."""
    store = fs.as_store(store)
    index = fs.read_index(store, streams)
    for stream, ids in index.missing.items():
        log.warning(f"{len(ids)} video(s) lack {stream} features and are left out "
                    f"(e.g. {ids[:3]}); see the store's failures table")
    for split in ("train", "val"):
        if split in splits and not index.count(split):
            raise fs.StoreError(f"{store}: no {split} videos for streams {list(index.streams)}")
    return RunData(index, build_datasets(store, index.streams, T, splits, index))


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
        raise fs.StoreError(f"no {stream} training features to fit PCA on")
    return kept
