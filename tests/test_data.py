"""distributed.train.data: Ray datasets of T-sampled rows, rgb/flow pairing, the PCA sample."""

import numpy as np
import pytest

from featurestore_fixture import make_feature_store
from reslstm.distributed.train import data
from ray.data.dataset import MaterializedDataset
from reslstm.sampling import temporal_sample


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_feature_store(tmp_path_factory.mktemp("store"), seed=3)


# ---------------------------------------------------------------------------------------------
# Ray datasets
# ---------------------------------------------------------------------------------------------

def _rows(ds):
    return {r["video_id"]: r for r in ds.take_all()}


@pytest.mark.integration
def test_single_stream_rows_equal_temporal_sample_of_the_raw_rows(ray_local, store):
    built = data.build_datasets(store.root, ["rgb"], 6)
    assert set(built) == {"train", "val", "test"}
    for split, ds in built.items():
        rows = _rows(ds)
        assert sorted(rows) == store.ids(split)
        for vid, row in rows.items():
            raw = store.features["rgb"][vid]
            np.testing.assert_array_equal(row["rgb"], raw[temporal_sample(len(raw), 6)])
            assert row["label"] == store.labels[vid]


@pytest.mark.integration
def test_two_streams_are_joined_on_video_id_and_truncated_to_the_shorter(ray_local, store):
    built = data.build_datasets(store.root, ["rgb", "flow"], 4, splits=("train", "val"))
    assert set(built) == {"train", "val"}
    shorter = 0
    for split, ds in built.items():
        rows = _rows(ds)
        assert sorted(rows) == store.ids(split)
        for vid, row in rows.items():
            rgb, flow = store.features["rgb"][vid], store.features["flow"][vid]
            n = min(len(rgb), len(flow))
            shorter += len(flow) < len(rgb)
            idx = temporal_sample(n, 4)
            np.testing.assert_array_equal(row["rgb"], rgb[idx])
            np.testing.assert_array_equal(row["flow"], flow[idx])
            assert row["rgb"].shape == row["flow"].shape == (4, store.feature_dim)
    assert shorter > 0  # the fixture really has flow sequences one clip shorter


@pytest.mark.integration
def test_test_split_is_read_when_iterated_and_splits_are_read_apart(ray_local, store):
    built = data.build_datasets(store.root, ["rgb"], 3)
    assert isinstance(built["train"], MaterializedDataset)
    assert isinstance(built["val"], MaterializedDataset)
    assert not isinstance(built["test"], MaterializedDataset)  # read only when predicted
    assert sorted(_rows(built["test"])) == store.ids("test")


@pytest.mark.integration
def test_pca_sample_is_the_chosen_videos_distinct_clips_whatever_the_block_order(ray_local, store):
    run = data.load_data(store.root, ["rgb", "flow"], 5, splits=("train",))
    chosen = data.pca_videos(run.index, 5, 40, seed=1)
    assert chosen == data.pca_videos(run.index, 5, 40, seed=1) != data.pca_videos(
        run.index, 5, 40, seed=2)
    want = []
    for v in chosen:  # the clips sample_pair takes, repeats within a video removed
        rgb, flow = store.features["rgb"][v], store.features["flow"][v]
        want.append(np.unique(rgb[temporal_sample(min(len(rgb), len(flow)), 5)], axis=0))
    want = np.concatenate(want)
    assert len(want) >= 40 > len(want) - len(want[-5:])  # the shortest prefix that suffices
    a = data.pca_sample(run, "rgb", 40, seed=1)
    np.testing.assert_array_equal(a, want[:40])
    shuffled = data.RunData(run.index, {"train": run.datasets["train"].random_shuffle(
        seed=7).materialize()}, run.T)
    np.testing.assert_array_equal(data.pca_sample(shuffled, "rgb", 40, seed=1), a)
    everything = data.pca_sample(run, "rgb", 10_000, seed=1)
    distinct = sum(len(np.unique(store.features["rgb"][v][temporal_sample(min(
        len(store.features["rgb"][v]), len(store.features["flow"][v])), 5)], axis=0))
        for v in store.ids("train"))
    assert len(everything) == distinct
    # fitted once per (stream, seed, size) and kept: a sweep's trials share it
    basis = run.pca_basis("rgb", 1, 10_000)
    assert run.only(("train",)).pca_basis("rgb", 1, 10_000) is basis
    assert basis.samples == distinct
