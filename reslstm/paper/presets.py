"""The paper's experiments as presets: what each one sweeps, what it claims, and the paper's own
numbers beside which our results are printed.

A ``Preset`` names the values swept (at the paper's scale, and at the ``--quick`` scale that
finishes in minutes on the synthetic set with tiny3d features), the settings held fixed, the
axes of its figure and its ``Claim``s. Every configuration runs once per seed; results are mean
+- std over the seeds (``preset_report``).

- ``hidden`` (Fig. 3a): h in {256, 512, 1024, 2048}, L 2, T 25, one stream (RGB).
- ``depth`` (Fig. 3b-c): L in {1, 2, 3, 4} with and without residual connections, at PCA
  dimensions d_m = h in {256, 512, 1024, 2048}.
- ``T`` (Table 1): T in {5, 15, 25, 35}.
- ``fusion`` (Table 2): mid sum, mid product, late sum, late product, late weighted (TSN: 1.5 x
  flow + 1 x RGB), with a 2-layer Res-LSTM.
- ``final`` (Tables 3-4, Figs. 4-5): h 1024, L 2, T 25, late product; per-category accuracy,
  the confusion matrix grouped by category, and example videos with their top-5.

``--quick`` divides h by 16 (1024 -> 64: tiny3d's features are 512-d, and PCA cannot exceed
them) and maps T to the synthetic videos' ~12 clips (5, 15, 25, 35 -> 2, 4, 8, 12).

The paper's numbers (``PAPER``): only what this project has on record is filled in, the final
late-product HMDB-51 split-1 accuracy (68.0 %); a cell the paper shows only in a plot (Fig. 3)
says "plot"; a cell of its tables not recorded here says "n/r" (add the value from the paper's
Tables 1-2 to ``PAPER`` to see it beside ours).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

PLOT_ONLY = "plot"        # the paper shows this cell in a figure only
NOT_RECORDED = "n/r"      # a table value of the paper not recorded in this project


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` (each a set of configurations, averaged), strictly
    (``strict``) or at least as well (``strict=False``: holds unless ``worse`` is clearly
    better). Configurations are matched on ``key`` fields: dicts of field -> value."""

    text: str
    better: tuple[Mapping, ...]
    worse: tuple[Mapping, ...]
    strict: bool = True


@dataclass(frozen=True)
class Preset:
    name: str
    source: str                        # where in the paper
    grid: Mapping[str, tuple]          # swept field -> values (paper scale)
    quick: Mapping[str, tuple]         # the same at the synthetic scale
    fixed: Mapping[str, object] = field(default_factory=dict)
    x: str = "hidden"                  # the field on the figure's x axis
    lines: str | None = None           # one line per value of this field
    panels: str | None = None          # one panel per value of this field
    kind: str = "line"                 # "line" | "bars" | "final"

    def values(self, quick: bool) -> dict[str, tuple]:
        return dict(self.quick if quick else self.grid)

    def claims(self, quick: bool) -> list[Claim]:
        return CLAIMS[self.name](self.values(quick))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("hidden", "Fig. 3a", grid={"hidden": (256, 512, 1024, 2048)},
           quick={"hidden": (16, 32, 64, 128)}, fixed={"depth": 2, "T": 25, "fusion": "rgb"},
           x="hidden"),
    Preset("depth", "Fig. 3b-c", grid={"depth": (1, 2, 3, 4), "residual": (True, False),
                                       "hidden": (256, 512, 1024, 2048)},
           quick={"depth": (1, 2, 3, 4), "residual": (True, False), "hidden": (32,)},
           fixed={"T": 25, "fusion": "rgb"}, x="depth", lines="residual", panels="hidden"),
    Preset("T", "Table 1", grid={"T": (5, 15, 25, 35)}, quick={"T": (2, 4, 8, 12)},
           fixed={"hidden": 1024, "depth": 2, "fusion": "rgb"}, x="T"),
    Preset("fusion", "Table 2", grid={"fusion": ("mid-sum", "mid-product", "late-sum",
                                                 "late-product", "late-weighted")},
           quick={"fusion": ("mid-sum", "mid-product", "late-sum", "late-product",
                             "late-weighted")},
           fixed={"hidden": 1024, "depth": 2, "T": 25}, x="fusion", kind="bars"),
    Preset("final", "Tables 3-4, Figs. 4-5", grid={"fusion": ("late-product",)},
           quick={"fusion": ("late-product",)}, fixed={"hidden": 1024, "depth": 2, "T": 25},
           x="fusion", kind="final"),
)}

# Quick runs scale the fixed sizes too (h / 16; T to the synthetic videos' length).
QUICK_FIXED = {"hidden": 64, "T": 8}


def _hidden_claims(v) -> list[Claim]:
    h = sorted(v["hidden"])
    mid = h[min(2, len(h) - 1)]  # the paper's 1024 (the third value)
    return [Claim(f"larger h helps up to h={mid}: h={mid} beats h={h[0]}",
                  ({"hidden": mid},), ({"hidden": h[0]},)),
            Claim(f"beyond h={mid} it stops helping: h={h[-1]} is no better than h={mid}",
                  ({"hidden": mid},), ({"hidden": h[-1]},), strict=False)]


def _depth_claims(v) -> list[Claim]:
    deep = tuple(L for L in v["depth"] if L >= 3)
    return [Claim(f"residual >= plain at depth {L}", ({"depth": L, "residual": True},),
                  ({"depth": L, "residual": False},), strict=False) for L in deep]


def _t_claims(v) -> list[Claim]:
    t = sorted(v["T"])
    return [Claim(f"more clips help: T={t[-2]} beats T={t[0]}", ({"T": t[-2]},), ({"T": t[0]},)),
            Claim(f"T={t[-1]} is at least as good as T={t[-2]}", ({"T": t[-1]},), ({"T": t[-2]},),
                  strict=False)]


def _fusion_claims(v) -> list[Claim]:
    f = set(v["fusion"])
    late = tuple({"fusion": x} for x in sorted(f) if x.startswith("late-"))
    mid = tuple({"fusion": x} for x in sorted(f) if x.startswith("mid-"))
    out = [Claim("late fusion beats mid fusion (mean of each)", late, mid)] if late and mid else []
    for kind in ("mid", "late"):
        if {f"{kind}-product", f"{kind}-sum"} <= f:
            out.append(Claim(f"{kind} product beats {kind} sum", ({"fusion": f"{kind}-product"},),
                             ({"fusion": f"{kind}-sum"},)))
    return out


CLAIMS = {"hidden": _hidden_claims, "depth": _depth_claims, "T": _t_claims,
          "fusion": _fusion_claims, "final": lambda v: []}

# The paper's numbers per preset cell, per data set: cell key (the swept value, or a tuple of
# values in grid order) -> accuracy in %, PLOT_ONLY, or NOT_RECORDED.
PAPER: dict[str, dict[str, dict]] = {
    "hidden": {"hmdb51": {}, "ucf101": {}},   # Fig. 3a: a plot
    "depth": {"hmdb51": {}, "ucf101": {}},    # Fig. 3b-c: plots
    "T": {"hmdb51": {}, "ucf101": {}},        # Table 1
    "fusion": {"hmdb51": {"late-product": 68.0}, "ucf101": {}},  # Table 2
    "final": {"hmdb51": {"late-product": 68.0}, "ucf101": {}},
}
FIGURE_ONLY = {"hidden", "depth"}


def paper_value(preset: str, dataset: str, key) -> object:
    """The paper's number for a cell: a float (%), ``PLOT_ONLY`` or ``NOT_RECORDED``."""
    value = PAPER.get(preset, {}).get(dataset, {}).get(key)
    if value is not None:
        return value
    return PLOT_ONLY if preset in FIGURE_ONLY else NOT_RECORDED
