"""The store writer: segments joined in order, duplicates ignored, failures recorded, nothing lost."""

import numpy as np
import pyarrow as pa
import pytest

from reslstm import features as fs
from reslstm.extraction.segments import SEGMENT_SCHEMA, failure_row
from reslstm.extraction.writer import StoreWriter
from reslstm.fusion import STREAMS

DIM = 3
SETTINGS = {s: fs.StreamSettings("tiny3d", "random-init", DIM, 16, 8, 1, 64, 72,
                                 flow_method="dis" if s == "flow" else None) for s in STREAMS}
ITEM = {"video_id": "v1", "stream": "rgb", "path": "/videos/v1.mp4", "label": 2,
        "label_name": "c", "split": "train"}


def seg(index, first_clip, k, is_last=False, total_frames=-1, stream="rgb", vid="v1", **kw):
    feats = (np.arange(k * DIM, dtype=np.float32).reshape(k, DIM) + 100 * first_clip)
    row = {**ITEM, "video_id": vid, "stream": stream, "kind": "segment", "seg_index": index,
           "first_clip": first_clip, "num_clips": k, "is_last": is_last,
           "total_frames": total_frames, "padded": False, "fps": 25.0, "warning": None,
           "data": feats.tobytes(), "shape": [k, DIM], "stage": None, "error_type": None,
           "message": None, **kw}
    return pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA), feats


def test_segments_out_of_order_with_duplicates_join_in_order(tmp_path):
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1")
    # 7 clips of s=16, r=8 need 16 + 6 * 8 = 64 frames; segments of 3 + 3 + 1 clips.
    s2, f2 = seg(2, 6, 1, is_last=True, total_frames=64)
    s0, f0 = seg(0, 0, 3)
    s1, f1 = seg(1, 3, 3)
    for t in (s2, s0, s0, s1, s1):
        w.consume(t)
    w.close()
    table = fs.read_stream(tmp_path, "rgb")
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    assert (row["num_frames"], row["num_clips"], row["label"], row["split"]) == (64, 7, 2, "train")
    np.testing.assert_array_equal(fs.features_to_numpy(table.column("features"))[0],
                                  np.concatenate([f0, f1, f2]))
    assert w.written == {"rgb": 1} and not w.failed


def test_flow_rows_count_flow_frames(tmp_path):
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1")
    # 65 RGB frames -> 64 flow frames -> 7 flow clips.
    w.consume(seg(0, 0, 7, is_last=True, total_frames=65, stream="flow")[0])
    w.close()
    row = fs.read_stream(tmp_path, "flow").to_pylist()[0]
    assert (row["num_frames"], row["num_clips"]) == (64, 7)


def test_failure_discards_partial_segments_and_is_recorded(tmp_path):
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1")
    w.consume(seg(0, 0, 3)[0])
    w.consume(failure_row(ITEM, "decode", ValueError("bad bytes at frame 40")))
    w.consume(seg(1, 3, 1, is_last=True, total_frames=48)[0])  # late duplicate: ignored
    w.close()
    assert not fs.has_stream(tmp_path, "rgb")
    fails = fs.read_failures(tmp_path).to_pylist()
    assert len(fails) == 1
    assert fails[0]["stage"] == "decode" and fails[0]["error_type"] == "ValueError"
    assert "/videos/v1.mp4" in fails[0]["message"] and "frame 40" in fails[0]["message"]


def test_incomplete_video_becomes_a_failure_not_a_silent_skip(tmp_path):
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1")
    w.consume(seg(1, 3, 1, is_last=True, total_frames=48)[0])  # segment 0 never arrives
    w.close()
    fails = fs.read_failures(tmp_path).to_pylist()
    assert [f["error_type"] for f in fails] == ["IncompleteVideo"]


def test_clip_count_mismatch_is_caught(tmp_path):
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1")
    w.consume(seg(0, 0, 2, is_last=True, total_frames=64)[0])  # 64 frames need 7 clips
    w.close()
    assert [f["error_type"] for f in fs.read_failures(tmp_path).to_pylist()] == ["SegmentJoinError"]


def test_rows_flush_in_parts_of_rows_per_file(tmp_path):
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1", rows_per_file=2)
    for i in range(5):
        w.consume(seg(0, 0, 1, is_last=True, total_frames=16, vid=f"v{i}")[0])
    assert len(fs.stream_files(tmp_path, "rgb")) == 2  # 4 rows committed, 1 buffered
    w.close()
    assert len(fs.stream_files(tmp_path, "rgb")) == 3
    assert fs.written_ids(tmp_path, "rgb") == {f"v{i}" for i in range(5)}



def test_each_part_file_gives_arrow_memory_back(tmp_path, monkeypatch):
    """After each part file is written the writer hands the Arrow pool's freed pages back
    (mimalloc kept about a part's worth otherwise)."""
    import reslstm.extraction.writer as writer

    files_then = []
    monkeypatch.setattr(writer, "release_arrow_memory",
                        lambda: files_then.append(len(fs.stream_files(tmp_path, "rgb"))))
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1", rows_per_file=2)
    for i in range(5):
        w.consume(seg(0, 0, 1, is_last=True, total_frames=16, vid=f"v{i}")[0])
    w.close()
    assert files_then == [1, 2, 3]  # once per part file, after it was written

def test_finished_ids_are_exact_after_moving_to_arrow(monkeypatch):
    """Ids move from the set to the hash-sorted Arrow array every RECENT ids; membership stays
    exact when hashes collide (here: the length's parity, so half the ids share each hash)."""
    import reslstm.extraction.writer as writer

    monkeypatch.setattr(writer.FinishedIds, "RECENT", 3)
    monkeypatch.setattr(writer, "_hash", lambda s: len(s) % 2)
    ids = writer.FinishedIds()
    added = [f"v{i}" for i in range(11)] + ["v3", "v10", "\u00e9t\u00e9", "x1"]
    for v in added:
        ids.add(v)
    assert len(ids.older) == 12 and len(ids.recent) == 1  # four moves; v3, v10 again: no-ops
    assert len(ids) == 13 and sorted(ids.array().to_pylist()) == sorted(set(added))
    assert all(v in ids for v in added)
    assert not any(v in ids for v in ("v11", "v99", "w1", "", "\u00e9t\u00e8"))


def test_late_duplicate_of_an_old_pair_is_ignored(tmp_path, monkeypatch):
    """A retried task's duplicate of a pair finished long before (its id already in the Arrow
    array) makes no second row, and the pairs left to do are exactly the unfinished ones."""
    import reslstm.extraction.writer as writer

    monkeypatch.setattr(writer.FinishedIds, "RECENT", 2)
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1")
    for i in range(6):
        w.consume(seg(0, 0, 1, is_last=True, total_frames=16, vid=f"v{i}")[0])
    assert len(w.finished["rgb"].older) == 6
    w.consume(seg(0, 0, 1, is_last=True, total_frames=16, vid="v0")[0])   # late duplicate
    w.consume(seg(0, 0, 1, is_last=True, total_frames=16, vid="v4")[0])   # late duplicate
    items = pa.Table.from_pylist([{**ITEM, "video_id": f"v{i}"} for i in range(8)])
    assert w.unfinished(items).column("video_id").to_pylist() == ["v6", "v7"]
    w.close()
    assert sorted(fs.read_stream(tmp_path, "rgb").column("video_id").to_pylist()) == [
        f"v{i}" for i in range(6)]


@pytest.mark.parametrize("frames, k", [(16, 1), (23, 1), (24, 2), (100, 11)])
def test_verify_accepts_consistent_rows(tmp_path, frames, k):
    fs.write_metadata(tmp_path, {"rgb": SETTINGS["rgb"]})
    w = StoreWriter(tmp_path, SETTINGS, run_id="r1")
    w.consume(seg(0, 0, k, is_last=True, total_frames=frames)[0])
    w.close()
    report = fs.verify_store(tmp_path, pa.table({"video_id": ["v1"]}))
    assert report.ok, report.text()


def test_verify_reports_each_kind_of_bad_row(tmp_path):
    fs.write_metadata(tmp_path, {"rgb": SETTINGS["rgb"]})

    def rows(ids, frames, clips, feats):
        return pa.table({
            "video_id": ids, "label": pa.array([0] * len(ids), pa.int32()), "label_name": ["c"] * len(ids),
            "split": ["train"] * len(ids), "stream": ["rgb"] * len(ids),
            "num_frames": pa.array(frames, pa.int32()), "fps": pa.array([25.0] * len(ids), pa.float32()),
            "num_clips": pa.array(clips, pa.int32()), "padded": [False] * len(ids),
            "warning": pa.array([None] * len(ids), pa.string()),
            "features": fs.features_to_arrow(feats, DIM)}, schema=fs.feature_schema(DIM, spans=False))

    good = np.zeros((2, DIM), np.float32)
    nan = good.copy()
    nan[1, 2] = np.nan
    fs.write_part(tmp_path / "rgb", rows(["ok", "nan", "short"], [24, 24, 24], [2, 2, 1],
                                         [good, nan, good[:1]]))
    fs.write_part(tmp_path / "rgb", rows(["ok", "stray"], [24, 24], [2, 2], [good, good]))
    report = fs.verify_store(tmp_path, pa.table({"video_id": ["ok", "nan", "short", "lost"]}))
    text = "\n".join(report.problems)
    assert not report.ok
    assert "rgb/nan" in text and "non-finite" in text
    assert "rgb/short" in text and "num_clips 1" in text and "expected 2" in text
    assert "rgb/ok" in text and "duplicate row" in text
    assert "rgb/stray" in text and "not in the manifest" in text
    assert "rgb/lost: in the manifest but neither extracted nor failed" in text
    assert len(report.problems) == 5
