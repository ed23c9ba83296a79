"""distributed.tune.sweep and distributed.tracking.runs: search space, concurrency, MLflow runs, and a
sweep whose feature store and Tune storage are on the local S3 API."""

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from featurestore_fixture import make_feature_store
from reslstm.distributed.tracking import experiments
from reslstm.distributed.tracking import runs as tracking
from reslstm.distributed.tune import sweep as rtune
from reslstm.distributed.tune.results import rows_of
from reslstm.cli import parse_list
from reslstm.configs import SweepConfig, TrainConfig
from reslstm.fusion import late_fuse
from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)


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
    assert experiments.default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


class FakeTrial:
    def __init__(self, trial_id, config):
        self.trial_id, self.config = trial_id, config

    def __str__(self):
        return f"trial_{self.trial_id}"


def _callback(tmp_path, sweep="s1"):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    exp_id = experiments.ensure_experiment(client, "exp")
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


def test_a_sweeps_out_must_be_local():
    with pytest.raises(ValueError, match="--out: must be a local directory for a sweep.*"
                                         "--storage-path"):
        SweepConfig(base=TrainConfig(features="s3://bucket/features", out="s3://bucket/x"))


# ---------------------------------------------------------------------------------------------
# A 2-trial sweep of 2-worker trials, with the feature store and Tune's storage (and each
# trial's Train run) on the local S3 API; its out directory and MLflow are local
# ---------------------------------------------------------------------------------------------

BUCKET = "tune-tests"


@pytest.fixture(scope="module")
def s3_sweep(ray_local, s3_server, tmp_path_factory):
    """The sweep, run once for the module's tests: the store is uploaded to the bucket and read
    through a URI that carries the endpoint and credentials; no AWS variable is set, and the
    working directory is an empty folder that must stay empty."""
    root = tmp_path_factory.mktemp("sweep")
    store = make_feature_store(root / "store", seed=2)
    s3_server.bucket(BUCKET)
    pafs.copy_files(str(store.root), f"{BUCKET}/features", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=s3_server.filesystem())
    uri = f"sqlite:///{root}/mlflow.db"
    work = root / "cwd"
    work.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("AWS_"):
                mp.delenv(key)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.chdir(work)
        base = TrainConfig(features=s3_server.uri(BUCKET, "features"), out=str(root / "sweep"),
                           hidden=8, T=5, epochs=2, batch_size=8, lr=1e-2, workers=1,
                           storage_path=s3_server.uri(BUCKET, "tune"))
        scfg = SweepConfig(base, hidden=[8], depth=[1, 2], T=[5], fusion=["late-product"],
                           mlflow_uri=uri, experiment="sweep-test", name="s3-sweep")
        res = rtune.sweep(scfg)
    return SimpleNamespace(res=res, store=store, uri=uri, work=work)


@pytest.mark.integration
def test_sweep_storage_on_s3_holds_tunes_experiment_and_each_trials_train_run(s3_sweep, s3_server):
    res = s3_sweep.res
    assert all(t.checkpoint for t in res.trials)
    keys = s3_server.objects(BUCKET, "tune")
    # Tune's experiment, and each trial's Train run (named after sweep and trial) beside it.
    assert "tune/s3-sweep/tuner.pkl" in keys, keys
    assert len({k.split("/")[1] for k in keys if k.startswith("tune/s3-sweep-")
                and k.endswith("/model.pt")}) == 2, keys
    assert res.storage_path == f"s3://{BUCKET}/tune/s3-sweep"
    assert list(s3_sweep.work.iterdir()) == []  # nothing written to the working directory
    # What MLflow recorded names the locations without the keys.
    client = MlflowClient(s3_sweep.uri)
    for run in (client.get_run(res.parent_run_id), client.get_run(res.best_run_id)):
        recorded = json.dumps([run.data.params, run.data.tags])
        assert s3_server.secret_key not in recorded and s3_server.access_key not in recorded
        assert run.data.params["features"] == f"s3://{BUCKET}/features"
    # The best model's test predictions were made from its checkpoint on S3.
    assert pq.read_table(res.predictions["test"]).num_rows > 0


@pytest.mark.integration
def test_two_trial_sweep_logs_finished_runs_and_the_best_trials_test(s3_sweep):
    res, store, uri = s3_sweep.res, s3_sweep.store, s3_sweep.uri
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
    # The best trial's stored fused probabilities are its two heads' late product.
    table = pq.read_table(res.predictions["test"])
    probs = {h: np.asarray([p for p, hh in zip(table.column("probs").to_pylist(),
                                               table.column("head").to_pylist()) if hh == h],
                           np.float32) for h in ("rgb", "flow", "fused")}
    np.testing.assert_allclose(probs["fused"], late_fuse(probs["rgb"], probs["flow"], "product"),
                               rtol=1e-4, atol=1e-6)

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
    assert dataset.dataset.source_type == "s3"
    assert json.loads(dataset.dataset.source) == {"uri": f"s3://{BUCKET}/features"}  # no keys
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
    from reslstm.checkpoint import load_checkpoint
    from reslstm.distributed.tracking.models import load_registered

    model, payload = load_registered("models:/reslstm@champion", tracking_uri=uri)
    assert payload["label_names"] == store.class_names
    assert payload["features"]["rgb"]["extractor"] == "synthetic"
    assert payload["model_config"]["num_layers"] == res.best_config.depth
    kept, _ = load_checkpoint(res.report_files["model"])
    x = {s: torch.randn(3, 5, store.feature_dim) for s in ("rgb", "flow")}
    with torch.no_grad():
        torch.testing.assert_close(model.probabilities(model(x)), kept.probabilities(kept(x)))
