"""Feature store -> Ray Data datasets of fixed-length (T, d_f) inputs, one per split.

Each row of a built dataset is one video: ``video_id`` (str), ``label`` (int64) and, for each
stream the model reads, a ``(T, d_f)`` float32 tensor column named after the stream (``rgb``,
``flow``). The T clips are x_t = a_{sigma(t)} (``sampling.sample_video``): deterministic, so
every epoch, worker and rerun sees the same inputs.

Reading (``SampledInputs``, a Ray Data datasource over ``features.plan_reads`` /
``features.read_sampled``): the index (``features.read_index``: small columns only) says where
each video's row is in every stream; each read task reads its row groups once and emits only
the sampled (T, d_f) inputs. Two streams are paired inside the task that reads them, at the
same clips after truncating to the shorter stream (``sampling.sample_pair``'s rule; a flow
sequence has one frame fewer than its RGB video and may have one clip fewer): no shuffle, no
``groupby``, no raw K_v x d_f sequence leaves a task. Each split is read on its own, so no
split is held twice; test is read only when it is predicted.

``load_data`` indexes the store and builds every requested split, train and val materialized
before returning: Ray Data tasks need CPUs, and once the trainer's workers hold them (2 workers
on 2 cores) a lazy read would wait forever. In the object store: N x T x d_f x 4 bytes per
stream for train and val, nothing else.

PCA (``RunData.pca_basis``) is fitted on a bounded, seeded sample: ``pca_videos`` picks train
videos from the index alone (a seeded permutation, as many as ``--pca-max-vectors`` clip
vectors need), one parallel pass over the train blocks keeps only their distinct clips
(``pca_sample``), and the basis is kept per (stream, seed, sample size): a sweep fits it once in
its driver and every trial takes its top h rows.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import ray
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from reslstm import features as fs
from reslstm.pca import PCABasis, pca_basis

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class RunData:
    """The driver's data of one (streams, T): the store's index, a dataset per split and the PCA
    bases fitted so far. Several runs (the trials of a sweep) share one."""

    index: fs.StoreIndex
    datasets: dict[str, "ray.data.Dataset"]
    T: int
    pca: dict = field(default_factory=dict)  # (stream, seed, max_vectors) -> model.PCABasis

    def only(self, splits: Sequence[str]) -> "RunData":
        return RunData(self.index, {s: d for s, d in self.datasets.items() if s in splits},
                       self.T, self.pca)

    def pca_basis(self, stream: str, seed: int, max_vectors: int) -> PCABasis:
        """PCA of ``stream``'s training clips (``pca_sample``), fitted once per (stream, seed,
        sample size) and kept: every hidden size takes its top rows (``InputProjection.set_pca``)."""
        key = (stream, int(seed), int(max_vectors))
        if key not in self.pca:
            x = pca_sample(self, stream, max_vectors, seed)
            self.pca[key] = pca_basis(x, self.index.feature_dim)
            log.info(f"PCA {stream} (T={self.T}): fitted on {len(x)} training clip vectors")
        return self.pca[key]


class SampledInputs(Datasource):
    """Ray Data datasource: the T-sampled inputs of some videos, read straight from the store
    (``features.plan_reads`` / ``features.read_sampled``): one read task per plan, each reading
    its row groups once and emitting only (T, d_f) rows per stream."""

    def __init__(self, store: fs.FeatureStore, index: fs.StoreIndex, ids: Sequence[str], T: int):
        self.store, self.T, self.dim = store, int(T), index.feature_dim
        locations = {s: index.locations[s] for s in index.streams}
        self.files = {s: loc.files for s, loc in locations.items()}
        self.plans = fs.plan_reads(locations, ids)

    def estimate_inmemory_data_size(self) -> int:
        return sum(len(p) for p in self.plans) * self.T * self.dim * 4 * len(self.files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None
                       ) -> list[ReadTask]:
        row_bytes = self.T * self.dim * 4 * len(self.files)
        return [ReadTask(functools.partial(_read_plan, self.store, self.files, plan, self.T),
                         BlockMetadata(num_rows=len(plan), size_bytes=len(plan) * row_bytes,
                                       input_files=None, exec_stats=None))
                for plan in self.plans]


def _read_plan(store, files, plan, T) -> Iterator[pa.Table]:
    for batch in fs.read_sampled(store, files, plan, T):
        yield BlockAccessor.batch_to_block(batch)


# ---------------------------------------------------------------------------------------------
# Ray datasets
# ---------------------------------------------------------------------------------------------

def build_datasets(store, streams: Sequence[str], T: int, splits: Sequence[str] = SPLITS,
                   index: fs.StoreIndex | None = None, lazy: Sequence[str] = ("test",)
                   ) -> dict[str, "ray.data.Dataset"]:
    """Datasets {split: rows of video_id, label, <stream> (T, d_f)} for ``splits``, each read
    on its own from the rows of its videos (no copy of another split). Splits in ``lazy``
    (test) are read when they are iterated; the others are materialized here.

    Only videos that every stream has are used (``StoreIndex.missing`` lists the others). A
    split without videos is left out of the result.
    """
    store = fs.as_store(store)
    index = index or fs.read_index(store, streams)
    wanted = [s for s in splits if index.count(s)]
    if not wanted:
        raise fs.StoreError(f"{store}: no videos in splits {list(splits)} for streams "
                            f"{list(index.streams)}")
    out = {}
    for split in wanted:
        ds = ray.data.read_datasource(SampledInputs(store, index, index.video_ids[split], T))
        out[split] = ds if split in lazy else ds.materialize()
    return out


def load_data(store, streams: Sequence[str], T: int,
              splits: Sequence[str] = SPLITS) -> RunData:
    """Index the store and build the materialized datasets of ``splits`` (driver side)."""
    store = fs.as_store(store)
    index = fs.read_index(store, streams)
    for stream, ids in index.missing.items():
        log.warning(f"{len(ids)} video(s) lack {stream} features and are left out "
                    f"(e.g. {ids[:3].tolist()}); see the store's failures table")
    for split in ("train", "val"):
        if split in splits and not index.count(split):
            raise fs.StoreError(f"{store}: no {split} videos for streams {list(index.streams)}")
    return RunData(index, build_datasets(store, index.streams, T, splits, index), int(T))


def pca_videos(index: fs.StoreIndex, T: int, max_vectors: int, seed: int) -> list[str]:
    """The training videos the PCA sample comes from: the shortest prefix of a seeded
    permutation of the train ids whose sampled clips (min(K_v, T) distinct ones per video)
    number at least ``max_vectors``. Needs only the index; O(N) in ids, not in features."""
    ids = np.asarray(index.video_ids.get("train", []), dtype=str)
    clips = np.min([index.locations[s].clips[index.locations[s].positions(ids)]
                    for s in index.streams], axis=0) if len(ids) else np.zeros(0, np.int64)
    order = np.random.default_rng(seed).permutation(len(ids))
    total = np.cumsum(np.minimum(clips[order], T))
    return ids[order[:int(np.searchsorted(total, max_vectors)) + 1]].tolist()


class _PickVectors:
    """Ray Data callable: the distinct sampled clip vectors of the chosen videos, one output row
    per vector {rank (the video's place in the choice), j, vector}; other rows are dropped after
    reading only their ids."""

    def __init__(self, stream: str, chosen: Sequence[str]):
        self.stream, self.rank = stream, {v: i for i, v in enumerate(chosen)}

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        keep = [i for i, v in enumerate(batch.column("video_id").to_pylist()) if v in self.rank]
        rank, j, vectors = [], [], []
        if keep:
            ids = batch.column("video_id").take(keep).to_pylist()
            clips = BlockAccessor.for_block(batch.take(keep).select([self.stream])).to_numpy()
            for vid, v in zip(ids, clips[self.stream]):
                u = np.unique(v, axis=0)  # (m, d_f), repeats within the video removed
                rank += [self.rank[vid]] * len(u)
                j += range(len(u))
                vectors.append(u)
        dim = batch.schema.field(self.stream).type.shape[-1]
        return {"rank": np.asarray(rank, np.int64), "j": np.asarray(j, np.int64),
                "vector": (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32))}


def pca_sample(data: RunData, stream: str, max_vectors: int, seed: int) -> np.ndarray:
    """A seeded sample of at most ``max_vectors`` training clip vectors (N, d_f) of ``stream``:
    the distinct sampled clips of the videos ``pca_videos`` chooses, in that order, cut at
    ``max_vectors``. One parallel pass over the materialized train blocks reads their ids and
    only the chosen rows; the driver receives the sample, nothing that grows with N."""
    chosen = pca_videos(data.index, data.T, max_vectors, seed)
    picked = data.datasets["train"].map_batches(_PickVectors(stream, chosen),
                                                batch_format="pyarrow")
    parts = list(picked.iter_batches(batch_size=None, batch_format="numpy"))
    rank = np.concatenate([p["rank"] for p in parts]) if parts else np.zeros(0, np.int64)
    if not len(rank):
        raise fs.StoreError(f"no {stream} training features to fit PCA on")
    order = np.lexsort((np.concatenate([p["j"] for p in parts]), rank))[:max_vectors]
    # Each vector copied once, straight to its place in the sample (no concatenated copy).
    place = np.full(len(rank), -1, np.int64)
    place[order] = np.arange(len(order))
    sample = np.empty((len(order), parts[0]["vector"].shape[1]), parts[0]["vector"].dtype)
    start = 0
    for p in parts:
        to = place[start:start + len(p["vector"])]
        sample[to[to >= 0]] = p["vector"][to >= 0]
        start += len(p["vector"])
    return sample
