"""The feature store: schema, Arrow <-> NumPy, atomic parts, metadata, failures."""

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from featurestore_fixture import make_feature_store
from reslstm import features as fs


def _rows(ids, dim, split="train", stream="rgb", clips=(3, 1, 5)):
    arrays = [np.arange(k * dim, dtype=np.float32).reshape(k, dim) + i for i, k in zip(range(len(ids)), clips)]
    table = pa.table({
        "video_id": ids, "label": pa.array([0] * len(ids), pa.int32()),
        "label_name": ["a"] * len(ids), "split": [split] * len(ids), "stream": [stream] * len(ids),
        "num_frames": pa.array([16 + 8 * (k - 1) for k in clips[:len(ids)]], pa.int32()),
        "fps": pa.array([25.0] * len(ids), pa.float32()),
        "num_clips": pa.array([len(a) for a in arrays], pa.int32()),
        "padded": [False] * len(ids), "warning": pa.array([None] * len(ids), pa.string()),
        "features": fs.features_to_arrow(arrays, dim),
    }, schema=fs.feature_schema(dim, spans=False))
    return table, arrays


def test_features_round_trip_exact_and_typed():
    table, arrays = _rows(["a", "b", "c"], 4)
    assert table.schema.field("features").type == pa.list_(pa.list_(pa.float32(), 4))
    back = fs.features_to_numpy(table.column("features"))
    assert [b.shape for b in back] == [(3, 4), (1, 4), (5, 4)]
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)
    # Slices (as pyarrow hands out after filtering or batching) keep the right rows.
    sliced = fs.features_to_numpy(table.column("features").combine_chunks().slice(1, 2))
    np.testing.assert_array_equal(sliced[0], arrays[1])
    np.testing.assert_array_equal(sliced[1], arrays[2])


def test_features_to_arrow_rejects_wrong_dim():
    with pytest.raises(ValueError, match="feature_dim 4"):
        fs.features_to_arrow([np.zeros((2, 3), np.float32)], 4)


def test_write_part_is_atomic_and_readable_by_plain_pyarrow(tmp_path):
    table, arrays = _rows(["a", "b", "c"], 4)
    d = tmp_path / "store" / "rgb"
    fs.write_part(d, table)
    # A killed writer's leftover is hidden from every reader.
    (d / ".part-dead.parquet.tmp").write_bytes(b"half a file")
    plain = pads.dataset(str(d), format="parquet").to_table()
    assert plain.num_rows == 3
    assert fs.read_stream(tmp_path / "store", "rgb").num_rows == 3
    assert fs.written_ids(tmp_path / "store", "rgb") == {"a", "b", "c"}
    assert fs.remove_temporaries(d) == 1
    only_val = fs.read_stream(tmp_path / "store", "rgb", splits=["val"])
    assert only_val.num_rows == 0


def test_ids_are_read_in_file_order_with_threads_by_filesystem(tmp_path, monkeypatch):
    """A stream's ids come back in file order; a local disk is read one thread per CPU, object
    storage 16 at a time (each read waits on a request)."""
    import pyarrow.fs as pafs

    from reslstm.features import store as store_mod

    d = tmp_path / "store" / "rgb"
    for i in range(5):
        fs.write_part(d, _rows([f"v{i}a", f"v{i}b"], 4)[0])
    files = sorted(str(p) for p in d.glob("*.parquet"))
    sizes = []
    real = store_mod.ThreadPoolExecutor
    monkeypatch.setattr(store_mod, "ThreadPoolExecutor", lambda n: sizes.append(n) or real(n))
    monkeypatch.setattr(store_mod.os, "cpu_count", lambda: 3)
    local = store_mod.read_column(files, "video_id", pafs.LocalFileSystem(), pa.string())
    other = store_mod.read_column([p.rsplit("/", 1)[1] for p in files], "video_id",
                                  pafs.SubTreeFileSystem(str(d), pafs.LocalFileSystem()),
                                  pa.string())  # not the local one, as S3's is not
    expected = [f"v{i}{c}" for i in range(5) for c in "ab"]
    assert local.to_pylist() == expected and other.to_pylist() == expected
    assert sizes == [3, 16]


def test_read_stream_missing_says_what_to_run(tmp_path):
    with pytest.raises(fs.StoreError, match="jobs/extract.py --streams flow"):
        fs.read_stream(tmp_path, "flow")


def test_metadata_round_trip_and_differences(tmp_path):
    s = fs.StreamSettings("tiny3d", "random-init", 256, 16, 8, 1, 64, 72)
    fs.write_metadata(tmp_path, {"rgb": s}, manifest="/data/m.parquet")
    back = fs.read_metadata(tmp_path)["rgb"]
    assert back == s
    assert fs.read_metadata_extra(tmp_path)["manifest"] == "/data/m.parquet"
    other = fs.StreamSettings("tiny3d", "random-init", 256, 16, 4, 10, 64, 72)
    diffs = back.differences(other)
    assert diffs == ["clip_stride: store has 8, requested 4", "crops: store has 1, requested 10"]
    (tmp_path / fs.METADATA_FILE).write_text("{not json")
    with pytest.raises(fs.StoreError, match="metadata.json"):
        fs.read_metadata(tmp_path)


def test_current_failures_drop_retried_successes(tmp_path):
    def fail(vid, stream, msg):
        return pa.table({"video_id": [vid], "stream": [stream], "path": [f"/v/{vid}.mp4"],
                         "stage": ["decode"], "error_type": ["X"], "message": [msg],
                         "run_id": ["r"]}, schema=fs.FAILURE_SCHEMA)

    fs.write_part(tmp_path / fs.FAILURES_DIR, fail("a", "rgb", "first"))
    fs.write_part(tmp_path / fs.FAILURES_DIR, fail("b", "rgb", "old"))
    fs.write_part(tmp_path / fs.FAILURES_DIR, fail("b", "rgb", "new"))
    assert fs.read_failures(tmp_path, current_only=False).num_rows == 3
    table, _ = _rows(["a"], 4, clips=(2,))
    fs.write_part(tmp_path / "rgb", table)  # "a" was retried and is now extracted
    cur = fs.read_failures(tmp_path)
    assert cur.column("video_id").to_pylist() == ["b"]
    assert cur.column("message").to_pylist() == ["new"]
    assert fs.failed_ids(tmp_path, "rgb") == {"b"}
    assert fs.failed_ids(tmp_path, "flow") == set()


# ---------------------------------------------------------------------------------------------
# The index training starts from
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_feature_store(tmp_path_factory.mktemp("store"), seed=3)


def test_read_index_classes_splits_and_dim(store):
    index = fs.read_index(store.root, ["rgb", "flow"])
    assert index.feature_dim == store.feature_dim
    assert index.label_names == store.class_names
    for split in ("train", "val", "test"):
        assert index.video_ids[split].tolist() == store.ids(split)
    assert index.missing == {}


def test_missing_stream_is_a_clear_error(tmp_path):
    make_feature_store(tmp_path, streams=("rgb",))
    with pytest.raises(fs.StoreError, match=r"no flow features.*extract\.py --streams flow"):
        fs.read_index(tmp_path, ["rgb", "flow"])


def test_video_missing_from_one_stream_is_listed_and_left_out(tmp_path):
    s = make_feature_store(tmp_path, parts=1)
    gone = s.ids("train")[0]
    (part,) = fs.stream_files(tmp_path, "flow")
    table = pq.read_table(part)
    keep = [v != gone for v in table.column("video_id").to_pylist()]
    fs.write_part(tmp_path / "flow", table.filter(keep), name=part.split("/")[-1])
    index = fs.read_index(tmp_path, ["rgb", "flow"])
    assert {s: ids.tolist() for s, ids in index.missing.items()} == {"flow": [gone]}
    assert gone not in index.video_ids["train"]
    assert gone in fs.read_index(tmp_path, ["rgb"]).video_ids["train"]


def test_duplicate_rows_are_refused(tmp_path):
    make_feature_store(tmp_path, parts=1)
    (part,) = fs.stream_files(tmp_path, "rgb")
    fs.write_part(tmp_path / "rgb", pq.read_table(part))  # a rerun that appended everything
    with pytest.raises(fs.StoreError, match="more than once"):
        fs.read_index(tmp_path, ["rgb"])


def _rewrite_flow(tmp_path, change):
    """Rewrite the one flow part file of a store with ``change(table)``."""
    (part,) = fs.stream_files(tmp_path, "flow")
    table = pq.read_table(part)
    fs.write_part(tmp_path / "flow", change(table), name=part.split("/")[-1])
    return table


def test_streams_disagreeing_on_a_label_are_refused(tmp_path):
    s = make_feature_store(tmp_path, parts=1)
    odd = s.ids("val")[1]

    def relabel(t):
        ids = t.column("video_id").to_pylist()
        wrong = [(lab + 1) % len(s.class_names) if v == odd else lab
                 for v, lab in zip(ids, t.column("label").to_pylist())]
        t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(wrong, pa.int32()))
        return t.set_column(t.schema.get_field_index("label_name"), "label_name",
                            pa.array([s.class_names[lab] for lab in wrong], pa.string()))

    _rewrite_flow(tmp_path, relabel)
    with pytest.raises(fs.StoreError, match=rf"1 video\(s\) carry different labels, e.g. \['{odd}'\]"):
        fs.read_index(tmp_path, ["rgb", "flow"])
    assert fs.read_index(tmp_path, ["rgb"]).count("val") == len(s.ids("val"))  # one stream: fine


def test_a_label_named_two_ways_is_refused(tmp_path):
    make_feature_store(tmp_path, parts=1)

    def rename(t):
        names = t.column("label_name").to_pylist()
        names[0] = names[0] + "_other"
        return t.set_column(t.schema.get_field_index("label_name"), "label_name",
                            pa.array(names, pa.string()))

    table = _rewrite_flow(tmp_path, rename)
    label, name = table.column("label")[0].as_py(), table.column("label_name")[0].as_py()
    with pytest.raises(fs.StoreError, match=rf"label {label} is named both '{name}' and "
                                            rf"'{name}_other'"):
        fs.read_index(tmp_path, ["rgb", "flow"])


def test_index_ids_sort_as_numpy_across_chunks_and_streams(tmp_path, monkeypatch):
    """Ids sorted by Arrow and turned into NumPy strings a chunk at a time are NumPy's sorted
    ids (non-ASCII, prefixes, case), so lookups by binary search find every one; the ids one
    stream lacks are listed under it."""
    from reslstm.features import sampled

    monkeypatch.setattr(sampled._as_str, "__defaults__", (2,))  # chunks of 2 ids
    ids = ["b", "a", "ab", "Ä", "é1", "é", "B", "a b", "ñu/1", "z" * 30]
    for stream, part in (("rgb", ids), ("flow", ids[2:])):
        table, _ = _rows(part, 4, stream=stream, clips=(2,) * len(part))
        fs.write_part(tmp_path / stream, table)
    index = fs.read_index(tmp_path, ["rgb", "flow"])
    want = np.sort(np.array(ids))
    np.testing.assert_array_equal(index.locations["rgb"].ids, want)
    np.testing.assert_array_equal(index.video_ids["train"], np.sort(np.array(ids[2:])))
    assert index.missing["flow"].tolist() == sorted(ids[:2]) and "rgb" not in index.missing
    for s in ("rgb", "flow"):
        loc = index.locations[s]
        assert (loc.ids[loc.positions(index.video_ids["train"])] == index.video_ids["train"]).all()
