"""The paper's experiments, one command each: a preset (``reslstm.paper.presets``) as a Ray Tune sweep
over its values and seeds, and its report.

``run_preset(PaperConfig)``: builds the sweep (the paper's settings as defaults: RMSProp, lr
1e-3, PCA; every configuration once per seed; no early stopping, so configurations are
compared after the same training; every trial evaluated on test), runs it under one MLflow
parent run (``distributed.tune.sweep.sweep``), aggregates test top-1 over seeds, checks the preset's
claims, and writes the table (CSV, Markdown: ours beside the paper's numbers, then the claims)
and the figure into ``OUT/<preset>/report/``, also logged to the sweep's parent run. The
``final`` preset adds per-category accuracy, the confusion matrix grouped by category (Fig. 5)
and a sheet of example videos with their top-5 (Fig. 4), and registers its best model.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reslstm import features as fs
from reslstm import metrics
from reslstm.configs import SEARCHED, PaperConfig, SweepConfig, TrainConfig
from reslstm.distributed.tracking import runs as tracking
from reslstm.distributed.tune.results import SweepResult
from reslstm.distributed.tune.sweep import sweep
from reslstm.fusion import FUSED
from reslstm.paper.figures import (plot_categories, plot_examples, plot_grouped_confusion,
                                   plot_preset)
from reslstm.paper.presets import PRESETS, QUICK_FIXED, Preset
from reslstm.paper.report import Verdict, aggregate, check, write_table

log = logging.getLogger(__name__)
QUICK = {"epochs": 12, "seeds": 2, "workers": 1}
HEADS = {"test_top1": FUSED, "test_top1_rgb": "rgb", "test_top1_flow": "flow"}


@dataclass
class PresetResult:
    preset: str
    sweep: SweepResult
    rows: list[dict]                 # one per trial: swept values, seed, test metrics
    verdicts: list[Verdict]
    files: dict[str, str] = field(default_factory=dict)
    table: str = ""                  # the Markdown report


def preset_sweep(pcfg: PaperConfig) -> tuple[Preset, SweepConfig]:
    """The sweep of a preset: its values (or the overrides), the fixed settings, seeds."""
    preset = PRESETS[pcfg.preset]
    values = preset.values(pcfg.quick)
    fixed = dict(preset.fixed)
    if pcfg.quick:
        fixed.update({k: v for k, v in QUICK_FIXED.items() if k in fixed})
    base = TrainConfig(
        features=pcfg.features, out=str(Path(pcfg.out) / preset.name), lr=pcfg.lr,
        batch_size=pcfg.batch_size, input_proj=pcfg.input_proj, seed=pcfg.seed,
        epochs=pcfg.epochs or (QUICK["epochs"] if pcfg.quick else TrainConfig.epochs),
        workers=pcfg.workers or (QUICK["workers"] if pcfg.quick else TrainConfig.workers),
        storage_path=pcfg.storage_path)
    lists = {}
    for name in SEARCHED:
        override = getattr(pcfg, name)
        lists[name] = tuple(override if override is not None else
                            values.get(name, (fixed.get(name, getattr(base, name)),)))
    seeds = pcfg.seeds if (pcfg.seeds != PaperConfig.seeds or not pcfg.quick) else QUICK["seeds"]
    return preset, SweepConfig(
        base=base, **lists, seeds=seeds, scheduler="none", test_all=True,
        mlflow_uri=pcfg.mlflow_uri, experiment=pcfg.experiment or f"reslstm-paper-{preset.name}",
        name=pcfg.name, max_concurrent=pcfg.max_concurrent,
        register_model="reslstm-final" if preset.name == "final" else None)


def trial_rows(res: SweepResult) -> list[dict]:
    return [{"hidden": r.hidden, "depth": r.depth, "T": r.T, "fusion": r.fusion,
             "residual": r.residual, "seed": r.seed, **r.test} for r in res.trials]


def run_preset(pcfg: PaperConfig, address: str | None = None) -> PresetResult:
    """Run a preset end to end (see the module docstring)."""
    preset, scfg = preset_sweep(pcfg)
    log.info(f"preset {preset.name} ({preset.source}): "
             + ", ".join(f"{k} {list(getattr(scfg, k))}" for k in SEARCHED)
             + f", {scfg.seeds} seed(s), {scfg.base.epochs} epochs each"
             + (" (quick scale)" if pcfg.quick else ""))
    res = sweep(scfg, address)
    rows = trial_rows(res)
    out = Path(scfg.base.out) / "report"
    fields = list(preset.grid)
    verdicts = [check(c, rows) for c in preset.claims(pcfg.quick)]
    if preset.kind == "final":
        cells = [dataclasses.replace(c, config={**c.config, "head": HEADS[m]})
                 for m in HEADS for c in aggregate(rows, fields, metric=m)]
    else:
        cells = aggregate(rows, fields)
    files = write_table(preset, cells, verdicts, out, pcfg.quick)
    title = f"{preset.source}: {preset.name} (mean ± std over {scfg.seeds} seeds)"
    if preset.kind != "final":
        files["figure"] = str(plot_preset(preset, cells, out / f"{preset.name}.png", title))
    else:
        files.update(_final_figures(pcfg, res, out))
    metrics_ = {f"{preset.name}_{'_'.join(str(v) for v in c.config.values())}_mean": c.mean
                for c in cells}
    tracking.log_evaluation(res.mlflow_uri, res.parent_run_id, metrics_, files,
                            tags={f"claim_{i}": f"{v.outcome}: {v.claim.text}"
                                  for i, v in enumerate(verdicts)})
    table = Path(files[f"{preset.name}_md"]).read_text()
    log.info(table, extra={"block": True})
    log.info(f"report: {out}")
    return PresetResult(preset.name, res, rows, verdicts, files, table)


def _final_figures(pcfg: PaperConfig, res: SweepResult, out: Path) -> dict[str, str]:
    """Fig. 5 (grouped confusion), per-category accuracy and Fig. 4 (examples) of the best run."""
    from reslstm.datasets.categories import categories_for
    from reslstm.reports.predictions import class_names_of, load_predictions

    table = load_predictions(res.predictions["test"], "test", head=FUSED)
    probs = np.asarray(table.column("probs").to_pylist(), np.float32)
    labels = np.asarray(table.column("label").to_pylist())
    names = class_names_of(table, probs.shape[1])
    conf = metrics.confusion_matrix(probs.argmax(1), labels, len(names))
    files = {}
    if pcfg.categories:
        category_of = categories_for(pcfg.categories)
        accuracy = metrics.category_accuracy(conf, names, category_of)
        files["categories"] = str(plot_categories(accuracy, out / "categories.png",
                                                  f"per category ({pcfg.categories}), best run"))
        files["confusion_grouped"] = str(plot_grouped_confusion(
            conf, names, category_of, out / "confusion_grouped.png",
            "confusion by category (rows normalised), best run"))
    files["examples"] = str(plot_examples(_examples(pcfg, table, probs, labels, names),
                                          out / "examples.png", "test videos: top-5 of the best run"))
    return files


def _examples(pcfg: PaperConfig, table, probs, labels, names) -> list[dict]:
    """Up to ``pcfg.examples`` test videos, half right and half wrong where there are both."""
    from reslstm.datasets.manifest import read_manifest
    from reslstm.inference.sheet import sample_frames

    right = [i for i in range(len(labels)) if probs[i].argmax() == labels[i]]
    wrong = [i for i in range(len(labels)) if probs[i].argmax() != labels[i]]
    k = pcfg.examples
    chosen = wrong[:k // 2] + right[:k - min(len(wrong), k // 2)]
    manifest = fs.FeatureStore(pcfg.features).read_metadata_extra().get("manifest")
    paths = {}
    if manifest:
        m = read_manifest(manifest)
        paths = dict(zip(m.column("video_id").to_pylist(), m.column("path").to_pylist()))
    ids = table.column("video_id").to_pylist()
    out = []
    for i in sorted(chosen):
        path = paths.get(ids[i])
        try:
            frame = sample_frames(path, 1, 1)[0] if path else None
        except Exception:  # noqa: BLE001 - a missing video still gets its bars
            frame = None
        top = np.argsort(-probs[i])[:5]
        out.append({"video_id": ids[i], "frame": frame, "truth": names[labels[i]],
                    "top": [(names[j], float(probs[i][j])) for j in top]})
    return out
