"""The demo: the whole pipeline on the built-in synthetic data set, on one machine or a cluster.

    synthetic videos (jobs/synth.py, if absent)
      -> RGB + optical-flow features with tiny3d (Ray Data; random-init weights, so the
         features are NOT pretrained ones; DIS flow, which is fast on a CPU, where pretrained
         flow models would want the default TV-L1; centre crop)
      -> a Ray Tune sweep of late-product Res-LSTMs (>= 4 trials, ASHA, MLflow)
      -> the best trial on test, per stream and fused
      -> the order-blind TemporalMeanPool baseline on the same features
      -> accuracy on the order pairs (classes made of the same two motions in opposite order)

Python API: ``run_demo(DemoConfig(...)) -> DemoResult``. Every step reuses what a previous run
left in ``out`` (videos, features); the sweep and the baseline train anew each time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from reslstm.configs import DemoConfig, ExtractConfig, SweepConfig, TrainConfig
from reslstm.datasets.synthetic import ORDER_PAIRS, generate_synthetic
from reslstm.distributed.extract.job import run_extraction
from reslstm.distributed.tracking import experiments, lineage
from reslstm.distributed.tracking.extraction import EXPERIMENT as EXTRACTION_EXPERIMENT
from reslstm.distributed.tracking import runs as tracking
from reslstm.distributed.train.trainer import fit
from reslstm.distributed.tune.sweep import sweep
from reslstm.fusion import FUSED, STREAMS
from reslstm.reports.predictions import PredictionError, load_predictions

log = logging.getLogger(__name__)

# What the demo is meant to show on a 2-core CPU machine (README, issue targets).
TARGET_MINUTES = 10.0
TARGET_FUSED_TOP1 = 0.8
TARGET_PAIR_MARGIN = 0.2


@dataclasses.dataclass
class DemoResult:
    seconds: float
    trials: list                 # tune.TrialRow
    best: dict                   # hidden, depth, T, fusion, val_top1
    test: dict                   # Res-LSTM: {rgb, flow, fused} test top-1
    baseline: dict               # TemporalMeanPool: {rgb, flow, fused} test top-1
    pairs: dict                  # {"reslstm": acc, "baseline": acc, "videos": n}
    mlflow_uri: str
    experiment: str
    experiment_id: str | None = None
    registered: str | None = None  # models:/NAME@ALIAS of the best model

    def targets(self) -> list[tuple[str, bool]]:
        margin = self.pairs["reslstm"] - self.pairs["baseline"]
        return [(f"finishes in <= {TARGET_MINUTES:.0f} min ({self.seconds / 60:.1f} min)",
                 self.seconds <= 60 * TARGET_MINUTES),
                (f"fused test top-1 >= {TARGET_FUSED_TOP1} ({self.test['fused']:.3f})",
                 self.test[FUSED] >= TARGET_FUSED_TOP1),
                (f"order pairs: Res-LSTM beats the baseline by >= {TARGET_PAIR_MARGIN} "
                 f"({margin:+.3f})", margin >= TARGET_PAIR_MARGIN)]


def pair_accuracy(predictions, split: str = "test", pairs=ORDER_PAIRS) -> tuple[float, int]:
    """Top-1 of the fused head over the videos whose class belongs to an order pair."""
    table = load_predictions(predictions, split, head=FUSED)
    names = {c for pair in pairs for c in pair}
    keep = [i for i, n in enumerate(table.column("label_name").to_pylist()) if n in names]
    if not keep:
        raise PredictionError(f"{predictions}: no {split} video of an order-pair class")
    probs = np.stack([np.asarray(p, np.float32) for p in table.column("probs").to_pylist()])[keep]
    labels = table.column("label").to_numpy()[keep]
    return float((probs.argmax(1) == labels).mean()), len(keep)


def _log_baseline(uri: str, experiment_id: str, parent: str, cfg: TrainConfig, test: dict,
                  pairs: float) -> None:
    """The baseline as one more run under the demo's sweep, to compare in the UI."""
    client = MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=f"baseline-meanpool-{cfg.fusion}",
                            tags={tracking.PARENT: parent, tracking.KIND_TAG: "baseline",
                                  **lineage.feature_tags(cfg.features)})
    client.log_inputs(run.info.run_id, datasets=[lineage.feature_input(cfg.features)])
    for k, v in cfg.to_dict().items():
        client.log_param(run.info.run_id, k, "" if v is None else str(v))
    for head, acc in test.items():
        name = "test_top1" if head == FUSED else f"test_top1_{head}"
        client.log_metric(run.info.run_id, name, acc)
    client.log_metric(run.info.run_id, "test_top1_order_pairs", pairs)
    client.set_terminated(run.info.run_id, "FINISHED")


def run_demo(cfg: DemoConfig) -> DemoResult:
    start = time.monotonic()
    out = Path(cfg.out).resolve()
    data_dir, store = out / "synthetic", out / "features"
    manifest = data_dir / "manifest.parquet"
    if manifest.exists():
        log.info(f"synthetic set: reusing {manifest}")
    else:
        log.info(f"synthetic set: generating {cfg.videos_per_class} videos per class in {data_dir}")
        generate_synthetic(data_dir, videos_per_class=cfg.videos_per_class, seed=cfg.seed,
                           workers=cfg.synth_workers)
    log.info("features: tiny3d, random-init weights (a stand-in for a pretrained 3D CNN: these are "
             f"not pretrained features), {cfg.flow} optical flow, centre crop")
    uri = cfg.mlflow_uri or experiments.default_tracking_uri(out)
    run_extraction(ExtractConfig(manifest=str(manifest), out=str(store), extractor="tiny3d",
                                 flow=cfg.flow, crops=1, address=cfg.address, mlflow_uri=uri))

    experiment = experiments.default_experiment_name("reslstm-demo")
    base = TrainConfig(features=str(store), out=str(out / "sweep"), input_proj="linear",
                       epochs=cfg.epochs, batch_size=cfg.batch_size, workers=cfg.workers,
                       seed=cfg.seed)
    log.info(f"sweep: h {list(cfg.hidden)} x L {list(cfg.depth)} x T {list(cfg.T)} x "
             f"{list(cfg.fusion)}, {cfg.epochs} epochs each")
    res = sweep(SweepConfig(base=base, hidden=cfg.hidden, depth=cfg.depth, T=cfg.T,
                            fusion=cfg.fusion, grace_period=cfg.grace_period, mlflow_uri=uri,
                            experiment=experiment),
                address=cfg.address)
    best = res.best_config
    test = {h: res.scores["test"][h]["top1"] for h in res.scores["test"]}

    log.info(f"baseline: TemporalMeanPool ({best.fusion}, h {best.hidden}, T {best.T}) on the same features")
    base_cfg = dataclasses.replace(best, arch="meanpool", out=str(out / "baseline"))
    base_res = fit(base_cfg, address=cfg.address)
    baseline = {h: base_res.scores["test"][h]["top1"] for h in base_res.scores["test"]}

    ours, n_pairs = pair_accuracy(res.predictions["test"])
    theirs, _ = pair_accuracy(base_res.predictions["test"])
    _log_baseline(uri, res.experiment_id, res.parent_run_id, base_cfg, baseline, theirs)
    result = DemoResult(
        seconds=time.monotonic() - start, trials=res.trials,
        best={"hidden": best.hidden, "depth": best.depth, "T": best.T, "fusion": best.fusion,
              "val_top1": res.best_val_top1},
        test=test, baseline=baseline, pairs={"reslstm": ours, "baseline": theirs, "videos": n_pairs},
        mlflow_uri=uri, experiment=experiment, experiment_id=res.experiment_id,
        registered=res.registered)
    log.info(report(result, res.table()), extra={"block": True})
    return result


def report(r: DemoResult, trials_table: str) -> str:
    lines = ["", "=" * 78, "Res-LSTM demo on the synthetic set (tiny3d random-init features)", "=" * 78,
             "Sweep (val top-1; * = best):", trials_table, "",
             f"Test top-1 of the best trial (h {r.best['hidden']}, L {r.best['depth']}, "
             f"T {r.best['T']}, {r.best['fusion']}) and of the mean-pool baseline:",
             f"  {'':<8} {'Res-LSTM':>9} {'baseline':>9}"]
    for head in (*STREAMS, FUSED):
        if head in r.test:
            lines.append(f"  {head:<8} {r.test[head]:>9.3f} {r.baseline.get(head, float('nan')):>9.3f}")
    lines += ["", f"Order pairs ({r.pairs['videos']} test videos of "
              + ", ".join(f"{a}/{b}" for a, b in ORDER_PAIRS) + "):",
              f"  Res-LSTM {r.pairs['reslstm']:.3f}   baseline {r.pairs['baseline']:.3f}   "
              f"difference {r.pairs['reslstm'] - r.pairs['baseline']:+.3f}", "", "Targets:"]
    lines += [f"  [{'x' if ok else ' '}] {text}" for text, ok in r.targets()]
    lines += ["", f"MLflow experiment {r.experiment}: the sweep, its trials and the baseline"
              + (f"; the best model is {r.registered}" if r.registered else "")
              + f"; the extraction's run is in {EXTRACTION_EXPERIMENT}.",
              experiments.ui_hint(r.mlflow_uri, r.experiment_id)]
    return "\n".join(lines)
