"""Metrics on a hand-made 3-class, 6-sample example with exact expected values."""

import csv
import io
import warnings

import matplotlib
import numpy as np
import pytest
import torch

from reslstm.metrics import (
    category_accuracy,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    per_class_table,
    plot_confusion,
    RunningScore,
    score,
    topk_accuracy,
)

# 6 samples: class 0 x3 (2 right, 1 taken for class 1), class 1 x2 (1 right, 1 taken for 2),
# class 2 x1 (right).
LABELS = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 2, 2])
CONF = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
NAMES = ["jump", "run", "brush_hair"]


def test_confusion_matrix_rows_are_true_classes():
    conf = confusion_matrix(PRED, LABELS, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, CONF)
    assert conf.sum() == 6
    # also from tensors
    np.testing.assert_array_equal(confusion_matrix(torch.tensor(PRED), torch.tensor(LABELS), 3), CONF)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix([0, 3], [0, 1], 3)


def test_confusion_matrix_refuses_bad_input_naming_the_culprit():
    """Mismatched lengths give both lengths (2 predictions vs 3 labels); an out-of-range value
    names whether the predictions or the labels hold it, with their range."""
    with pytest.raises(ValueError, match=r"^pred and labels differ in length: 2 vs 3$"):
        confusion_matrix([0, 1], [0, 1, 2], 3)
    with pytest.raises(ValueError, match=r"^pred must lie in \[0, 3\), got range \[0, 3\]$"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 3\), got range \[-1, 1\]$"):
        confusion_matrix([0, 1], [-1, 1], 3)


def test_per_class_and_mean_class_accuracy():
    np.testing.assert_allclose(per_class_accuracy(CONF), [2 / 3, 1 / 2, 1.0])
    assert mean_class_accuracy(CONF) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # 13/18
    assert np.trace(CONF) / CONF.sum() == pytest.approx(4 / 6)  # differs from overall accuracy


def test_mean_class_accuracy_skips_absent_classes():
    conf = np.zeros((4, 4), dtype=np.int64)
    conf[:3, :3] = CONF  # class 3 never appears
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its 0 / 0 is NaN without a RuntimeWarning
        acc = per_class_accuracy(conf)
    assert np.isnan(acc[3])
    assert mean_class_accuracy(conf) == pytest.approx(13 / 18)
    with pytest.raises(ValueError, match=r"^mean_class_accuracy: the confusion matrix holds no samples$"):
        mean_class_accuracy(np.zeros((3, 3)))


def test_topk_accuracy_by_hand():
    scores = np.array([
        [0.5, 0.3, 0.2],  # label 1: rank 1
        [0.1, 0.1, 0.8],  # label 2: rank 0
        [0.2, 0.2, 0.6],  # label 0: one higher, the tie with class 1 loses to class 0 -> rank 1
        [0.3, 0.3, 0.4],  # label 1: one higher, tie with lower-index class 0 -> rank 2
    ])
    labels = np.array([1, 2, 0, 1])
    assert topk_accuracy(scores, labels, 1) == 0.25
    assert topk_accuracy(scores, labels, 2) == 0.75
    assert topk_accuracy(scores, labels, 3) == 1.0
    assert topk_accuracy(scores, labels, 5) == 1.0  # k capped at C = 3
    assert topk_accuracy(torch.tensor(scores), torch.tensor(labels), 2) == 0.75
    assert topk_accuracy(scores, labels) == 0.25  # k = 1 by default
    assert topk_accuracy(scores[:1], labels[:1]) == 0.0  # one sample is enough
    assert topk_accuracy(scores[1:2], labels[1:2]) == 1.0
    with pytest.raises(ValueError, match=r"labels \(N,\)"):
        topk_accuracy(scores, labels[:3], 1)  # 3 labels for 4 samples


def test_running_score_over_batches_equals_score_of_all():
    """Uneven batches, ties (quantised scores), 7 classes with one absent: the running
    result is the very floats ``score`` gives on everything at once."""
    rng = np.random.default_rng(11)
    n, c = 203, 7
    probs = np.round(rng.random((n, c)), 1).astype(np.float32)  # many ties
    labels = rng.choice([0, 1, 2, 3, 5, 6], n)
    run = RunningScore(c)
    for lo, hi in [(0, 1), (1, 50), (50, 51), (51, 160), (160, n)]:
        run.add(probs[lo:hi], labels[lo:hi])
    whole = score(probs, labels, c)
    assert run.result() == whole and run.n == n
    assert run.hits[1] == round(whole["top1"] * n) and run.hits[5] == round(whole["top5"] * n)
    np.testing.assert_array_equal(run.conf, confusion_matrix(probs.argmax(1), labels, c))
    with pytest.raises(ValueError, match="^score got no samples$"):
        RunningScore(c).result()


def test_topk_accuracy_refuses_bad_input_with_a_clear_message():
    """Labels outside [0, C) (here a 3 with C = 3), k < 1, no samples and NaN / inf scores are
    refused with messages that give the offending values."""
    scores = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    labels = np.array([1, 2])
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 3\), got range \[1, 3\]$"):
        topk_accuracy(scores, np.array([1, 3]), 1)
    with pytest.raises(ValueError, match=r"^k must be >= 1, got 0$"):
        topk_accuracy(scores, labels, 0)
    with pytest.raises(ValueError, match=r"^topk_accuracy got no samples$"):
        topk_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), 1)
    for bad in (np.nan, np.inf):
        s = scores.copy()
        s[0, 2] = bad
        with pytest.raises(ValueError, match=r"^topk_accuracy got non-finite scores \(NaN or inf\)$"):
            topk_accuracy(s, labels, 1)


def test_score_reports_top1_top5_and_mean_class_accuracy():
    # 7 classes; sample 0 (label 0) has 5 classes above its own (rank 6: out of the top 5),
    # sample 1 (label 6) is right
    probs = np.array([[0.08, 0.3, 0.2, 0.15, 0.1, 0.05, 0.12],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    got = score(probs, np.array([0, 6]))
    assert got == {"top1": 0.5, "top5": 0.5, "mean_class_acc": 0.5}
    # the confusion matrix takes num_classes when given (a class beyond the scores' columns)
    assert score(probs, np.array([0, 6]), num_classes=9)["mean_class_acc"] == 0.5


def test_top1_agrees_with_argmax_confusion_even_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(200, 5)).astype(float)  # many ties
    labels = rng.integers(0, 5, size=200)
    conf = confusion_matrix(scores.argmax(axis=1), labels, 5)
    assert topk_accuracy(scores, labels, 1) == pytest.approx(np.trace(conf) / 200)


def test_category_accuracy():
    category_of = {"jump": "body", "run": "body", "brush_hair": "face"}
    got = category_accuracy(CONF, NAMES, category_of)
    assert got == {"body": pytest.approx(3 / 5), "face": pytest.approx(1.0)}
    with pytest.raises(KeyError) as err:
        category_accuracy(CONF, NAMES, {"jump": "body", "run": "body"})
    assert err.value.args[0] == "classes without a category: ['brush_hair']"
    with pytest.raises(ValueError, match=r"^2 class names for a 3-class confusion matrix$"):
        category_accuracy(CONF, NAMES[:2], category_of)
    # a category whose classes have no samples is left out (not 0 / 0)
    conf = np.zeros((4, 4), dtype=np.int64)
    conf[:3, :3] = CONF
    got = category_accuracy(conf, NAMES + ["yawn"], {**category_of, "yawn": "mouth"})
    assert got == {"body": pytest.approx(3 / 5), "face": pytest.approx(1.0)}


def test_category_accuracy_names_at_most_ten_missing_classes():
    """Classes without a category are listed in the error, the first 10 of them, with " ..."
    only when more than 10 are missing (11 or 12 of 12 classes here, but not exactly 10)."""
    names = [f"c{i:02d}" for i in range(12)]
    conf = np.eye(12, dtype=np.int64)
    first10 = str(names[:10])
    for known, suffix in ((0, " ..."), (1, " ..."), (2, "")):
        category_of = {name: "all" for name in names[12 - known:]}
        with pytest.raises(KeyError) as err:
            category_accuracy(conf, names, category_of)
        assert err.value.args[0] == f"classes without a category: {first10}{suffix}"


def test_per_class_table(tmp_path):
    rows = per_class_table(CONF, NAMES)
    assert rows == [
        {"class": "jump", "support": 3, "correct": 2, "accuracy": pytest.approx(2 / 3)},
        {"class": "run", "support": 2, "correct": 1, "accuracy": 0.5},
        {"class": "brush_hair", "support": 1, "correct": 1, "accuracy": 1.0},
    ]
    with open(tmp_path / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert (tmp_path / "per_class.csv").read_text().splitlines()[0] == "class,support,correct,accuracy"
    with pytest.raises(ValueError, match=r"^4 class names for a 3-class confusion matrix$"):
        per_class_table(CONF, NAMES + ["yawn"])


def test_plot_confusion_101_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 101, size=1000)
    pred = np.where(rng.random(1000) < 0.7, labels, rng.integers(0, 101, size=1000))
    conf = confusion_matrix(pred, labels, 101)
    names = [f"ApplyEyeMakeup_{i:03d}" for i in range(101)]
    backend = matplotlib.rcParams["backend"]
    out = plot_confusion(conf, names, tmp_path / "sub" / "confusion.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 2000 and height >= 2000  # scaled up for 101 names
    assert matplotlib.rcParams["backend"] == backend  # no global backend switch
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(conf, names[:5], tmp_path / "bad.png")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_confusion_small(tmp_path):
    out = plot_confusion(CONF, NAMES, tmp_path / "a" / "b" / "small.png", title="split 1")
    assert out == tmp_path / "a" / "b" / "small.png"  # parent folders made
    assert png_size(out.read_bytes()) == (900, 720)  # (6 + 1.5) x 6 inches at 120 dpi
    buffer = io.BytesIO()  # a binary file object, as storage.Location.open_output gives
    assert plot_confusion(CONF, NAMES, buffer) is buffer
    assert png_size(buffer.getvalue()) == (900, 720)


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_confusion saves, kept instead of rendered (fast)."""
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kw: figures.append(fig))
    return figures


def test_plot_confusion_draws_the_row_normalised_matrix(tmp_path, drawn):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    conf = np.zeros((4, 4), dtype=np.int64)
    conf[:3, :3] = CONF  # class 3 has no samples: its row stays 0
    names = NAMES + ["yawn"]
    plot_confusion(conf, names, tmp_path / "c.png")
    (fig,) = drawn
    assert isinstance(fig.canvas, FigureCanvasAgg)
    ax, bar = fig.axes
    assert ax.get_subplotspec().get_topmost_subplotspec().get_geometry() == (1, 1, 0, 0)
    (image,) = ax.images
    assert not np.ma.is_masked(image.get_array())  # no NaN (a masked cell) for the empty row
    np.testing.assert_allclose(np.ma.getdata(image.get_array()),
                               [[2 / 3, 1 / 3, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert image.get_cmap().name == "Blues" and image.get_clim() == (0.0, 1.0)
    assert image.get_interpolation() == "nearest"
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    # 4 classes: a 6-inch matrix (+1.5 for the colour bar) at 120 dpi, tick labels at 10 pt
    # (the cap), axis labels at 10 pt, the title 1.2 times that
    assert tuple(fig.get_size_inches()) == (7.5, 6.0) and fig.dpi == 120
    assert {(t.get_fontsize(), t.get_rotation()) for t in ax.get_xticklabels()} == {(10.0, 90.0)}
    assert {t.get_fontsize() for t in ax.get_yticklabels()} == {10.0}
    assert (ax.get_xlabel(), ax.xaxis.label.get_fontsize()) == ("predicted class", 10.0)
    assert (ax.get_ylabel(), ax.yaxis.label.get_fontsize()) == ("true class", 10.0)
    assert ax.get_title() == "confusion matrix (rows normalised)"
    assert ax.title.get_fontsize() == pytest.approx(12.0)
    assert bar.get_ylabel() == "fraction of the true class"


def test_plot_confusion_keeps_the_scale_and_a_narrow_colour_bar_of_its_image(tmp_path, drawn):
    """Colours mean fractions whatever the matrix holds: 0 to 1 also when no cell is 0 or 1;
    the colour bar is the image's, narrow and beside the matrix. 101 classes: tick labels at
    560 / 101 pt."""
    plot_confusion(np.array([[1, 1], [1, 3]]), ["a", "b"], tmp_path / "c.png")
    names = [f"c{i:03d}" for i in range(101)]
    plot_confusion(np.eye(101, dtype=np.int64) + 1, names, tmp_path / "d.png")
    for fig in drawn:
        ax, bar = fig.axes
        (image,) = ax.images
        assert image.get_clim() == (0.0, 1.0)
        assert image.colorbar is not None and image.colorbar.ax is bar
        a, b = ax.get_position(), bar.get_position()
        assert 0 < b.width / a.width < 0.1  # fraction=0.046 of the matrix's axes
        assert 0 < b.x0 - a.x1 < 0.03  # pad=0.02: right beside it
    assert {t.get_fontsize() for t in drawn[1].axes[0].get_xticklabels()} == {560.0 / 101}


def test_plot_confusion_scales_with_150_classes(tmp_path, drawn):
    names = [f"class_{i:03d}" for i in range(150)]
    plot_confusion(np.eye(150, dtype=np.int64), names, tmp_path / "c.png", title="split 1")
    (fig,) = drawn
    ax = fig.axes[0]
    # side = 0.2 in x 150 + 3 = 33 in; 560 / 150 = 3.7 pt is raised to the 5 pt floor;
    # axis labels 0.6 x 33 = 19.8 pt
    np.testing.assert_allclose(fig.get_size_inches(), (34.5, 33.0))
    assert {t.get_fontsize() for t in ax.get_xticklabels()} == {5.0}
    assert {t.get_fontsize() for t in ax.get_yticklabels()} == {5.0}
    assert ax.xaxis.label.get_fontsize() == pytest.approx(19.8)
    assert ax.yaxis.label.get_fontsize() == pytest.approx(19.8)
    assert ax.get_title() == "split 1" and ax.title.get_fontsize() == pytest.approx(1.2 * 19.8)


def test_scores_that_carry_a_gradient_are_read_as_they_are():
    """A model's output still attached to its graph (requires_grad) is scored without the
    caller detaching it: top-1 of [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]] against labels [1, 2] is
    1/2, and score() gives the same."""
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], requires_grad=True)
    labels = torch.tensor([1, 2])
    assert topk_accuracy(scores * 1.0, labels) == 0.5
    assert score(scores * 1.0, labels)["top1"] == 0.5


def test_a_confusion_matrix_must_be_square():
    """(2, 3) is no confusion matrix: every reader of one refuses it, naming the shape."""
    for read in (per_class_accuracy, mean_class_accuracy):
        with pytest.raises(ValueError, match=r"^a confusion matrix must be square \(C, C\), got "
                                             r"shape \(2, 3\)$"):
            read(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="must be square"):
        per_class_accuracy(np.zeros((3,), np.int64))
