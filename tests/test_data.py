"""distributed.train.data: Ray datasets of T-sampled rows, rgb/flow pairing, the PCA sample."""

import numpy as np
import pytest

from featurestore_fixture import make_feature_store
from reslstm.distributed.train import data
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
def test_pca_sample_is_bounded_and_does_not_depend_on_block_order(ray_local, store):
    ds = data.build_datasets(store.root, ["rgb"], 5, splits=("train",))["train"]
    a = data.pca_sample(ds, "rgb", 40, seed=1)
    b = data.pca_sample(ds.random_shuffle(seed=7).materialize(), "rgb", 40, seed=1)
    assert a.shape == (40, store.feature_dim)
    key = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    assert key(a) == key(b)
    everything = data.pca_sample(ds, "rgb", 10_000, seed=1)
    distinct = sum(len(np.unique(store.features["rgb"][v][temporal_sample(
        len(store.features["rgb"][v]), 5)], axis=0)) for v in store.ids("train"))
    assert len(everything) == distinct
