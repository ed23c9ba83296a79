"""What a sweep leaves: one row per trial, the sweep's result, and the evaluation of checkpoints.

- ``TrialRow``: a trial's searched values (h, L, T, fusion, residual, seed), its best epoch's
  val top-1, epochs trained, whether ASHA stopped it, its status, best checkpoint, MLflow run
  and, when evaluated, its test metrics.
- ``rows_of(grid, epochs, run_ids)``: the rows of a Tune ``ResultGrid``; ``curves(grid)``: each
  trial's (epoch, val top-1) points.
- ``SweepResult``: the rows, the best trial and its test evaluation, where everything went;
  ``table()`` prints the trials.
- ``evaluate_checkpoint(checkpoint, data, out_dir)``: predictions of val and test, scores and
  the report files of one checkpoint (the best trial's, or every trial's with ``--test-all``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import torch

from reslstm.checkpoint import CHECKPOINT_FILE, load_payload
from reslstm.configs import TrainConfig
from reslstm.distributed.tracking.runs import trial_label
from reslstm.distributed.train.checkpoints import METRIC
from reslstm.distributed.train.data import RunData
from reslstm.distributed.train.evaluation import predict
from reslstm.fusion import FUSED, STREAMS
from reslstm.reports.predictions import evaluate_run
from reslstm.storage import Location


@dataclass
class TrialRow:
    trial_id: str
    hidden: int
    depth: int
    T: int
    fusion: str
    val_top1: float
    epochs: int
    stopped_early: bool
    status: str
    checkpoint: str | None
    mlflow_run_id: str | None
    residual: bool = True
    seed: int = 0
    test: dict = field(default_factory=dict)  # test_top1, ... when the trial was evaluated

    def as_dict(self) -> dict:
        return {"trial": self.trial_id, "fusion": self.fusion, "h": self.hidden,
                "L": self.depth, "T": self.T, "residual": self.residual, "seed": self.seed,
                "val_top1": self.val_top1, **self.test, "epochs": self.epochs,
                "stopped_early": self.stopped_early, "status": self.status}


@dataclass
class SweepResult:
    trials: list[TrialRow]
    best_config: TrainConfig
    best_trial_id: str
    best_checkpoint: str
    best_val_top1: float
    test_metrics: dict[str, float]
    predictions: dict[str, str]
    report_files: dict[str, str]
    mlflow_uri: str
    experiment: str
    experiment_id: str | None
    best_run_id: str | None
    storage_path: str
    scores: dict = field(default_factory=dict)
    parent_run_id: str | None = None
    name: str = ""
    registered: str | None = None  # models:/NAME@ALIAS of the registered best model

    def table(self) -> str:
        lines = [f"{'trial':<12} {'fusion':<14} {'h':>5} {'L':>2} {'T':>3} {'res':>3} {'seed':>4} "
                 f"{'val top-1':>9} {'epochs':>6}  stopped early"]
        for r in sorted(self.trials, key=lambda r: -r.val_top1):
            mark = " *" if r.trial_id == self.best_trial_id else ""
            lines.append(f"{r.trial_id:<12} {r.fusion:<14} {r.hidden:>5} {r.depth:>2} {r.T:>3} "
                         f"{'on' if r.residual else 'off':>3} {r.seed:>4} "
                         f"{100 * r.val_top1:>8.2f}% {r.epochs:>6}  "
                         f"{'yes' if r.stopped_early else 'no'}"
                         f"{'' if r.status == 'ok' else ' (' + r.status + ')'}{mark}")
        return "\n".join(lines)


def rows_of(grid, epochs: int, run_ids: dict[str, str], base: TrainConfig | None = None
            ) -> list[TrialRow]:
    """One row per trial of a ResultGrid (``base`` gives residual and seed where a trial's
    config does not search them)."""
    rows = []
    for res in grid:
        df = res.metrics_dataframe
        trial_id = (res.metrics or {}).get("trial_id") or Path(res.path).name
        cfg = {"residual": base.residual, "seed": base.seed} if base else {}
        cfg.update(res.config or {})
        if df is not None and METRIC in df and df[METRIC].notna().any():
            df = df[df[METRIC].notna()]
            best = df.sort_values([METRIC, "epoch"]).iloc[-1]  # ties: the later epoch
            val, ckpt = float(best[METRIC]), best.get("checkpoint_path")
            last = int(df["epoch"].max())
        else:
            val, ckpt, last = float("nan"), None, 0
        rows.append(TrialRow(
            trial_id=trial_id, hidden=cfg.get("hidden"), depth=cfg.get("depth"), T=cfg.get("T"),
            fusion=cfg.get("fusion"), val_top1=val, epochs=last,
            stopped_early=res.error is None and last < epochs,
            status="ok" if res.error is None else f"error: {type(res.error).__name__}",
            checkpoint=None if ckpt is None or ckpt != ckpt else str(ckpt),
            mlflow_run_id=run_ids.get(trial_id), residual=bool(cfg.get("residual", True)),
            seed=int(cfg.get("seed", 0))))
    return rows


def curves(grid) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for res in grid:
        df = res.metrics_dataframe
        if df is not None and METRIC in df and "epoch" in df:
            df = df[df[METRIC].notna()]
            label = f"{Path(res.path).name.rsplit('_', 1)[-1]} {trial_label(res.config or {})}"
            out[label] = [(int(e), float(v)) for e, v in zip(df["epoch"], df[METRIC])]
    return out


def checkpoint_at(path: str, where: Location):
    """A checkpoint path as Tune reports it (no URI scheme) on the sweep's storage ``where`` ->
    something ``load_payload`` reads: the path itself on local storage, a ``Checkpoint`` on
    the storage's filesystem."""
    return path if where.local else ray.train.Checkpoint(path, filesystem=where.filesystem)


def evaluate_checkpoint(checkpoint, data: RunData, out_dir: Path
                  ) -> tuple[dict, dict, dict, dict, dict]:
    """Predict val and test with a checkpoint into ``out_dir``; returns (test metrics,
    {split: predictions path}, {name: report file}, {split: {head: scores}}, payload)."""
    payload = load_payload(checkpoint)
    paths, scores = predict(payload, data.only(("val", "test")).datasets, payload["label_names"],
                            out_dir / "predictions")
    report = evaluate_run(out_dir, "test", out_dir=out_dir / "report")
    test = {f"test_{k}": v for k, v in scores["test"][FUSED].items()}
    for head in STREAMS:
        if head in scores["test"]:
            test.update({f"test_{k}_{head}": v for k, v in scores["test"][head].items()})
    files = dict(report.files)
    files["model"] = str(out_dir / CHECKPOINT_FILE)  # a local copy, also of a remote checkpoint
    torch.save(payload, files["model"])
    return test, paths, files, scores, payload
