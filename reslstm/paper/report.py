"""Reports of the paper presets: results over seeds, the claims checked against them, and the
table beside the paper's numbers. Pure NumPy; the figures are in ``preset_figures``.

- ``aggregate(rows, fields)``: trials (dicts with the swept fields, ``seed`` and a metric) ->
  one ``Cell`` per configuration: mean, std (over seeds, ddof 1) and n of the metric.
- ``check(claim, rows)``: a ``Verdict``: the difference of the means of the two sides (every
  seed of every matching configuration), its standard error sqrt(s_a^2/n_a + s_b^2/n_b), and
  whether the claim held: a strict claim holds when the difference exceeds twice its standard
  error, is "not shown" within that, and "did not hold" below minus twice; a non-strict claim
  ("at least as good") holds unless the difference is below minus twice the error. With one
  seed there is no error estimate, and the verdict says so.
- ``write_table(preset, cells, verdicts, out_dir, quick)``: CSV and Markdown, our mean +- std
  beside the paper's HMDB-51 and UCF-101 numbers, then the claims.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from reslstm.fusion import FUSED
from reslstm.paper.presets import Claim, Preset, paper_value

METRIC = "test_top1"


@dataclass
class Cell:
    config: dict          # the swept fields' values
    values: list[float]   # the metric, one per seed
    seeds: list[int]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else float("nan")

    def text(self, scale: float = 100.0) -> str:
        std = "" if math.isnan(self.std) else f" +- {scale * self.std:.1f}"
        return f"{scale * self.mean:.1f}{std} (n={self.n})"


def _matches(row: Mapping, config: Mapping) -> bool:
    return all(row.get(k) == v for k, v in config.items())


def aggregate(rows: Sequence[Mapping], fields: Sequence[str], metric: str = METRIC) -> list[Cell]:
    """One cell per distinct value of ``fields``, in the order first seen; rows without the
    metric (a failed trial) are left out of their cell and counted in its n."""
    cells: dict[tuple, Cell] = {}
    for r in rows:
        key = tuple(r.get(f) for f in fields)
        cell = cells.setdefault(key, Cell(dict(zip(fields, key)), [], []))
        value = r.get(metric)
        if value is not None and value == value:
            cell.values.append(float(value))
            cell.seeds.append(int(r.get("seed", 0)))
    return [c for c in cells.values() if c.values]


@dataclass
class Verdict:
    claim: Claim
    difference: float     # mean(better) - mean(worse), as a share
    error: float          # standard error of the difference (nan with one seed)
    n: tuple[int, int]
    outcome: str          # "held", "not shown", "did not hold", "no data"

    def text(self) -> str:
        if self.outcome == "no data":
            return f"{self.claim.text}: no data"
        err = "no error estimate (1 seed)" if math.isnan(self.error) else \
            f"+- {100 * self.error:.1f} (standard error)"
        return (f"{self.claim.text}: {self.outcome} — difference {100 * self.difference:+.1f} "
                f"points {err}; n = {self.n[0]} vs {self.n[1]} runs")


def check(claim: Claim, rows: Sequence[Mapping], metric: str = METRIC) -> Verdict:
    def side(configs):
        return [float(r[metric]) for r in rows if r.get(metric) == r.get(metric)
                and r.get(metric) is not None and any(_matches(r, c) for c in configs)]

    a, b = side(claim.better), side(claim.worse)
    if not a or not b:
        return Verdict(claim, float("nan"), float("nan"), (len(a), len(b)), "no data")
    diff = float(np.mean(a) - np.mean(b))
    error = (math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
             if len(a) > 1 and len(b) > 1 else float("nan"))
    bound = 2 * error if not math.isnan(error) else 0.0
    if claim.strict:
        outcome = "held" if diff > bound else "did not hold" if diff < -bound else "not shown"
    else:
        outcome = "did not hold" if diff < -bound else "held"
    return Verdict(claim, diff, error, (len(a), len(b)), outcome)


def cell_key(preset: Preset, cell: Cell):
    """The key of a cell in ``presets.PAPER``: the swept value, or the tuple of them."""
    fields = list(preset.grid)
    values = tuple(cell.config[f] for f in fields)
    return values[0] if len(values) == 1 else values


def table_rows(preset: Preset, cells: Sequence[Cell], quick: bool) -> list[dict]:
    """Rows of the report table: the configuration, ours, and the paper's two data sets (for
    quick runs, whose sizes are scaled, the paper's cell is the one at the same position)."""
    grid = list(preset.grid)
    rows = []
    for cell in cells:
        head = cell.config.get("head")  # the final preset: one row per head of the model
        row = {f: ("on" if v is True else "off" if v is False else v)
               for f, v in cell.config.items() if f in grid or f == "head"}
        key = cell_key(preset, cell)
        if quick:  # the paper's cell at the same position of the scaled grid
            fields = [f for f in grid]
            idx = [preset.quick[f].index(cell.config[f]) for f in fields]
            paper_key = tuple(preset.grid[f][i] for f, i in zip(fields, idx))
            key = paper_key[0] if len(paper_key) == 1 else paper_key
        if head not in (None, FUSED):
            key = (key, head)  # the paper's numbers are of the fused model
        row["ours (test top-1 %)"] = cell.text()
        for dataset, label in (("hmdb51", "paper HMDB-51"), ("ucf101", "paper UCF-101")):
            value = paper_value(preset.name, dataset, key)
            row[label] = f"{value:.1f}" if isinstance(value, float) else value
        rows.append(row)
    return rows


def write_table(preset: Preset, cells: Sequence[Cell], verdicts: Sequence[Verdict], out_dir,
                quick: bool, note: str = "") -> dict[str, str]:
    """``<preset>.csv`` and ``<preset>.md`` in ``out_dir``; returns {name: path}."""
    from reslstm.reports.sweep_tables import markdown_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(preset, cells, quick)
    csv_path, md_path = out / f"{preset.name}.csv", out / f"{preset.name}.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["config"])
        writer.writeheader()
        writer.writerows(rows)
    scale = ("quick scale: sizes scaled down for the synthetic set; the paper's column is the "
             "cell at the same position of its grid. " if quick else "")
    md = [f"# Preset `{preset.name}` ({preset.source})", "",
          f"Test top-1 (%), mean +- std over seeds. {scale}'plot': the paper shows this only in "
          "a figure; 'n/r': a table value of the paper not recorded in this project.", "",
          markdown_table(rows), "## Claims", ""]
    md += [f"- {v.text()}" for v in verdicts] or ["- (this preset states no claim)"]
    if note:
        md += ["", note]
    md_path.write_text("\n".join(md) + "\n")
    return {f"{preset.name}_csv": str(csv_path), f"{preset.name}_md": str(md_path)}
