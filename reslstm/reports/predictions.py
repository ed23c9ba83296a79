"""Prediction tables and their reports: scores per head, late fusion of two runs, confusion
matrices, per-class and per-category accuracy. Pure pyarrow/NumPy; no Ray.

Predictions are Parquet tables (``PREDICTION_SCHEMA``), one row per (video, head):
``video_id``, ``label``, ``label_name``, ``split``, ``head`` and ``probs`` (list<float32>,
the softmax over the classes). A training run writes ``RUN_DIR/predictions/{val,test}.parquet``
with head ``fused`` (the model's combined output) and, for late fusion, ``rgb`` and ``flow``.

- ``prediction_table(video_ids, labels, label_names, split, probs_by_head) -> pa.Table``.
- ``PredictionWriter(target, label_names, split)``: the same rows, written batch by batch.
- ``load_predictions(path, split, head=None) -> pa.Table``: a run directory, its
  ``predictions/`` folder or one Parquet file; ``head`` keeps one head.
- ``evaluate_fusion(rgb, flow, op="product", split="test", out_dir=None, categories=None,
  rgb_head="auto", flow_head="auto") -> Report``: joins the two runs on video_id, fuses their
  probabilities with ``fusion.late_fuse`` and scores rgb, flow and fused.
- ``evaluate_run(path, split="test", out_dir=None, categories=None) -> Report``: every head
  of one run's predictions.
- ``Report``: ``rows`` {name: {top1, top5, mean_class_acc, n}}, ``table()`` (printable),
  ``confusion`` (C, C), ``class_names``, ``files`` {name: path} of the PNG and CSVs.

Paths may be local or filesystem URIs (``s3://bucket/runs/late``; ``reslstm.storage``); each
report file appears whole (written locally under a hidden name and renamed, uploaded once to
object storage). Reports written to ``out_dir``: ``confusion_<name>.png`` (``metrics.plot_confusion``),
``per_class_<name>.csv`` (``metrics.per_class_table``) and, with ``categories``
(``ucf101`` | ``hmdb51`` | ``synthetic``), ``categories_<name>.csv``, for the fused (or only) head.
"""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reslstm import metrics, storage
from reslstm.datasets.categories import categories_for
from reslstm.errors import ConfigError, ReslstmError
from reslstm.fusion import FUSED, LATE_OPS, late_fuse
from reslstm.metrics import score

PREDICTION_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("split", pa.string()),
    ("head", pa.string()),
    ("probs", pa.list_(pa.float32())),
])



class PredictionError(ReslstmError, ValueError):
    """Prediction files that are missing or cannot be compared."""


def prediction_table(video_ids: Sequence[str], labels: Sequence[int], label_names: Sequence[str],
                     split: str, probs_by_head: Mapping[str, np.ndarray]) -> pa.Table:
    """Rows of ``PREDICTION_SCHEMA``: for each head, one row per video with its softmax. Built
    column by column in Arrow (no Python object per video or probability)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n, heads = len(labels), list(probs_by_head)
    ids = video_ids if isinstance(video_ids, pa.Array) else pa.array(
        np.asarray(video_ids, dtype=object) if n else [], pa.string())
    if len(ids) != n:
        raise PredictionError(f"prediction_table: {len(ids)} video ids for {n} labels")
    if n and (labels.min() < 0 or labels.max() >= len(label_names)):
        bad = labels[(labels < 0) | (labels >= len(label_names))][0]
        raise PredictionError(f"prediction_table: label {bad} is not one of the "
                              f"{len(label_names)} classes")
    probs = [np.asarray(probs_by_head[h], np.float32) for h in heads]
    probs = [p.reshape(n, -1) if n else p.reshape(0, p.shape[-1] if p.ndim > 1 else 0) for p in probs]
    width = {p.shape[1] for p in probs}
    if len(width) > 1:
        raise PredictionError(f"prediction_table: heads of different widths {sorted(width)}")
    c = width.pop() if width else 0
    rows = np.tile(np.arange(n), len(heads))
    if len(rows) * c >= 2**31:
        raise PredictionError(f"prediction_table: {len(rows)} rows of {c} probabilities is more "
                              f"than one Arrow list array holds; write them in smaller batches")
    values = pa.array(np.concatenate(probs).reshape(-1) if probs else np.zeros(0, np.float32))
    offsets = pa.array((np.arange(len(rows) + 1, dtype=np.int64) * c).astype(np.int32))
    columns = {
        "video_id": ids.take(pa.array(rows)).cast(pa.string()),
        "label": pa.array(labels[rows].astype(np.int32)),
        "label_name": pa.array(list(label_names), pa.string()).take(pa.array(labels[rows])),
        "split": pa.array(np.full(len(rows), split, dtype=object), pa.string()),
        "head": pa.array(np.repeat(np.array(heads, dtype=object), n), pa.string()),
        "probs": pa.ListArray.from_arrays(offsets, values),
    }
    return pa.Table.from_pydict(columns, schema=PREDICTION_SCHEMA)


GROUP_BYTES = 8 * 2**20  # the probabilities a PredictionWriter holds before writing a row group
_DICTIONARY_COLUMNS = ["video_id", "label_name", "split", "head"]


class PredictionWriter:
    """One split's ``PREDICTION_SCHEMA`` rows written as they come, so a writer of many videos
    holds at most one row group plus one batch of them::

        with PredictionWriter(out.join("test.parquet"), label_names, "test") as w:
            for ids, labels, probs_by_head in batches:
                w.add(ids, labels, probs_by_head)

    A row group (all heads of its videos) is written once the videos held reach
    ``group_videos``; by default as many as fill ``GROUP_BYTES`` (8 MiB) of probabilities,
    at least 64: 1 747 videos of 3 heads over 400 classes. The file appears only when the
    block ends without an error (``storage.Location.open_output``)."""

    def __init__(self, target, label_names: Sequence[str], split: str,
                 group_videos: int | None = None):
        self.target = storage.resolve(target)
        self.label_names, self.split = label_names, split
        self.group_videos = int(group_videos) if group_videos else None
        self.videos = 0
        self._pending: list[tuple[Sequence[str], np.ndarray, Mapping[str, np.ndarray]]] = []
        self._pending_videos = 0
        self._stack: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> "PredictionWriter":
        self._stack = contextlib.ExitStack()
        f = self._stack.enter_context(self.target.open_output())
        # Probabilities are not dictionary-encoded: random floats would fill a hash table.
        self._writer = pq.ParquetWriter(f, PREDICTION_SCHEMA, use_dictionary=_DICTIONARY_COLUMNS)
        self._stack.callback(self._writer.close)
        return self

    def add(self, video_ids: Sequence[str], labels: Sequence[int],
            probs_by_head: Mapping[str, np.ndarray]) -> None:
        if self.group_videos is None and len(video_ids):
            per_video = sum(np.asarray(p[:1]).size for p in probs_by_head.values()) * 4
            self.group_videos = max(64, GROUP_BYTES // max(per_video, 1))
        self._pending.append((list(video_ids), np.asarray(labels, np.int64), dict(probs_by_head)))
        self._pending_videos += len(video_ids)
        self.videos += len(video_ids)
        if self.group_videos and self._pending_videos >= self.group_videos:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        heads = list(self._pending[0][2])
        ids = [v for p in self._pending for v in p[0]]
        labels = np.concatenate([p[1] for p in self._pending])
        probs = {h: np.concatenate([p[2][h] for p in self._pending]) for h in heads}
        self._writer.write_table(prediction_table(ids, labels, self.label_names, self.split, probs))
        self._pending, self._pending_videos = [], 0

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._flush()
        return self._stack.__exit__(exc_type, exc, tb)


# ---------------------------------------------------------------------------------------------
# Reading predictions
# ---------------------------------------------------------------------------------------------

def _prediction_locations(path, split: str) -> list[storage.Location]:
    loc = storage.resolve(path)
    if loc.is_file():
        return [loc]
    for folder in (loc.join("predictions"), loc):
        if folder.join(f"{split}.parquet").is_file():
            return [folder.join(f"{split}.parquet")]
    raise PredictionError(f"{loc}: no {split}.parquet here nor in {loc.join('predictions')}; "
                          "pass a run directory written by jobs/train.py or a predictions file")


def prediction_files(path, split: str) -> list[Path | str]:
    """The Parquet file(s) of ``split`` under a run directory, a predictions folder or a file
    (local ``Path``s, or URIs without options for files on object storage)."""
    return [Path(loc.path) if loc.local else loc.uri for loc in _prediction_locations(path, split)]


def load_predictions(path, split: str = "test", head: str | None = None) -> pa.Table:
    """Rows of ``split`` (and ``head``) from ``path`` (a path or URI), sorted by (head,
    video_id)."""
    locs = _prediction_locations(path, split)
    files = [loc.uri for loc in locs]
    tables = []
    for loc in locs:
        try:
            tables.append(pq.read_table(loc.path, filesystem=loc.filesystem))
        except pa.ArrowInvalid as exc:  # not Parquet, or a damaged file
            raise PredictionError(f"{loc.uri}: not a readable Parquet file ({exc})") from None
    table = pa.concat_tables(tables)
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

    def text(self) -> str:
        """The whole report as a person reads it: split, table, categories, files."""
        lines = [f"{self.split} ({len(self.class_names)} classes)", self.table()]
        lines += [f"  {name:<45} {100 * acc:6.2f}%" for name, acc in sorted(self.categories.items())]
        lines += [f"{name}: {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def _write_reports(report: Report, name: str, probs: np.ndarray, labels: np.ndarray,
                   out_dir, categories: str | None) -> None:
    c = len(report.class_names)
    conf = metrics.confusion_matrix(probs.argmax(axis=1), labels, c)
    report.confusion = conf
    out = storage.resolve(out_dir)
    out.mkdir()
    png = out.join(f"confusion_{name}.png")
    with png.open_output() as f:
        metrics.plot_confusion(conf, report.class_names, f,
                               title=f"{name} ({report.split}) confusion, rows normalised")
    report.files[f"confusion_{name}"] = png.uri
    per_class = out.join(f"per_class_{name}.csv")
    _write_csv(per_class, metrics.per_class_table(conf, report.class_names))
    report.files[f"per_class_{name}"] = per_class.uri
    if categories:
        mapping = categories_for(categories)
        try:
            report.categories = metrics.category_accuracy(conf, report.class_names, mapping)
        except KeyError as exc:
            raise PredictionError(f"--categories {categories}: {exc.args[0]}; the predictions "
                                  f"are not of the {categories} classes") from None
        cat_csv = out.join(f"categories_{name}.csv")
        _write_csv(cat_csv, [{"category": k, "accuracy": v}
                             for k, v in sorted(report.categories.items())])
        report.files[f"categories_{name}"] = cat_csv.uri


def _write_csv(loc: storage.Location, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["class"])
    writer.writeheader()
    writer.writerows(rows)
    loc.write_text(text.getvalue())


def evaluate_run(path, split: str = "test", out_dir=None,
                 categories: str | None = None) -> Report:
    """Score every head of one run's predictions; reports for the fused head."""
    table = load_predictions(path, split)
    heads = heads_of(table)
    where = str(_prediction_locations(path, split)[0])
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
        raise ConfigError(f"unknown late fusion {op!r}; valid: {', '.join(LATE_OPS)}")
    sides = {}
    for stream, path, head in (("rgb", rgb, rgb_head), ("flow", flow, flow_head)):
        where = str(_prediction_locations(path, split)[0])
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
