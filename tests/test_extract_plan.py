"""Which (video, stream) pairs an extraction run takes on, and in what order."""

import pyarrow as pa

from reslstm import features as fs
from reslstm.configs import ExtractConfig
from reslstm.datasets.manifest import MANIFEST_SCHEMA
from reslstm.extraction.driver import plan_work


def _manifest(tmp_path, sizes):
    rows = []
    for name, size in sizes.items():
        path = tmp_path / f"{name}.mp4"
        if size is not None:
            path.write_bytes(b"\0" * size)
        rows.append({"video_id": name, "path": str(path), "label": 0, "label_name": "a",
                     "split": "train"})
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def test_largest_files_first_streams_of_a_video_together_flow_first(tmp_path):
    manifest = _manifest(tmp_path, {"small": 10, "big": 1000, "missing": None, "mid": 100})
    cfg = ExtractConfig(manifest="m.parquet", out=str(tmp_path / "store"), streams=("rgb", "flow"))
    items, done, failed = plan_work(cfg, manifest)
    assert [(i["video_id"], i["stream"]) for i in items] == [
        ("big", "flow"), ("big", "rgb"), ("mid", "flow"), ("mid", "rgb"),
        ("small", "flow"), ("small", "rgb"), ("missing", "flow"), ("missing", "rgb")]
    assert (done, failed) == (0, 0)


def test_written_and_failed_pairs_are_skipped_per_stream(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path, {"a": 30, "b": 20, "c": 10})
    out = tmp_path / "store"
    monkeypatch.setattr(fs.FeatureStore, "written_ids", lambda _, s: {"a"} if s == "rgb" else set())
    monkeypatch.setattr(fs.FeatureStore, "failed_ids", lambda _, s: {"b"} if s == "flow" else set())
    cfg = ExtractConfig(manifest="m.parquet", out=str(out), streams=("rgb", "flow"))
    items, done, failed = plan_work(cfg, manifest)
    assert [(i["video_id"], i["stream"]) for i in items] == [
        ("a", "flow"), ("b", "rgb"), ("c", "flow"), ("c", "rgb")]
    assert (done, failed) == (1, 1)
    retry = ExtractConfig(manifest="m.parquet", out=str(out), streams=("rgb",), retry_failed=True)
    items, done, failed = plan_work(retry, manifest)
    assert [(i["video_id"], i["stream"]) for i in items] == [("b", "rgb"), ("c", "rgb")]
    assert (done, failed) == (1, 0)
