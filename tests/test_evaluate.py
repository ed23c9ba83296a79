"""distributed.train.evaluation: scores and late fusion of stored predictions, and their reports."""

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reslstm import metrics
from reslstm.reports import predictions as ev
from reslstm.fusion import late_fuse

NAMES = ["a", "b", "c"]


def write_preds(path, rows, split="test"):
    """rows: [(video_id, label, head, probs)] -> a predictions Parquet file."""
    table = pa.Table.from_pydict({
        "video_id": [r[0] for r in rows], "label": [r[1] for r in rows],
        "label_name": [NAMES[r[1]] for r in rows], "split": [split] * len(rows),
        "head": [r[2] for r in rows], "probs": [list(map(float, r[3])) for r in rows],
    }, schema=ev.PREDICTION_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# Four videos; rgb is right on v0, v1; flow on v1, v2, v3 (v2 only narrowly wrong for rgb).
LABELS = {"v0": 0, "v1": 1, "v2": 2, "v3": 0}
RGB = {"v0": [0.6, 0.3, 0.1], "v1": [0.2, 0.7, 0.1], "v2": [0.1, 0.5, 0.4], "v3": [0.2, 0.5, 0.3]}
FLOW = {"v0": [0.3, 0.4, 0.3], "v1": [0.1, 0.8, 0.1], "v2": [0.2, 0.1, 0.7], "v3": [0.5, 0.4, 0.1]}


@pytest.fixture
def two_runs(tmp_path):
    # Rows in different orders in the two files: the join is on video_id, not position.
    write_preds(tmp_path / "rgb" / "predictions" / "test.parquet",
                [(v, LABELS[v], "fused", RGB[v]) for v in ["v3", "v0", "v2", "v1"]])
    flow = write_preds(tmp_path / "flow.parquet",
                       [(v, LABELS[v], "fused", FLOW[v]) for v in sorted(LABELS)])
    return tmp_path / "rgb", flow


@pytest.mark.parametrize("op", ["product", "sum", "weighted"])
def test_fused_scores_equal_a_hand_computation(two_runs, tmp_path, op):
    ids = sorted(LABELS)
    y = np.array([LABELS[v] for v in ids])
    pr = np.array([RGB[v] for v in ids], np.float32)
    pf = np.array([FLOW[v] for v in ids], np.float32)
    fused = late_fuse(pr, pf, op)
    report = ev.evaluate_fusion(*two_runs, op=op, out_dir=tmp_path / "out")
    assert report.rows["rgb"]["top1"] == 0.5
    assert report.rows["flow"]["top1"] == 0.75
    conf = metrics.confusion_matrix(fused.argmax(1), y, 3)
    assert report.rows[f"fused-{op}"] == pytest.approx({
        "top1": metrics.topk_accuracy(fused, y, 1), "top5": 1.0,
        "mean_class_acc": metrics.mean_class_accuracy(conf), "n": 4})
    np.testing.assert_array_equal(report.confusion, conf)
    png = tmp_path / "out" / f"confusion_fused-{op}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "out" / f"per_class_fused-{op}.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == NAMES
    assert [int(r["support"]) for r in rows] == [2, 1, 1]
    assert [int(r["correct"]) for r in rows] == [int(conf[i, i]) for i in range(3)]


def test_product_fusion_by_hand():
    # v2: rgb (.1 .5 .4) x flow (.2 .1 .7) = (.02 .05 .28) -> class 2, right where rgb is wrong.
    fused = late_fuse(np.array([RGB["v2"]], np.float32), np.array([FLOW["v2"]], np.float32))
    np.testing.assert_allclose(fused[0], np.array([0.02, 0.05, 0.28]) / 0.35, rtol=1e-5)


def test_different_video_sets_are_a_clear_error(two_runs, tmp_path):
    rgb, _ = two_runs
    other = write_preds(tmp_path / "other.parquet",
                        [(v, LABELS.get(v, 0), "fused", FLOW.get(v, FLOW["v0"]))
                         for v in ["v0", "v1", "v2", "v9"]])
    with pytest.raises(ev.PredictionError, match=r"other\.parquet cover different test videos.*"
                                                 r"'v3'.*'v9'"):
        ev.evaluate_fusion(rgb, other)


def test_different_labels_are_a_clear_error(two_runs, tmp_path):
    rgb, _ = two_runs
    bad = write_preds(tmp_path / "bad.parquet",
                      [(v, (LABELS[v] + 1) % 3, "fused", FLOW[v]) for v in sorted(LABELS)])
    with pytest.raises(ev.PredictionError, match="disagree on the labels"):
        ev.evaluate_fusion(rgb, bad)


def test_missing_split_names_the_place(two_runs):
    with pytest.raises(ev.PredictionError, match="no val.parquet"):
        ev.evaluate_fusion(*two_runs, split="val")


def test_single_run_scores_every_head(tmp_path):
    rows = [(v, LABELS[v], h, p[v]) for v in LABELS for h, p in
            (("rgb", RGB), ("flow", FLOW), ("fused", RGB))]
    path = write_preds(tmp_path / "run" / "predictions" / "test.parquet", rows)
    report = ev.evaluate_run(tmp_path / "run", out_dir=tmp_path / "out")
    assert list(report.rows) == ["fused", "flow", "rgb"]
    assert report.rows["flow"]["top1"] == 0.75 and report.rows["rgb"]["top1"] == 0.5
    assert (tmp_path / "out" / "confusion_fused.png").is_file()
    # A late-fusion run's own heads, given as both sides.
    fused = ev.evaluate_fusion(path, path, op="sum")
    assert fused.rows["rgb"]["top1"] == 0.5 and fused.rows["flow"]["top1"] == 0.75


def test_prediction_writer_streams_the_rows_prediction_table_builds(tmp_path):
    """Batches of 2 videos into groups of 3: the file holds the same rows as one
    ``prediction_table`` of all videos (a row group per 3 or more videos), and a block that
    fails writes nothing."""
    rng = np.random.default_rng(3)
    ids = [f"v{i}" for i in range(7)]
    labels = rng.integers(0, 3, 7)
    probs = {h: rng.random((7, 3)).astype(np.float32) for h in ("fused", "rgb")}
    target = tmp_path / "out" / "val.parquet"
    with ev.PredictionWriter(target, NAMES, "val", group_videos=3) as w:
        for i in range(0, 7, 2):
            w.add(ids[i:i + 2], labels[i:i + 2], {h: p[i:i + 2] for h, p in probs.items()})
    assert w.videos == 7
    whole = ev.prediction_table(ids, labels, NAMES, "val", probs)
    got = pq.read_table(target)
    key = [("head", "ascending"), ("video_id", "ascending")]
    assert got.sort_by(key).equals(whole.sort_by(key))
    assert pq.ParquetFile(target).metadata.num_row_groups == 2  # 4 videos, then 3: no more held
    assert ev.load_predictions(target, "val").equals(whole.sort_by(key))
    with pytest.raises(RuntimeError, match="midway"):
        with ev.PredictionWriter(tmp_path / "out" / "test.parquet", NAMES, "test", 2) as w:
            w.add(ids[:3], labels[:3], {"fused": probs["fused"][:3]})
            raise RuntimeError("midway")
    assert sorted(p.name for p in target.parent.iterdir()) == ["val.parquet"]


def test_prediction_table_rows_exactly():
    """Every head's rows in video order, labels named, probabilities as float32 lists."""
    probs = {"fused": np.array([[0.5, 0.25, 0.25], [0.0, 0.125, 0.875]]),
             "rgb": np.array([[1.0, 0.0, 0.0], [0.25, 0.5, 0.25]], np.float32)}
    table = ev.prediction_table(np.array(["x", "y"]), [2, 0], NAMES, "val", probs)
    assert table.schema == ev.PREDICTION_SCHEMA
    assert table.to_pylist() == [
        {"video_id": "x", "label": 2, "label_name": "c", "split": "val", "head": "fused",
         "probs": [0.5, 0.25, 0.25]},
        {"video_id": "y", "label": 0, "label_name": "a", "split": "val", "head": "fused",
         "probs": [0.0, 0.125, 0.875]},
        {"video_id": "x", "label": 2, "label_name": "c", "split": "val", "head": "rgb",
         "probs": [1.0, 0.0, 0.0]},
        {"video_id": "y", "label": 0, "label_name": "a", "split": "val", "head": "rgb",
         "probs": [0.25, 0.5, 0.25]},
    ]
    assert ev.prediction_table([], [], NAMES, "test", {"fused": np.zeros((0, 3))}).num_rows == 0
    with pytest.raises(ev.PredictionError, match="label 3 is not one of the 3 classes"):
        ev.prediction_table(["x"], [3], NAMES, "val", {"fused": probs["fused"][:1]})
    with pytest.raises(ev.PredictionError, match="1 video ids for 2 labels"):
        ev.prediction_table(["x"], [0, 1], NAMES, "val", probs)


def test_prediction_writer_sizes_row_groups_by_bytes(tmp_path, monkeypatch):
    """By default a row group holds ``GROUP_BYTES`` of probabilities (at least 64 videos): the
    writer holds no more than that plus a batch, whatever the number of videos."""
    monkeypatch.setattr(ev, "GROUP_BYTES", 100 * 2 * 3 * 4)  # 100 videos of 2 heads x 3 classes
    rng = np.random.default_rng(0)
    target = tmp_path / "test.parquet"
    with ev.PredictionWriter(target, NAMES, "test") as w:
        for start in range(0, 450, 50):
            w.add([f"v{i}" for i in range(start, start + 50)], rng.integers(0, 3, 50),
                  {h: rng.random((50, 3)).astype(np.float32) for h in ("fused", "rgb")})
            assert w._pending_videos < 100
    assert w.group_videos == 100 and w.videos == 450
    meta = pq.ParquetFile(target).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [200] * 4 + [100]
