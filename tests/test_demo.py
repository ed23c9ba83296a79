"""The demo end to end at toy size: synthetic set, extraction, a one-trial sweep (sweeps of
several trials: test_tune), the baseline, order-pair accuracy, the printed table and the MLflow
runs; plus pair_accuracy by hand."""

import io
import time
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reslstm.datasets.synthetic import ORDER_PAIRS

from reslstm.configs import DemoConfig
from reslstm.distributed.demo import pair_accuracy, run_demo
from reslstm.distributed.tracking import experiments
from reslstm.reports.predictions import PREDICTION_SCHEMA


def test_pair_accuracy_counts_only_order_pair_classes(tmp_path):
    pair_class, other = ORDER_PAIRS[0][0], "slide_up"
    rows = [  # (label_name, label, probs): right, wrong, and a non-pair video that is wrong
        (pair_class, 0, [0.9, 0.1]), (pair_class, 0, [0.2, 0.8]), (other, 1, [0.9, 0.1])]
    table = pa.Table.from_pylist([
        {"video_id": f"v{i}", "label": lab, "label_name": name, "split": "test", "head": "fused",
         "probs": probs} for i, (name, lab, probs) in enumerate(rows)], schema=PREDICTION_SCHEMA)
    pq.write_table(table, tmp_path / "test.parquet")
    acc, n = pair_accuracy(tmp_path / "test.parquet")
    assert (acc, n) == (0.5, 2)


def test_targets_hold_exactly_at_their_thresholds():
    from reslstm.distributed.demo import DemoResult

    def result(seconds, fused, ours, theirs):
        return DemoResult(seconds=seconds, trials=[], best={}, test={"fused": fused}, baseline={},
                          pairs={"reslstm": ours, "baseline": theirs, "videos": 60},
                          mlflow_uri="sqlite:///x", experiment="e")

    assert [ok for _, ok in result(600, 0.8, 0.8, 0.6).targets()] == [True, True, True]
    assert [ok for _, ok in result(601, 0.79, 0.69, 0.5).targets()] == [False, False, False]
    texts = [t for t, _ in result(90, 0.836, 0.75, 0.5).targets()]
    assert texts == ["finishes in <= 10 min (1.5 min)", "fused test top-1 >= 0.8 (0.836)",
                     "order pairs: Res-LSTM beats the baseline by >= 0.2 (+0.250)"]


@pytest.mark.integration
def test_demo_runs_end_to_end_at_toy_size(ray_local, tmp_path):
    buf, err = io.StringIO(), io.StringIO()
    with redirect_stdout(buf), redirect_stderr(err):
        r = run_demo(DemoConfig(out=str(tmp_path / "demo"), videos_per_class=4, hidden=(16,),
                                depth=(1,), T=(4,), epochs=2, grace_period=1, batch_size=8))
        time.sleep(1.0)  # what Ray forwards from its workers a moment late is caught too
    printed = buf.getvalue()
    # The console a person reads: the baseline's epoch lines (a training worker's, forwarded by
    # Ray) are plain tagged lines like the sweep's, without Ray's worker prefixes and colours;
    # Ray's expected notes (ray#53727) are not shown; nothing comes after the final table.
    assert "\n[train] epoch 2: train_loss " in printed, printed
    for noise in ("(RayTrainWorker", "\x1b[", "53727"):
        assert noise not in printed and noise not in err.getvalue(), noise
    end = experiments.ui_hint(r.mlflow_uri, r.experiment_id)
    assert printed.rstrip("\n").endswith(end), printed[-800:]
    assert [(t.hidden, t.depth) for t in r.trials] == [(16, 1)]
    assert (r.best["hidden"], r.best["depth"]) == (16, 1)
    assert set(r.test) == set(r.baseline) == {"rgb", "flow", "fused"}
    assert all(0.0 <= v <= 1.0 for v in [*r.test.values(), *r.baseline.values()])
    pairs_in_test = 4 * 2 * len(ORDER_PAIRS) * 0.25  # 4 per class, a quarter of them test
    assert r.pairs["videos"] >= pairs_in_test - len(ORDER_PAIRS) * 2
    for text in ("Sweep (val top-1", "Test top-1 of the best trial", "Order pairs", "Targets:",
                 "mlflow ui --backend-store-uri sqlite:///"):
        assert text in printed
    from mlflow import MlflowClient

    client = MlflowClient(r.mlflow_uri)
    exp = client.get_experiment_by_name(r.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert all(run.info.status == "FINISHED" for run in runs)
    kinds = sorted(run.data.tags.get("reslstm.kind") for run in runs)
    assert kinds == ["baseline", "sweep", "trial"]  # one parent, all nested under it
    parent = next(run for run in runs if run.data.tags["reslstm.kind"] == "sweep")
    assert {run.data.tags.get("mlflow.parentRunId") for run in runs if run is not parent} == {
        parent.info.run_id}
    baseline = [run for run in runs if run.info.run_name.startswith("baseline-meanpool")]
    assert len(baseline) == 1 and "test_top1_order_pairs" in baseline[0].data.metrics
    assert np.isfinite(baseline[0].data.metrics["test_top1"])
    # Lineage: the registered model's source run (the best trial) names the extraction run that
    # made its features, and both runs log the feature store as one dataset (name and digest).
    name, alias = r.registered.removeprefix("models:/").split("@")
    source = client.get_run(client.get_model_version_by_alias(name, alias).run_id)
    extraction = client.get_run(source.data.tags["features.extraction_run"])
    assert client.get_experiment(extraction.info.experiment_id).name == "reslstm-extraction"
    assert extraction.data.tags["reslstm.kind"] == "extraction"
    assert extraction.info.status == "FINISHED" and extraction.data.params["extractor"] == "tiny3d"
    assert extraction.data.metrics["videos_written"] == 2 * 4 * 11  # both streams of 44 videos
    assert extraction.data.metrics["flow_seconds"] > 0
    (trained_on,) = [d.dataset for d in source.inputs.dataset_inputs]
    (made,) = [d.dataset for d in extraction.inputs.dataset_inputs]
    assert (made.name, made.digest) == (trained_on.name, trained_on.digest)
    assert {t.value for d in extraction.inputs.dataset_inputs for t in d.tags} == {"extraction"}
    assert [(d.dataset.name, d.dataset.digest) for d in baseline[0].inputs.dataset_inputs] == [
        (made.name, made.digest)]  # the baseline, trained on the same store, names it too
