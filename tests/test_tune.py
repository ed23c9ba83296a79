"""distributed.tune and distributed.tracking: search space, concurrency, MLflow runs, a sweep."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from featurestore_fixture import make_feature_store
from reslstm.distributed import tracking
from reslstm.distributed import tune as rtune
from reslstm.distributed.sweep_results import rows_of
from reslstm.cli import parse_list
from reslstm.configs import SweepConfig, TrainConfig


def test_parse_list():
    assert parse_list("512, 1024,", int) == (512, 1024)
    assert parse_list("late-product,mid-sum") == ("late-product", "mid-sum")
    with pytest.raises(ValueError, match="comma list of int"):
        parse_list("512,big", int)


def test_param_space_grid_and_random():
    base = TrainConfig(features="f")
    grid = rtune.param_space(SweepConfig(base, hidden=[8, 16], depth=[1], T=[5],
                                               fusion=["rgb"]))
    assert grid["hidden"] == {"grid_search": [8, 16]} and "seed" not in grid
    seeded = rtune.param_space(SweepConfig(TrainConfig(features="f", seed=7), residual=[True, False],
                                           seeds=3, search="random"))
    assert seeded["seed"] == {"grid_search": [7, 8, 9]}  # every configuration once per seed
    assert sorted(seeded["residual"].categories) == [False, True]
    rnd = rtune.param_space(SweepConfig(base, hidden=[8, 16], search="random"))
    assert sorted(rnd["hidden"].categories) == [8, 16]
    with pytest.raises(ValueError, match="--search: must be one of grid, random"):
        SweepConfig(base, search="bayes")


def test_trial_config_overrides_only_the_searched_values():
    base = TrainConfig(features="f", lr=0.5, hidden=4)
    cfg = rtune.trial_config(base, {"hidden": 8, "depth": 3, "T": 7, "fusion": "mid-sum",
                                    "residual": False, "seed": 4, "ignored": 1})
    assert (cfg.hidden, cfg.depth, cfg.T, cfg.fusion, cfg.lr) == (8, 3, 7, "mid-sum", 0.5)
    assert (cfg.residual, cfg.seed) == (False, 4)


def test_concurrency_counts_each_trial_driver_cpu():
    # 2 cores, 2 workers: each worker gets (2 - 1) / 2 CPUs, one trial at a time.
    assert rtune.plan_concurrency(2, 0, 2, 0.5, use_gpu=False) == 1
    # 16 cores: 1 + 2 x 1 = 3 CPUs per trial -> 5 trials.
    assert rtune.plan_concurrency(16, 0, 2, 1.0, use_gpu=False) == 5
    # GPUs bound it too: 4 GPUs / 2 workers.
    assert rtune.plan_concurrency(64, 4, 2, 1.0, use_gpu=True) == 2
    assert rtune.plan_concurrency(2, 0, 2, 0.5, use_gpu=False, requested=3) == 3


def test_default_tracking_uri_is_an_absolute_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


class FakeTrial:
    def __init__(self, trial_id, config):
        self.trial_id, self.config = trial_id, config

    def __str__(self):
        return f"trial_{self.trial_id}"


def _callback(tmp_path, sweep="s1"):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    exp_id = tracking.ensure_experiment(client, "exp")
    parent = client.create_run(exp_id, tags={tracking.SWEEP_TAG: sweep,
                                             tracking.KIND_TAG: "sweep"}).info.run_id
    cb = tracking.MLflowTrialCallback(uri, exp_id, parent, sweep, {"lr": 0.001, "features": "/s"},
                                      epochs=3)
    return uri, client, cb


def test_callback_runs_finish_also_when_stopped_early_and_fail_on_errors(tmp_path):
    uri, client, cb = _callback(tmp_path)
    cb.setup()
    trials = [FakeTrial(t, {"hidden": h, "depth": 1, "T": 5, "fusion": "rgb"})
              for t, h in (("full", 8), ("early", 16), ("broken", 32))]
    for t in trials:
        cb.on_trial_start(0, trials, t)
    for epoch in (1, 2, 3):
        cb.on_trial_result(0, trials, trials[0], {"epoch": epoch, "val_top1": 0.1 * epoch,
                                                  "train_loss": 1.0 / epoch, "time": "x",
                                                  "checkpoint_path": f"/c/e{epoch}"})
    cb.on_trial_result(0, trials, trials[1], {"epoch": 1, "val_top1": 0.05})
    cb.on_trial_complete(0, trials, trials[0])
    cb.on_trial_complete(0, trials, trials[1])  # ASHA stopped it after epoch 1
    cb.on_trial_error(0, trials, trials[2])
    runs = {r.data.tags["ray.trial_id"]: r for r in client.search_runs(
        [cb.experiment_id], filter_string="tags.`reslstm.kind` = 'trial'")}
    assert {t: r.info.status for t, r in runs.items()} == {
        "full": "FINISHED", "early": "FINISHED", "broken": "FAILED"}
    assert runs["early"].data.tags["stopped_early"] == "true"
    assert runs["full"].data.tags["stopped_early"] == "false"
    assert runs["full"].data.tags["ray.checkpoint_path"] == "/c/e3"
    assert runs["full"].data.params == {"lr": "0.001", "features": "/s", "hidden": "8",
                                        "depth": "1", "T": "5", "fusion": "rgb"}
    history = client.get_metric_history(runs["full"].info.run_id, "val_top1")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert "time" not in runs["full"].data.metrics
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {cb.parent_run_id}


def test_a_restored_callback_keeps_one_run_per_trial(tmp_path):
    """After a restore, a trial keeps its run: from the callback's saved state, or found in
    MLflow by its tags when the driver died before Tune saved that state."""
    import pickle

    uri, client, cb = _callback(tmp_path)
    trials = [FakeTrial("a", {"hidden": 8}), FakeTrial("b", {"hidden": 16})]
    for t in trials:
        cb.on_trial_start(0, trials, t)
    cb.on_trial_result(0, trials, trials[0], {"epoch": 1, "val_top1": 0.5})
    saved = cb.get_state()
    restored = pickle.loads(pickle.dumps(cb))  # as Tune brings back a sweep's run config
    restored.run_ids.clear()
    restored.set_state({"run_ids": {"a": saved["run_ids"]["a"]}})  # "b" started after the save
    for t in trials:
        restored.on_trial_start(0, trials, t)
    assert restored.run_ids == cb.run_ids
    restored.on_trial_result(0, trials, trials[0], {"epoch": 1, "val_top1": 0.6})  # redone
    restored.on_trial_result(0, trials, trials[0], {"epoch": 2, "val_top1": 0.75})
    restored.on_trial_complete(0, trials, trials[0])
    runs = client.search_runs([cb.experiment_id], filter_string="tags.`reslstm.kind` = 'trial'")
    assert len(runs) == 2
    history = client.get_metric_history(cb.run_ids["a"], "val_top1")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
    # The sweep ends: a trial Tune never finished is ended, none stays RUNNING.
    assert tracking.end_unfinished(uri, cb.experiment_id, "s1") == [cb.run_ids["b"]]
    assert {r.info.status for r in client.search_runs(
        [cb.experiment_id], filter_string="tags.`reslstm.kind` = 'trial'")} == {"FINISHED", "KILLED"}


def test_trial_rows_take_the_best_epoch_and_mark_early_stops():
    def result(path, vals, error=None):
        df = pd.DataFrame({"epoch": list(range(1, len(vals) + 1)), "val_top1": vals,
                           "checkpoint_path": [f"{path}/e{i}" for i in range(1, len(vals) + 1)]})
        return SimpleNamespace(metrics_dataframe=df, metrics={}, path=f"/r/{path}", error=error,
                               config={"hidden": 8, "depth": 1, "T": 5, "fusion": "rgb"})

    grid = [result("t_full", [0.2, 0.6, 0.6, 0.4]), result("t_stopped", [0.1]),
            result("t_broken", [0.3, 0.5], error=RuntimeError("x"))]
    rows = rows_of(grid, epochs=4, run_ids={"t_full": "r1"})
    by_id = {r.trial_id: r for r in rows}
    assert (by_id["t_full"].val_top1, by_id["t_full"].epochs) == (0.6, 4)
    assert by_id["t_full"].checkpoint == "t_full/e3"  # ties: the later epoch, as Ray keeps it
    assert not by_id["t_full"].stopped_early and by_id["t_stopped"].stopped_early
    assert by_id["t_broken"].status == "error: RuntimeError" and not by_id["t_broken"].stopped_early
    assert by_id["t_full"].mlflow_run_id == "r1" and by_id["t_stopped"].mlflow_run_id is None


# ---------------------------------------------------------------------------------------------
# A 2-trial sweep
# ---------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_two_trial_sweep_logs_finished_runs_and_the_best_trials_test(ray_local, tmp_path):
    store = make_feature_store(tmp_path / "store", seed=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = TrainConfig(features=str(store.root), out=str(tmp_path / "sweep"), hidden=8, T=5,
                       epochs=2, batch_size=8, lr=1e-2, workers=2)
    scfg = SweepConfig(base, hidden=[8], depth=[1, 2], T=[5], fusion=["late-product"],
                             mlflow_uri=uri, experiment="sweep-test")
    res = rtune.sweep(scfg)

    assert len(res.trials) == 2 and {t.depth for t in res.trials} == {1, 2}
    best = max(res.trials, key=lambda t: t.val_top1)
    assert res.best_val_top1 == best.val_top1
    assert res.best_config.depth in (1, 2) and res.best_config.fusion == "late-product"
    table = res.table().splitlines()
    for t in res.trials:  # each trial's row, with its own stopped-early mark
        (row,) = [ln for ln in table if ln.startswith(t.trial_id)]
        assert row.split()[1:7] == ["late-product", "8", str(t.depth), "5", "on", "0"]
        assert row.split()[9] == ("yes" if t.stopped_early else "no")
    for key in ("test_top1", "test_top5", "test_mean_class_acc", "test_top1_rgb",
                "test_top1_flow"):
        assert 0.0 <= res.test_metrics[key] <= 1.0
    assert set(res.predictions) == {"val", "test"}

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep-test")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_id: r for r in client.search_runs(
        [exp.experiment_id], filter_string="tags.`reslstm.kind` = 'trial'")}
    assert len(runs) == 2
    # One parent run per sweep: its settings, source, input, best metrics, report; FINISHED.
    (parent,) = client.search_runs([exp.experiment_id],
                                   filter_string="tags.`reslstm.kind` = 'sweep'")
    assert parent.info.run_id == res.parent_run_id and parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {res.parent_run_id}
    assert (parent.data.params["depth"], parent.data.params["lr"]) == ("1,2", "0.01")
    assert parent.data.params["best_depth"] == str(res.best_config.depth)
    assert parent.data.metrics["test_top1"] == pytest.approx(res.test_metrics["test_top1"])
    assert parent.data.tags["mlflow.source.name"]
    assert parent.data.tags["features.rgb.extractor"] == "synthetic"
    assert parent.data.tags["features.flow.flow_method"] == "tvl1"
    (dataset,) = parent.inputs.dataset_inputs
    assert dataset.dataset.source_type == "local" and str(store.root) in dataset.dataset.source
    assert {a.path for a in client.list_artifacts(res.parent_run_id)} >= {
        "trials.csv", "trials.md", "val_curves.png"}
    for t in res.trials:
        run = runs[t.mlflow_run_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["ray.trial_id"] == t.trial_id
        assert run.data.tags["ray.checkpoint_path"]
        params = run.data.params
        assert (params["hidden"], params["depth"], params["T"], params["fusion"]) == (
            "8", str(t.depth), "5", "late-product")
        for key in ("input_proj", "lr", "batch_size", "epochs", "residual", "arch", "features"):
            assert key in params
        for name in ("train_loss", "val_top1", "val_top5", "val_mean_class_acc",
                     "val_top1_rgb", "val_top1_flow"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
            assert steps == list(range(1, t.epochs + 1)), name
        assert math.isclose(max(m.value for m in client.get_metric_history(
            run.info.run_id, "val_top1")), t.val_top1)

    best_run = runs[res.best_run_id]
    assert best_run.data.tags["ray.trial_id"] == res.best_trial_id
    assert best_run.data.metrics["test_top1"] == pytest.approx(res.test_metrics["test_top1"])
    assert best_run.data.metrics["test_top1_flow"] == pytest.approx(
        res.test_metrics["test_top1_flow"])
    artifacts = {a.path for a in client.list_artifacts(res.best_run_id)}
    assert {"confusion_fused.png", "per_class_fused.csv", "checkpoint"} <= artifacts
    assert [a.path for a in client.list_artifacts(res.best_run_id, "checkpoint")] == [
        "checkpoint/model.pt"]
    version = client.get_model_version_by_alias("reslstm", "champion")
    assert version.run_id == res.best_run_id and res.registered == "models:/reslstm@champion"
    other = next(r for r in runs.values() if r.info.run_id != res.best_run_id)
    assert "test_top1" not in other.data.metrics

    # The best model is registered; its alias loads a working model with what predicting needs.
    from reslstm.distributed.checkpoints import load_checkpoint
    from reslstm.distributed.registry import load_registered

    model, payload = load_registered("models:/reslstm@champion", tracking_uri=uri)
    assert payload["label_names"] == store.class_names
    assert payload["features"]["rgb"]["extractor"] == "synthetic"
    assert payload["model_config"]["num_layers"] == res.best_config.depth
    kept, _ = load_checkpoint(res.report_files["model"])
    x = {s: torch.randn(3, 5, store.feature_dim) for s in ("rgb", "flow")}
    with torch.no_grad():
        torch.testing.assert_close(model.probabilities(model(x)), kept.probabilities(kept(x)))
