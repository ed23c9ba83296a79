"""features.sampled: training inputs read straight from where each video's row is (no Ray):
the same T clips as sampling.sample_video / sample_pair, each video once, plans cut at row-group
boundaries, also after compaction and with the two streams in unrelated file orders."""

import numpy as np
import pytest

from featurestore_fixture import make_feature_store
from reslstm import features as fs
from reslstm.sampling import sample_pair, sample_video


@pytest.fixture
def store(tmp_path):
    # 7 part files per stream, each stream's videos in its own random order
    return make_feature_store(tmp_path / "store", parts=7, seed=11)


def _read_all(store, streams, split, T, max_rows=7, block_rows=3):
    root = fs.as_store(store.root)
    index = fs.read_index(root, streams)
    locations = {s: index.locations[s] for s in streams}
    plans = fs.plan_reads(locations, index.video_ids[split], max_rows=max_rows)
    rows = {}
    for plan in plans:
        for block in fs.read_sampled(root, {s: locations[s].files for s in streams}, plan, T,
                                     block_rows=block_rows):
            assert len(block["video_id"]) <= block_rows
            for i, vid in enumerate(block["video_id"]):
                assert vid not in rows
                rows[vid] = {k: v[i] for k, v in block.items()}
    return plans, rows


def _check(store, streams, split, T, rows):
    assert sorted(rows) == store.ids(split)
    for vid, row in rows.items():
        assert row["label"] == store.labels[vid]
        if len(streams) == 2:
            rgb, flow = sample_pair(store.features["rgb"][vid], store.features["flow"][vid], T)
            np.testing.assert_array_equal(row["rgb"], rgb)
            np.testing.assert_array_equal(row["flow"], flow)
        else:
            (s,) = streams
            np.testing.assert_array_equal(row[s], sample_video(store.features[s][vid], T))
        for s in streams:
            assert row[s].dtype == np.float32 and row[s].shape == (T, store.feature_dim)


@pytest.mark.parametrize("streams", [("rgb", "flow"), ("flow",)])
def test_every_video_once_with_the_clips_sampling_takes(store, streams):
    for split, T in (("train", 5), ("val", 1), ("test", 12)):
        _, rows = _read_all(store, streams, split, T)
        _check(store, streams, split, T, rows)


def test_plans_are_cut_at_row_group_boundaries_and_read_each_group_once(store):
    plans, _ = _read_all(store, ("rgb", "flow"), "train", 4, max_rows=7)
    seen = set()
    for plan in plans:
        groups = plan.groups("rgb")
        assert not seen & set(groups)  # a row group of the first stream is in one plan
        seen |= set(groups)
        # at most max_rows videos, unless one row group alone holds more
        assert len(plan) <= 7 or len(groups) == 1
    assert len(plans) > 1
    assert sum(len(p) for p in plans) == len(store.ids("train"))


def test_a_compacted_store_reads_the_same(store):
    root = fs.as_store(store.root)
    with root.lock():
        root.compact()
    assert len(root.stream_files("rgb")) == 1  # one file, one row group per merged part
    _, rows = _read_all(store, ("rgb", "flow"), "train", 6)
    _check(store, ("rgb", "flow"), "train", 6, rows)


def test_a_store_changed_since_it_was_indexed_is_refused(store):
    root = fs.as_store(store.root)
    index = fs.read_index(root, ["rgb"])
    loc = index.locations["rgb"]
    (plan, *_) = fs.plan_reads({"rgb": loc}, index.video_ids["train"])
    plan.where["rgb"][0, 2] = (plan.where["rgb"][0, 2] + 1) % 2  # another row of that group
    with pytest.raises(fs.StoreError, match="changed since it was indexed"):
        list(fs.read_sampled(root, {"rgb": loc.files}, plan, 3))
    with root.lock():
        root.compact()  # the indexed files are gone
    (plan, *_) = fs.plan_reads({"rgb": loc}, index.video_ids["train"])
    with pytest.raises(fs.StoreError, match="changed since it was indexed"):
        list(fs.read_sampled(root, {"rgb": loc.files}, plan, 3))
