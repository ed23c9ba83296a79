"""distributed.data: the store index, T-sampling of every row, and rgb/flow pairing."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurestore_fixture import make_feature_store
from reslstm import features as fs
from reslstm.distributed import data
from reslstm.sampling import temporal_sample


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_feature_store(tmp_path_factory.mktemp("store"), seed=3)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------

def test_sample_video_takes_sigma_rows():
    clips = np.arange(10, dtype=np.float32).reshape(5, 2)  # clip k = [2k, 2k + 1]
    out = data.sample_video(clips, 3)
    # sigma(t) - 1 = floor((t - 1) * 4 / 2) = 0, 2, 4
    np.testing.assert_array_equal(out, [[0, 1], [4, 5], [8, 9]])
    # K < T repeats clips: K = 2, T = 4 -> floor(t * 1 / 3) = 0, 0, 0, 1
    np.testing.assert_array_equal(data.sample_video(clips[:2], 4), [[0, 1]] * 3 + [[2, 3]])


def test_sample_pair_truncates_to_the_shorter_stream_before_sampling():
    rgb = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # K = 5
    flow = -np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # K = 4
    r, f = data.sample_pair(rgb, flow, 3)
    # both cut to 4 clips: sigma - 1 = floor((t - 1) * 3 / 2) = 0, 1, 3 (not 0, 2, 4 of K = 5)
    np.testing.assert_array_equal(r[:, 0], [0, 1, 3])
    np.testing.assert_array_equal(f[:, 0], [0, -1, -3])


def test_read_index_classes_splits_and_dim(store):
    index = data.read_index(store.root, ["rgb", "flow"])
    assert index.feature_dim == store.feature_dim
    assert index.label_names == store.class_names
    for split in ("train", "val", "test"):
        assert index.video_ids[split] == store.ids(split)
    assert index.missing == {}


def test_missing_stream_is_a_clear_error(tmp_path):
    make_feature_store(tmp_path, streams=("rgb",))
    with pytest.raises(fs.StoreError, match=r"no flow features.*extract\.py --streams flow"):
        data.read_index(tmp_path, ["rgb", "flow"])


def test_video_missing_from_one_stream_is_listed_and_left_out(tmp_path):
    s = make_feature_store(tmp_path, parts=1)
    gone = s.ids("train")[0]
    (part,) = fs.stream_files(tmp_path, "flow")
    table = pq.read_table(part)
    keep = [v != gone for v in table.column("video_id").to_pylist()]
    fs.write_part(tmp_path / "flow", table.filter(keep), name=part.split("/")[-1])
    index = data.read_index(tmp_path, ["rgb", "flow"])
    assert index.missing == {"flow": [gone]}
    assert gone not in index.video_ids["train"]
    assert gone in data.read_index(tmp_path, ["rgb"]).video_ids["train"]


def test_duplicate_rows_are_refused(tmp_path):
    make_feature_store(tmp_path, parts=1)
    (part,) = fs.stream_files(tmp_path, "rgb")
    fs.write_part(tmp_path / "rgb", pq.read_table(part))  # a rerun that appended everything
    with pytest.raises(fs.StoreError, match="more than once"):
        data.read_index(tmp_path, ["rgb"])


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
