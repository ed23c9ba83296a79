"""Late fusion of our per-video softmax with another model's scores (the paper's Table 5,
"Res-LSTM (.) IDT"), reported as the paper's Fig. 6. Pure pyarrow/NumPy; no Ray.

The external file (Parquet, recognised by its magic bytes, or CSV; ``.tsv`` tab-separated; a
path or URI) has a ``video_id`` column and one numeric column per class, named as ours. Each
broken rule below is a ``PredictionError`` naming the file.

- Classes are matched by NAME, never by position. Each class of ours needs a column (missing
  ones are listed); other columns (a model of more classes) are IGNORED and named in a note:
  renormalising over our classes conditions the external model on them.
- ``scores="probs"`` (default): non-negative, rows renormalised (a note when they did not sum
  to 1); ``"logits"`` (or SVM margins): softmaxed. Missing/NaN/infinite or non-numeric scores
  and duplicate video ids are refused.
- Videos join on ``video_id``; only those of both sides are fused and scored (all rows of the
  table on the same videos, plus our head on all of its own). Videos of one side only are
  counted, quoted in the text and listed in ``missing_videos.csv``: never silently dropped.
- Fusion is ``fusion.late_fuse`` (ours first, theirs second): product, sum, or weighted
  (ours 1, theirs ``weight``).

- ``read_external(path, class_names, scores="probs") -> ExternalScores``;
  ``to_probabilities(values, scores, where, video_ids) -> (probs, notes)``.
- ``evaluate_external(predictions, external, op="product", split="test", head="fused",
  scores="probs", weight=1.0, out_dir=None, categories=None) -> ExternalReport`` (a
  ``predictions.Report`` with the fused ``probs``, ``only_ours``, ``only_external``, ``notes``
  and ``changes``: ``confusion_change.class_change`` of ours -> fused).

Files in ``out_dir`` (NAME = ``fused-ext-<op>``), as Fig. 6: ``confusion_<NAME>.png``,
``confusion_ours-<head>.png`` (the same videos), ``confusion_change_<NAME>.png`` (fused minus
ours), ``per_class_change_<NAME>.csv`` and ``.png`` (before = ours, after = fused, most improved
first), and ``missing_videos.csv`` when some videos are on one side only.
"""

from __future__ import annotations

import collections
import csv
import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from reslstm import metrics, storage
from reslstm.datasets.categories import categories_for
from reslstm.errors import ConfigError
from reslstm.fusion import FUSED, LATE_OPS, late_fuse
from reslstm.reports.confusion_change import (change_counts, class_change, plot_class_change,
                                              plot_confusion_change)
from reslstm.reports.predictions import (PredictionError, Report, class_names_of, load_predictions,
                                         prediction_files)

SCORE_KINDS = ("probs", "logits")
DEFAULT_SCORES = "probs"
EXAMPLES = 3  # ids or names quoted in a message


def _some(items: Sequence, k: int = EXAMPLES) -> str:
    return ", ".join(map(repr, list(items)[:k])) + (", ..." if len(items) > k else "")


@dataclass
class ExternalScores:
    """Probabilities (N, C) float32 in our class order, one row per ``video_ids`` entry."""

    source: str
    video_ids: list[str]
    probs: np.ndarray
    notes: list[str] = field(default_factory=list)


def _read_table(loc: storage.Location) -> pa.Table:
    data = loc.read_bytes()
    parquet = data[:4] == b"PAR1"
    try:
        if parquet:
            return pq.read_table(pa.BufferReader(data))
        if loc.name.lower().endswith((".parquet", ".pq")):
            raise PredictionError(f"{loc}: not a Parquet file (no PAR1 magic bytes)")
        parse = pacsv.ParseOptions(delimiter="\t" if loc.name.lower().endswith(".tsv") else ",")
        ids_as_text = pacsv.ConvertOptions(column_types={"video_id": pa.string()})  # keep "007"
        return pacsv.read_csv(io.BytesIO(data), parse_options=parse, convert_options=ids_as_text)
    except pa.ArrowException as exc:
        raise PredictionError(f"{loc}: cannot read it as {'Parquet' if parquet else 'CSV'} "
                              f"({exc})") from None


def _numeric(col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
        first = next((v for v in col.to_pylist() if v is not None), None)
        raise PredictionError(f"{where}: column {name!r} is not numeric ({t}, e.g. {first!r}); "
                              "scores must be numbers")
    return col.cast(pa.float64()).to_numpy()  # nulls -> NaN


def to_probabilities(values: np.ndarray, scores: str, where: str,
                     video_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(N, C) finite scores -> (N, C) float32 rows summing to 1, and notes for the report."""
    v = np.asarray(values, np.float64)
    if scores == "logits":
        z = np.exp(v - v.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)).astype(np.float32), []
    if scores != "probs":
        raise ConfigError(f"unknown score kind {scores!r}; valid: {', '.join(SCORE_KINDS)}")
    rows, sums = np.flatnonzero((v < 0).any(axis=1)), v.sum(axis=1)
    if rows.size:
        raise PredictionError(
            f"{where}: {rows.size} videos have negative scores (e.g. {video_ids[rows[0]]!r}: "
            f"{v[rows[0]].min():.4g}), which probabilities cannot be; if these are logits or SVM "
            "margins, say so (--external-scores logits)")
    if (sums <= 0).any():
        raise PredictionError(f"{where}: video {video_ids[int(np.argmin(sums))]!r} scores 0 for "
                              "every class of ours; its probabilities cannot be renormalised")
    off = int((np.abs(sums - 1.0) > 1e-3).sum())
    notes = [f"{off} of {len(sums)} external rows did not sum to 1 over our classes (sums "
             f"{sums.min():.4g} to {sums.max():.4g}): renormalised"] if off else []
    return (v / sums[:, None]).astype(np.float32), notes


def read_external(path, class_names: Sequence[str], scores: str = DEFAULT_SCORES) -> ExternalScores:
    """The external scores of ``path`` as probabilities in the order of ``class_names``."""
    if scores not in SCORE_KINDS:
        raise ConfigError(f"unknown score kind {scores!r}; valid: {', '.join(SCORE_KINDS)}")
    loc = storage.resolve(path)
    where = loc.uri
    if not loc.is_file():
        raise PredictionError(f"{where}: no such file (the external scores)")
    table = _read_table(loc)
    cols = table.column_names
    twice = sorted(c for c, n in collections.Counter(cols).items() if n > 1)
    if twice:
        raise PredictionError(f"{where}: columns named twice: {_some(twice)}")
    if "video_id" not in cols:
        raise PredictionError(f"{where}: no video_id column (columns: {_some(cols, 6)}); external "
                              "scores need video_id and one column per class name")
    if table.num_rows == 0:
        raise PredictionError(f"{where}: no rows")
    ids = [None if v is None else str(v) for v in table.column("video_id").to_pylist()]
    dups = sorted(v for v, n in collections.Counter(ids).items() if n > 1)
    if dups:
        raise PredictionError(f"{where}: {len(dups)} video ids appear more than once "
                              f"({_some(dups)}); give one row per video")
    if None in ids:
        raise PredictionError(f"{where}: {ids.count(None)} rows have no video_id")
    missing = [n for n in class_names if n not in cols]
    extra = [c for c in cols if c != "video_id" and c not in set(class_names)]
    if missing:
        key = lambda s: "".join(ch for ch in s.lower() if ch.isalnum())  # noqa: E731
        near = {key(c): c for c in extra}
        hints = [f"{n!r} ~ {near[key(n)]!r}" for n in missing if key(n) in near]
        raise PredictionError(
            f"{where}: {len(missing)} of our {len(class_names)} classes have no column: "
            f"{_some(missing, 10)} (classes are matched by name"
            + (f"; ours ~ the file's, differing in case or punctuation: {', '.join(hints[:5])}"
               if hints else "")
            + ("; class_<i>: no video of ours has that label, so its name is unknown"
               if any(n.startswith("class_") for n in missing) else "") + ")")
    values = np.column_stack([_numeric(table.column(n), n, where) for n in class_names])
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise PredictionError(f"{where}: {bad.sum()} scores are missing, NaN or infinite (e.g. "
                              f"video {ids[r]!r}, class {class_names[c]!r})")
    probs, notes = to_probabilities(values, scores, where, ids)
    if extra:
        notes.insert(0, f"{len(extra)} columns of {where} are not classes of ours and are "
                        f"ignored: {_some(extra, 5)}")
    return ExternalScores(where, ids, probs, notes)


@dataclass
class ExternalReport(Report):
    """A ``Report`` of ours, the external model and their fusion on the videos of both, with
    the videos of one side only, notes, and the per-class change ours -> fused."""

    header: str = ""
    video_ids: list[str] = field(default_factory=list)  # the videos of both, in row order
    probs: np.ndarray | None = None                     # (N, C) fused probabilities
    only_ours: list[str] = field(default_factory=list)
    only_external: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)

    def change_counts(self) -> dict[str, int]:
        """{"improved", "unchanged", "worse"}: classes with videos, by fused vs ours."""
        return change_counts(self.changes)

    def table(self) -> str:
        """``Report.table`` with a name column as wide as the longest row name."""
        w = max(map(len, self.rows))
        lines = [f"{'':<{w}} {'top-1':>7} {'top-5':>7} {'mean cls':>8} {'videos':>7}"]
        lines += [f"{k:<{w}} {100 * r['top1']:>6.2f}% {100 * r['top5']:>6.2f}% "
                  f"{100 * r['mean_class_acc']:>7.2f}% {int(r['n']):>7d}"
                  for k, r in self.rows.items()]
        return "\n".join(lines)

    def text(self) -> str:
        n = int(next(iter(self.rows.values()))["n"])
        lines = [f"{self.split} ({len(self.class_names)} classes): {self.header}",
                 f"videos: {n} in both are fused and scored"]
        sides = (("our predictions", self.only_ours), ("the external file", self.only_external))
        lines += [f"  {len(ids)} only in {side}, left out (e.g. {_some(ids)})"
                  for side, ids in sides if ids]
        lines += [f"note: {t}" for t in self.notes] + [self.table()]
        c = self.change_counts()
        lines.append(f"per-class accuracy, fused vs ours: {c['improved']} improved, "
                     f"{c['unchanged']} unchanged, {c['worse']} worse")
        up = [r for r in self.changes if r["support"] and r["change"] > 0]
        down = [r for r in self.changes if r["support"] and r["change"] < 0]
        lines += [f"  {r['class']:<30} {100 * r['change']:+7.2f} points ({r['before_correct']}"
                  f" -> {r['after_correct']} of {r['support']})"
                  for r in up[:EXAMPLES] + down[-EXAMPLES:]]  # most improved, most worse
        lines += ["fused accuracy per category:"] if self.categories else []
        lines += [f"  {k:<45} {100 * v:6.2f}%" for k, v in sorted(self.categories.items())]
        lines += [f"{k}: {p}" for k, p in self.files.items()]
        return "\n".join(lines)


def evaluate_external(predictions, external, op: str = "product", split: str = "test",
                      head: str = FUSED, scores: str = DEFAULT_SCORES, weight: float = 1.0,
                      out_dir=None, categories: str | None = None) -> ExternalReport:
    """Fuse ``head`` of a run's ``split`` predictions with the external scores file (see the
    module docstring) and score ours, the external model and the fusion on their common videos."""
    if op not in LATE_OPS:
        raise ConfigError(f"unknown late fusion {op!r}; valid: {', '.join(LATE_OPS)}")
    if not np.isfinite(weight) or weight < 0:
        raise ConfigError(f"the external weight must be a finite number >= 0, got {weight}")
    where = str(prediction_files(predictions, split)[0])
    table = load_predictions(predictions, split, head)
    ids = table.column("video_id").to_pylist()
    if len(set(ids)) != len(ids) or len(set(pc.list_value_length(table["probs"]).to_pylist())) != 1:
        raise PredictionError(f"{where}: head {head!r} has a video twice or ragged probabilities")
    probs = np.asarray(table.column("probs").to_pylist(), np.float32)  # (N, C)
    labels = np.asarray(table.column("label").to_pylist(), np.int64)
    names = class_names_of(table, probs.shape[1])
    ext = read_external(external, names, scores)
    row_of, ours = {v: i for i, v in enumerate(ext.video_ids)}, set(ids)
    common = [i for i, v in enumerate(ids) if v in row_of]
    only_ours = [v for v in ids if v not in row_of]
    only_ext = sorted(v for v in ext.video_ids if v not in ours)
    if not common:
        raise PredictionError(f"{where} and {ext.source} share no {split} video (ours e.g. "
                              f"{_some(ids)}; theirs e.g. {_some(sorted(ext.video_ids))})")
    p_ours, y = probs[common], labels[common]
    p_ext = ext.probs[[row_of[ids[i]] for i in common]]
    fused = late_fuse(p_ours, p_ext, op, w_rgb=1.0, w_flow=weight)
    c, name = len(names), f"fused-ext-{op}"
    scored = [(f"ours-{head}", p_ours, y), ("external", p_ext, y), (name, fused, y)]
    scored += [(f"ours-{head} (all)", probs, labels)] if only_ours else []
    rows = {k: {**metrics.score(p, t, c), "n": len(t)} for k, p, t in scored}
    before = metrics.confusion_matrix(p_ours.argmax(1), y, c)
    after = metrics.confusion_matrix(fused.argmax(1), y, c)
    how = f"weighted fusion (ours 1, external {weight:g})" if op == "weighted" else f"{op} fusion"
    report = ExternalReport(
        split, rows, names, confusion=after, video_ids=[ids[i] for i in common], probs=fused,
        only_ours=only_ours, only_external=only_ext,
        header=f"ours {where} (head {head}) + {ext.source} ({scores}), {how}",
        notes=ext.notes, changes=class_change(before, after, names))
    if categories:
        try:
            report.categories = metrics.category_accuracy(after, names, categories_for(categories))
        except KeyError as exc:
            raise PredictionError(f"--categories {categories}: {exc.args[0]}") from None
    if out_dir is not None:
        _write_outputs(report, name, head, before, storage.resolve(out_dir))
    return report


def _write_outputs(report: ExternalReport, name: str, head: str, before: np.ndarray,
                   out: storage.Location) -> None:
    names, counts = report.class_names, report.change_counts()
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    out.mkdir()
    plots = {
        f"confusion_{name}": lambda f: metrics.plot_confusion(
            report.confusion, names, f, title=f"{name} ({report.split}), rows normalised"),
        f"confusion_ours-{head}": lambda f: metrics.plot_confusion(
            before, names, f, title=f"ours-{head} ({report.split}, same videos), rows normalised"),
        f"confusion_change_{name}": lambda f: plot_confusion_change(
            before, report.confusion, names, f, title=f"{name} minus ours-{head} ({report.split})"),
        f"per_class_change_{name}": lambda f: plot_class_change(
            report.changes, f, title=f"{name} vs ours-{head} ({report.split}): {summary}"),
    }
    for key, plot in plots.items():
        with out.join(f"{key}.png").open_output() as f:
            plot(f)
        report.files[f"{key}.png"] = out.join(f"{key}.png").uri
    tables = {f"per_class_change_{name}": report.changes}
    if report.only_ours or report.only_external:
        tables["missing_videos"] = [{"video_id": v, "only_in": side} for side, ids in
                                    (("ours", report.only_ours), ("external", report.only_external))
                                    for v in ids]
    for key, rows in tables.items():
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        out.join(f"{key}.csv").write_text(text.getvalue())
        report.files[f"{key}.csv"] = out.join(f"{key}.csv").uri
