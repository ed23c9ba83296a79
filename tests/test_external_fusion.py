"""reslstm.reports.external_fusion (with reslstm.reports.confusion_change) and jobs/evaluate.py --external:
our softmax fused with another model's per-video scores, matched by class name and video id,
on numbers computed by hand."""

import csv
import importlib
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reslstm.reports import confusion_change as cc
from reslstm.reports import external_fusion as xf
from reslstm.reports.predictions import PredictionError, prediction_table

REPO = Path(__file__).resolve().parents[1]
NAMES = ["a", "b", "c", "d"]

# Ours (head "fused"): v1 only here; v2 and v4 wrong, v3 and v6 right.
LABELS = {"v1": 0, "v2": 0, "v3": 1, "v4": 2, "v6": 3}
OURS = {"v1": [0.7, 0.1, 0.1, 0.1], "v2": [0.4, 0.5, 0.05, 0.05], "v3": [0.2, 0.6, 0.1, 0.1],
        "v4": [0.5, 0.1, 0.3, 0.1], "v6": [0.1, 0.2, 0.1, 0.6]}
# Theirs, per class name: v5 only here; v2 and v4 right, v3 and v6 wrong.
THEIRS = {"v2": [0.6, 0.2, 0.1, 0.1], "v3": [0.5, 0.4, 0.05, 0.05], "v4": [0.1, 0.1, 0.7, 0.1],
          "v5": [0.25, 0.25, 0.25, 0.25], "v6": [0.1, 0.8, 0.05, 0.05]}
# Product by hand, on the videos of both (v2, v3, v4, v6):
#   v2 (.4 .5 .05 .05) x (.6 .2 .1 .1)   = (.24 .10 .005 .005) / .35  -> a, right (ours: wrong)
#   v3 (.2 .6 .1 .1)   x (.5 .4 .05 .05) = (.10 .24 .005 .005) / .35  -> b, right
#   v4 (.5 .1 .3 .1)   x (.1 .1 .7 .1)   = (.05 .01 .21 .01)   / .28  -> c, right (ours: wrong)
#   v6 (.1 .2 .1 .6)   x (.1 .8 .05 .05) = (.01 .16 .005 .03)  / .205 -> b, wrong (ours: right)
PRODUCT = {"v2": np.array([.24, .10, .005, .005]) / .35,
           "v3": np.array([.10, .24, .005, .005]) / .35,
           "v4": np.array([.05, .01, .21, .01]) / .28,
           "v6": np.array([.01, .16, .005, .03]) / .205}
COMMON = ["v2", "v3", "v4", "v6"]
# Columns shuffled, an extra class, rows in another order: only names and ids may match them.
COLUMNS = ["d", "b", "zz_other_model_class", "a", "c"]
ROWS = ["v6", "v3", "v5", "v2", "v4"]


def write_ours(path, head="fused"):
    ids = sorted(OURS)
    table = prediction_table(ids, [LABELS[v] for v in ids], NAMES, "test",
                             {head: np.array([OURS[v] for v in ids])})
    pq.write_table(table, path)
    return path


def external_columns(transform=lambda p: p, rows=ROWS) -> dict:
    cols = {"video_id": list(rows)}
    for name in COLUMNS:
        j = NAMES.index(name) if name in NAMES else None
        cols[name] = [float(transform(np.array(THEIRS[v]))[j]) if j is not None else 9.0
                      for v in rows]
    return cols


def write_external(path, cols: dict):
    if str(path).endswith(".csv"):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(cols))
            w.writerows(zip(*cols.values()))
    else:
        pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture
def files(tmp_path):
    return (write_ours(tmp_path / "ours.parquet"),
            write_external(tmp_path / "theirs.parquet", external_columns()))


def test_product_fusion_equals_the_hand_computation(files):
    report = xf.evaluate_external(*files, op="product")
    assert report.video_ids == COMMON
    np.testing.assert_allclose(report.probs, [PRODUCT[v] for v in COMMON], rtol=1e-5)
    assert report.rows["ours-fused"] == pytest.approx(
        {"top1": 0.5, "top5": 1.0, "mean_class_acc": 0.5, "n": 4})
    assert report.rows["external"] == pytest.approx(
        {"top1": 0.5, "top5": 1.0, "mean_class_acc": 0.5, "n": 4})
    assert report.rows["fused-ext-product"] == pytest.approx(
        {"top1": 0.75, "top5": 1.0, "mean_class_acc": 0.75, "n": 4})
    # With v1 (right): classes a 1/2, b 1/1, c 0/1, d 1/1.
    assert report.rows["ours-fused (all)"] == pytest.approx(
        {"top1": 0.6, "top5": 1.0, "mean_class_acc": 0.625, "n": 5})
    np.testing.assert_array_equal(report.confusion, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                     [0, 1, 0, 0]])
    # a and c improved, b stayed, d got worse; most improved first.
    assert report.change_counts() == {"improved": 2, "unchanged": 1, "worse": 1}
    assert [(r["class"], r["change"]) for r in report.changes] == [
        ("a", 1.0), ("c", 1.0), ("b", 0.0), ("d", -1.0)]
    # The extra column is ignored, and the report says so.
    assert any("zz_other_model_class" in n and "ignored" in n for n in report.notes)


@pytest.mark.parametrize("op, weight, v6", [
    ("sum", 1.0, [0.1, 0.5, 0.075, 0.325]),                       # (ours + theirs) / 2
    ("weighted", 3.0, [0.1, 0.65, 0.0625, 0.1875]),               # (1 ours + 3 theirs) / 4
])
def test_sum_and_weighted_fusion_by_hand(files, op, weight, v6):
    report = xf.evaluate_external(*files, op=op, weight=weight)
    np.testing.assert_allclose(report.probs[COMMON.index("v6")], v6, rtol=1e-5)


def test_videos_missing_on_both_sides_are_counted_and_listed(files, tmp_path):
    report = xf.evaluate_external(*files, out_dir=tmp_path / "out")
    assert (report.only_ours, report.only_external) == (["v1"], ["v5"])
    text = report.text()
    assert "4 in both are fused and scored" in text
    assert "1 only in our predictions, left out (e.g. 'v1')" in text
    assert "1 only in the external file, left out (e.g. 'v5')" in text
    assert "2 improved, 1 unchanged, 1 worse" in text
    with open(tmp_path / "out" / "missing_videos.csv") as f:
        assert [(r["video_id"], r["only_in"]) for r in csv.DictReader(f)] == [
            ("v1", "ours"), ("v5", "external")]


def test_logits_are_softmaxed_and_unnormalised_probabilities_renormalised(files, tmp_path):
    expected = xf.evaluate_external(*files).probs
    logits = write_external(tmp_path / "logits.parquet",
                            external_columns(lambda p: np.log(p) - 3.0))  # all negative
    np.testing.assert_allclose(xf.evaluate_external(files[0], logits, scores="logits").probs,
                               expected, rtol=1e-5)
    with pytest.raises(PredictionError,
                       match=r"logits\.parquet.*negative.*--external-scores logits"):
        xf.evaluate_external(files[0], logits, scores="probs")
    doubled = write_external(tmp_path / "doubled.parquet", external_columns(lambda p: 2 * p))
    report = xf.evaluate_external(files[0], doubled)
    np.testing.assert_allclose(report.probs, expected, rtol=1e-5)
    assert any("did not sum to 1" in n and "renormalised" in n for n in report.notes)


def test_class_change_and_counts_by_hand():
    before = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 0]])   # a 2/3, b 1/2, c no videos
    after = np.array([[3, 0, 0], [1, 0, 1], [0, 0, 0]])    # a 3/3, b 0/2
    rows = cc.class_change(before, after, ["a", "b", "c"])
    assert [(r["class"], r["before_correct"], r["after_correct"]) for r in rows] == [
        ("a", 2, 3), ("b", 1, 0), ("c", 0, 0)]
    assert rows[0]["change"] == pytest.approx(1 / 3) and rows[1]["change"] == -0.5
    assert np.isnan(rows[2]["change"])
    assert cc.change_counts(rows) == {"improved": 1, "unchanged": 0, "worse": 1}
    with pytest.raises(ValueError, match="not of the same videos"):
        cc.class_change(before, after.T, ["a", "b", "c"])


def test_to_probabilities_by_hand():
    probs, notes = xf.to_probabilities(np.array([[0.0, np.log(3.0)]]), "logits", "f", ["v"])
    np.testing.assert_allclose(probs, [[0.25, 0.75]], rtol=1e-6)
    probs, notes = xf.to_probabilities(np.array([[1.0, 3.0], [0.5, 0.5]]), "probs", "f", ["v", "w"])
    np.testing.assert_allclose(probs, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)
    assert notes == ["1 of 2 external rows did not sum to 1 over our classes (sums 1 to 4): "
                     "renormalised"]


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("c"), r"1 of our 4 classes have no column: 'c'"),
    (lambda c: c.update(C=c.pop("c")), r"'c' ~ 'C'"),  # a hint for a case mismatch
    (lambda c: c.pop("video_id"), r"no video_id column"),
    (lambda c: c.update(video_id=["v6", "v3", "v3", "v2", "v4"]),
     r"1 video ids appear more than once \('v3'\)"),
    (lambda c: c["b"].__setitem__(1, float("nan")),  # ROWS[1] is v3
     r"1 scores are missing, NaN or infinite \(e\.g\. video 'v3', class 'b'\)"),
    (lambda c: c.update(a=["x"] * 5), r"column 'a' is not numeric \(string, e\.g\. 'x'\)"),
])
def test_bad_external_files_are_refused_naming_the_file(files, tmp_path, change, message):
    cols = external_columns()
    change(cols)
    bad = write_external(tmp_path / "bad.parquet", cols)
    with pytest.raises(PredictionError, match=rf"bad\.parquet: .*{message}"):
        xf.evaluate_external(files[0], bad)


def test_no_common_video_is_an_error_naming_both_files(files, tmp_path):
    cols = external_columns()
    cols["video_id"] = [f"{v}.avi" for v in cols["video_id"]]
    other = write_external(tmp_path / "other.parquet", cols)
    with pytest.raises(PredictionError,
                       match=r"ours\.parquet and .*other\.parquet share no test video"):
        xf.evaluate_external(files[0], other)


# ---------------------------------------------------------------------------------------------
# jobs/evaluate.py --external
# ---------------------------------------------------------------------------------------------

def evaluate_job():
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        sys.modules.pop("evaluate", None)
        return importlib.import_module("evaluate")
    finally:
        sys.path.remove(str(REPO / "jobs"))


def test_job_fuses_a_csv_and_writes_the_fig6_reports(tmp_path, capsys):
    ours = write_ours(tmp_path / "ours.parquet")
    theirs = write_external(tmp_path / "theirs.csv", external_columns())
    out = tmp_path / "out"
    code = evaluate_job().main(["--predictions", str(ours), "--external", str(theirs),
                                "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "fused-ext-product  75.00%" in printed and "2 improved, 1 unchanged, 1 worse" in printed
    assert "1 only in our predictions" in printed and "1 only in the external file" in printed
    for name in ["confusion_fused-ext-product", "confusion_ours-fused",
                 "confusion_change_fused-ext-product", "per_class_change_fused-ext-product"]:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with open(out / "per_class_change_fused-ext-product.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class"], r["before_correct"], r["after_correct"]) for r in rows] == [
        ("a", "0", "1"), ("c", "0", "1"), ("b", "1", "1"), ("d", "1", "0")]


def test_job_weighted_and_head_options(tmp_path, capsys):
    ours = write_ours(tmp_path / "ours.parquet", head="rgb")
    theirs = write_external(tmp_path / "theirs.parquet", external_columns())
    code = evaluate_job().main(["--predictions", str(ours), "--external", str(theirs),
                                "--head", "rgb", "--external-fusion", "weighted",
                                "--external-weight", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "weighted fusion (ours 1, external 3)" in printed and "ours-rgb " in printed


@pytest.mark.parametrize("drop, message", [("c", "have no column: 'c'"),
                                           (None, "video ids appear more than once")])
def test_job_bad_external_file_exits_2_naming_it(tmp_path, capsys, drop, message):
    ours = write_ours(tmp_path / "ours.parquet")
    cols = external_columns()
    if drop:
        cols.pop(drop)
    else:
        cols["video_id"][0] = cols["video_id"][1]
    bad = write_external(tmp_path / "bad.csv", cols)
    assert evaluate_job().main(["--predictions", str(ours), "--external", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluate: ") and str(bad) in err and message in err


@pytest.mark.parametrize("argv", [
    ["--rgb", "r", "--flow", "f", "--external", "x.csv"],
    ["--predictions", "p", "--external", "x.csv", "--external-weight", "2"],
    ["--predictions", "p", "--head", "rgb"],
])
def test_job_option_mistakes_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate_job().main(argv)
    assert exc.value.code == 2 and "--external" in capsys.readouterr().err
