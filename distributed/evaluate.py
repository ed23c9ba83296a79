"""Evaluation of stored predictions: scores, late fusion of two runs, and reports.

Predictions are Parquet tables (``PREDICTION_SCHEMA``), one row per (video, head):
``video_id``, ``label``, ``label_name``, ``split``, ``head`` and ``probs`` (list<float32>,
the softmax over the classes). A training run writes ``RUN_DIR/predictions/{val,test}.parquet``
with head ``fused`` (the model's combined output) and, for late fusion, ``rgb`` and ``flow``.

Python API (``reslstm.distributed.evaluate``):

- ``predict(model, datasets, label_names, out_dir) -> ({split: path}, {split: {head: scores}})``:
  write the prediction tables of a model (e.g. ``train.load_checkpoint``) on built datasets.
- ``load_predictions(path, split, head=None) -> pa.Table``: a run directory, its
  ``predictions/`` folder or one Parquet file; ``head`` keeps one head.
- ``score(probs (N, C), labels (N,), num_classes) -> dict``: top1, top5, mean_class_acc.
- ``evaluate_fusion(rgb, flow, op="product", split="test", out_dir=None, categories=None,
  rgb_head="auto", flow_head="auto") -> Report``: joins the two runs on video_id, fuses their
  probabilities with ``fusion.late_fuse`` and scores rgb, flow and fused.
- ``evaluate_run(path, split="test", out_dir=None, categories=None) -> Report``: every head
  of one run's predictions.
- ``Report``: ``rows`` {name: {top1, top5, mean_class_acc, n}}, ``table()`` (printable),
  ``confusion`` (C, C), ``class_names``, ``files`` {name: path} of the PNG and CSVs.

Reports written to ``out_dir``: ``confusion_<name>.png`` (``metrics.plot_confusion``),
``per_class_<name>.csv`` (``metrics.per_class_table``) and, with ``categories``
(``ucf101`` | ``hmdb51`` | ``synthetic``), ``categories_<name>.csv``, for the fused (or only) head.
"""

from __future__ import annotations

import csv
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from reslstm import features as fs
from reslstm import metrics
from reslstm.fusion import LATE_OPS, late_fuse
from reslstm.model import ActionModel

if TYPE_CHECKING:
    import ray.data

PREDICTION_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("split", pa.string()),
    ("head", pa.string()),
    ("probs", pa.list_(pa.float32())),
])
FUSED = "fused"


class PredictionError(ValueError):
    """Prediction files that are missing or cannot be compared."""


def score(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """top1, top5 and mean class accuracy of probabilities (N, C) against labels (N,)."""
    conf = metrics.confusion_matrix(np.asarray(probs).argmax(axis=1), labels, num_classes)
    return {"top1": metrics.topk_accuracy(probs, labels, 1),
            "top5": metrics.topk_accuracy(probs, labels, 5),
            "mean_class_acc": metrics.mean_class_accuracy(conf)}


# ---------------------------------------------------------------------------------------------
# Writing predictions
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: ActionModel, datasets: dict[str, "ray.data.Dataset"],
            label_names: Sequence[str], out_dir, batch_size: int = 64
            ) -> tuple[dict[str, str], dict[str, dict[str, dict[str, float]]]]:
    """Write ``out_dir/<split>.parquet`` (PREDICTION_SCHEMA) for each dataset and score it.

    Heads: ``fused`` = ``model.probabilities`` (the only head of single-stream and mid
    models; the late fusion of the two softmaxes otherwise), plus ``rgb`` and ``flow`` (each
    network's softmax) for late fusion. Returns ({split: path}, {split: {head: scores}}).
    """
    model.eval()
    streams, heads = model.streams, model.heads
    late = model.late is not None
    paths, scores = {}, {}
    for split, ds in datasets.items():
        cols: dict[str, list] = {n: [] for n in PREDICTION_SCHEMA.names}
        per_head: dict[str, list[np.ndarray]] = {}
        labels_all = []
        for b in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            inputs = {s: torch.tensor(b[s], dtype=torch.float32) for s in streams}
            logits = model(inputs)
            out = {FUSED: model.probabilities(logits)}
            if late:
                out.update({h: torch.softmax(logits[h], dim=-1) for h in heads})
            labels = b["label"].astype(np.int64)
            labels_all.append(labels)
            for head, p in out.items():
                p = p.float().numpy()
                per_head.setdefault(head, []).append(p)
                cols["video_id"] += list(b["video_id"])
                cols["label"] += labels.tolist()
                cols["label_name"] += [label_names[i] for i in labels]
                cols["split"] += [split] * len(labels)
                cols["head"] += [head] * len(labels)
                cols["probs"] += list(p)
        table = pa.Table.from_pydict(
            {n: pa.array(cols[n], PREDICTION_SCHEMA.field(n).type) for n in cols},
            schema=PREDICTION_SCHEMA)
        paths[split] = str(fs.write_part(out_dir, table, name=f"{split}.parquet"))
        y = np.concatenate(labels_all)
        scores[split] = {h: score(np.concatenate(ps), y, len(label_names))
                         for h, ps in per_head.items()}
    return paths, scores


# ---------------------------------------------------------------------------------------------
# Reading predictions
# ---------------------------------------------------------------------------------------------

def prediction_files(path, split: str) -> list[Path]:
    """The Parquet file(s) of ``split`` under a run directory, a predictions folder or a file."""
    path = Path(path)
    if path.is_file():
        return [path]
    for folder in (path / "predictions", path):
        if (folder / f"{split}.parquet").is_file():
            return [folder / f"{split}.parquet"]
    raise PredictionError(f"{path}: no {split}.parquet here nor in {path / 'predictions'}; "
                          "pass a run directory written by jobs/train.py or a predictions file")


def load_predictions(path, split: str = "test", head: str | None = None) -> pa.Table:
    """Rows of ``split`` (and ``head``) from ``path``, sorted by (head, video_id)."""
    files = prediction_files(path, split)
    table = pa.concat_tables(pq.read_table(f) for f in files)
    missing = set(PREDICTION_SCHEMA.names) - set(table.column_names)
    if missing:
        raise PredictionError(f"{files[0]}: not a predictions file (lacks {sorted(missing)})")
    table = table.filter(pc.equal(table.column("split"), split))
    if head is not None:
        heads = sorted(set(table.column("head").to_pylist()))
        if head not in heads:
            raise PredictionError(f"{files[0]}: no head {head!r} in the {split} predictions "
                                  f"(heads: {heads})")
        table = table.filter(pc.equal(table.column("head"), head))
    if table.num_rows == 0:
        raise PredictionError(f"{files[0]}: no {split} predictions")
    return table.sort_by([("head", "ascending"), ("video_id", "ascending")])


def heads_of(table: pa.Table) -> list[str]:
    """Heads present, ``fused`` first."""
    heads = set(table.column("head").to_pylist())
    return sorted(heads, key=lambda h: (h != FUSED, h))


def _arrays(table: pa.Table, where: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(video ids, probs (N, C) float32, labels (N,)) of a one-head table."""
    ids = table.column("video_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise PredictionError(f"{where}: a video appears twice for one head")
    lengths = set(pc.list_value_length(table.column("probs")).to_pylist())
    if len(lengths) != 1:
        raise PredictionError(f"{where}: probability vectors of different lengths {sorted(lengths)}")
    probs = np.asarray(table.column("probs").to_pylist(), np.float32)
    return ids, probs, np.asarray(table.column("label").to_pylist(), np.int64)


def class_names_of(table: pa.Table, num_classes: int) -> list[str]:
    """Class names indexed by label, from the rows' (label, label_name) pairs."""
    names = {int(i): n for i, n in zip(table.column("label").to_pylist(),
                                       table.column("label_name").to_pylist())}
    return [names.get(i, f"class_{i}") for i in range(num_classes)]


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

@dataclass
class Report:
    """Scores per stream / head, and where the report files went."""

    split: str
    rows: dict[str, dict[str, float]]
    class_names: list[str]
    confusion: np.ndarray | None = None
    categories: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'':<16} {'top-1':>7} {'top-5':>7} {'mean cls':>8} {'videos':>7}"]
        for name, r in self.rows.items():
            lines.append(f"{name:<16} {100 * r['top1']:>6.2f}% {100 * r['top5']:>6.2f}% "
                         f"{100 * r['mean_class_acc']:>7.2f}% {int(r['n']):>7d}")
        return "\n".join(lines)


def _category_map(dataset: str) -> dict[str, str] | None:
    """class -> category for ``dataset`` from ``reslstm.datasets.categories`` (None when that
    module is not available)."""
    try:
        module = importlib.import_module("reslstm.datasets.categories")
    except ImportError:
        return None
    return module.categories_for(dataset)


def _write_reports(report: Report, name: str, probs: np.ndarray, labels: np.ndarray,
                   out_dir, categories: str | None) -> None:
    c = len(report.class_names)
    conf = metrics.confusion_matrix(probs.argmax(axis=1), labels, c)
    report.confusion = conf
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = metrics.plot_confusion(conf, report.class_names, out / f"confusion_{name}.png",
                                 title=f"{name} ({report.split}) confusion, rows normalised")
    report.files[f"confusion_{name}"] = str(png)
    per_class = out / f"per_class_{name}.csv"
    _write_csv(per_class, metrics.per_class_table(conf, report.class_names))
    report.files[f"per_class_{name}"] = str(per_class)
    if categories:
        mapping = _category_map(categories)
        if mapping is None:
            print("note: reslstm.datasets.categories is not installed; per-category accuracy "
                  "skipped")
            return
        try:
            report.categories = metrics.category_accuracy(conf, report.class_names, mapping)
        except KeyError as exc:
            raise PredictionError(f"--categories {categories}: {exc.args[0]}; the predictions "
                                  f"are not of the {categories} classes") from None
        cat_csv = out / f"categories_{name}.csv"
        _write_csv(cat_csv, [{"category": k, "accuracy": v}
                             for k, v in sorted(report.categories.items())])
        report.files[f"categories_{name}"] = str(cat_csv)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["class"])
        writer.writeheader()
        writer.writerows(rows)


def evaluate_run(path, split: str = "test", out_dir=None,
                 categories: str | None = None) -> Report:
    """Score every head of one run's predictions; reports for the fused head."""
    table = load_predictions(path, split)
    heads = heads_of(table)
    where = str(prediction_files(path, split)[0])
    rows, arrays = {}, {}
    for h in heads:
        _, probs, labels = _arrays(table.filter(pc.equal(table.column("head"), h)), where)
        arrays[h] = (probs, labels)
        rows[h] = {**score(probs, labels, probs.shape[1]), "n": len(labels)}
    first = heads[0]
    report = Report(split, rows, class_names_of(table, arrays[first][0].shape[1]))
    if out_dir is not None:
        _write_reports(report, first, *arrays[first], out_dir, categories)
    return report


def _pick_head(table: pa.Table, stream: str, head: str, where: str) -> str:
    heads = heads_of(table)
    if head == "auto":
        return stream if stream in heads else FUSED
    if head not in heads:
        raise PredictionError(f"{where}: no head {head!r} (heads: {heads})")
    return head


def evaluate_fusion(rgb, flow, op: str = "product", split: str = "test", out_dir=None,
                    categories: str | None = None, rgb_head: str = "auto",
                    flow_head: str = "auto", w_rgb: float = 1.0, w_flow: float = 1.5) -> Report:
    """Late fusion of an RGB run's and a flow run's predictions (paths), joined on video_id.

    ``*_head="auto"`` takes the run's own stream head when it has one (a late-fusion run) and
    its ``fused`` head otherwise (a single-stream run). Raises ``PredictionError`` naming the
    files when they cover different videos, labels or classes.
    """
    if op not in LATE_OPS:
        raise ValueError(f"unknown late fusion {op!r}; valid: {', '.join(LATE_OPS)}")
    sides = {}
    for stream, path, head in (("rgb", rgb, rgb_head), ("flow", flow, flow_head)):
        where = str(prediction_files(path, split)[0])
        table = load_predictions(path, split)
        h = _pick_head(table, stream, head, where)
        sub = table.filter(pc.equal(table.column("head"), h))
        sides[stream] = (where, sub, *_arrays(sub, where))
    (wr, tr, ids_r, pr, yr), (wf, tf, ids_f, pf, yf) = sides["rgb"], sides["flow"]
    if ids_r != ids_f:
        only_r, only_f = sorted(set(ids_r) - set(ids_f)), sorted(set(ids_f) - set(ids_r))
        raise PredictionError(
            f"{wr} and {wf} cover different {split} videos: {len(only_r)} only in the first "
            f"(e.g. {only_r[:3]}), {len(only_f)} only in the second (e.g. {only_f[:3]}); "
            "evaluate runs trained on the same feature store and split")
    if pr.shape[1] != pf.shape[1]:
        raise PredictionError(f"{wr} has {pr.shape[1]} classes, {wf} has {pf.shape[1]}")
    names_r, names_f = class_names_of(tr, pr.shape[1]), class_names_of(tf, pf.shape[1])
    if names_r != names_f or not np.array_equal(yr, yf):
        raise PredictionError(f"{wr} and {wf} disagree on the labels or class names of the "
                              "same videos; they come from different label sets")
    fused = late_fuse(pr, pf, op, w_rgb=w_rgb, w_flow=w_flow)
    rows = {"rgb": {**score(pr, yr, pr.shape[1]), "n": len(yr)},
            "flow": {**score(pf, yf, pf.shape[1]), "n": len(yf)},
            f"{FUSED}-{op}": {**score(fused, yr, pr.shape[1]), "n": len(yr)}}
    report = Report(split, rows, names_r)
    if out_dir is not None:
        _write_reports(report, f"{FUSED}-{op}", fused, yr, out_dir, categories)
    return report
