"""distributed.train.trainer / worker / checkpoints: the epoch metrics, and training runs end to end
(a 2-worker mid-fusion run, a 1-worker late-fusion run with its options)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from featurestore_fixture import make_feature_store
from reslstm import metrics, storage, training
from reslstm.checkpoint import PAYLOAD_KEYS, PAYLOAD_PARTS, load_checkpoint
from reslstm.configs import TrainConfig
from reslstm.distributed.train import trainer
from reslstm.distributed.train import worker
from reslstm.fusion import late_fuse
from reslstm.model import build_model
from reslstm.reports.predictions import evaluate_fusion, heads_of, load_predictions
from reslstm.training import EvalResult


def test_storage_defaults_to_an_absolute_path_in_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(features="f", out="run")
    assert cfg.resolved_storage() == str(tmp_path / "run" / "ray_results")
    assert dataclasses.replace(cfg, storage_path="s3://b/x").resolved_storage() == "s3://b/x"
    # A run directory on S3: Ray Train's storage under it, with its endpoint and credentials
    # (trained there end to end: test_cluster_s3).
    out = "s3://k:s@b/runs/late?endpoint_override=http://127.0.0.1:9&scheme=http"
    s3 = dataclasses.replace(cfg, out=out).resolved_storage()
    assert s3 == storage.join(out, "ray_results") and s3.startswith("s3://k:s@b/runs/late/ray_results?")


def test_epoch_metrics_names_and_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([0, 1, 1, 2])
    res = EvalResult(loss=0.5, top1=0.75, top5=1.0, probs=probs, labels=labels,
                     head_top1={"rgb": 0.5, "flow": 0.25}, mean_class_acc=(1 + 0.5 + 1) / 3)
    m = worker.epoch_metrics(res, 1.25, ("rgb", "flow"))
    assert m == pytest.approx({"train_loss": 1.25, "val_loss": 0.5, "val_top1": 0.75,
                               "val_top5": 1.0, "val_mean_class_acc": (1 + 0.5 + 1) / 3,
                               "val_top1_rgb": 0.5, "val_top1_flow": 0.25})
    assert "val_top1_rgb" not in worker.epoch_metrics(res, 1.0, ("mid",))


# ---------------------------------------------------------------------------------------------
# Training runs: two with 2 workers (2 epochs), one with 1 worker (3 epochs), tiny models. Each
# run is made once per module and checked by every test that names it.
# ---------------------------------------------------------------------------------------------

RUNS = {  # name -> (fusion, options beyond the common ones)
    "mid-product-2w": ("mid-product", {"workers": 2}),
    # The options together in one run: no residual, dropout, no input projection (d_f == h).
    # (The late ops themselves are pinned on exact numbers in test_fusion.py.)
    "late-weighted-options": ("late-weighted", {"residual": False, "dropout": 0.3,
                                                "input_proj": "none", "hidden": 16}),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_feature_store(tmp_path_factory.mktemp("store"), seed=5)


@pytest.fixture(scope="module")
def runs(ray_local, store, tmp_path_factory):
    """``runs(name) -> (cfg, TrainResult)`` of RUNS[name], trained on first use."""
    done = {}

    def get(name):
        if name not in done:
            fusion, options = RUNS[name]
            two = options.get("workers") == 2
            kw = {"hidden": 8, "depth": 2, "T": 5, "epochs": 2 if two else 3, "batch_size": 8,
                  "lr": 1e-2, "workers": 1, **options}
            cfg = TrainConfig(features=str(store.root), out=str(tmp_path_factory.mktemp(name)),
                              fusion=fusion, **kw)
            done[name] = cfg, trainer.fit(cfg)
        return done[name]

    return get


def _check_run(res, store, heads):
    # One row per video and head, probabilities summing to 1, for val and test.
    for split in ("val", "test"):
        table = pq.read_table(res.predictions[split])
        assert Path(res.predictions[split]) == Path(res.run_dir) / "predictions" / f"{split}.parquet"
        assert sorted(set(table.column("head").to_pylist())) == sorted(heads)
        for head in heads:
            rows = table.filter(np.array(table.column("head").to_pylist()) == head)
            assert sorted(rows.column("video_id").to_pylist()) == store.ids(split)
            probs = np.asarray(rows.column("probs").to_pylist())
            assert probs.shape == (len(store.ids(split)), len(store.class_names))
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
            for vid, label, name in zip(rows.column("video_id").to_pylist(),
                                        rows.column("label").to_pylist(),
                                        rows.column("label_name").to_pylist()):
                assert label == store.labels[vid] and name == store.class_names[label]
    # The checkpoint Ray kept is the best epoch by val_top1 (ties: the later epoch).
    assert [h["epoch"] for h in res.history] == [1, 2]
    best = max(res.history, key=lambda h: (h["val_top1"], h["epoch"]))
    assert res.best_epoch == best["epoch"]
    assert res.best_metrics["val_top1"] == best["val_top1"]
    # The workers' val metrics (each video on one worker, combined) are the best checkpoint's
    # on all of val, as the prediction pass scores them.
    for key in ("top1", "top5", "mean_class_acc"):
        assert res.scores["val"]["fused"][key] == pytest.approx(best[f"val_{key}"], abs=1e-9)
    assert Path(res.best_checkpoint).name == f"epoch_{best['epoch']:04d}"
    summary = json.loads((Path(res.run_dir) / "summary.json").read_text())
    assert summary["best_checkpoint"] == res.best_checkpoint
    # It learns the fixture's signal (chance: 1/4), and DDP keeps the workers' weights equal.
    assert res.best_metrics["val_top1"] >= 0.5
    assert all(h["weights_spread"] == 0.0 for h in res.history)


def _check_checkpoint(res, cfg, store):
    model, payload = load_checkpoint(res.best_checkpoint)
    # The worker's payload is reslstm.checkpoint.build_payload's, with the optimizer to resume.
    assert list(payload) == [PAYLOAD_KEYS[0], "optimizer_state", *PAYLOAD_KEYS[1:], *PAYLOAD_PARTS]
    assert payload["label_names"] == store.class_names
    assert payload["train_config"] == cfg.to_dict()
    assert payload["epoch"] == res.best_epoch
    assert payload["model_config"]["fusion"] == cfg.fusion
    rebuilt = build_model(payload["model_config"])
    rebuilt.load_state_dict(payload["model_state"])  # strict: every key, PCA buffers included
    for proj in model.input_projections().values():
        assert proj.kind == "pca" and proj.is_fitted
        assert proj.components.abs().sum() > 0
    return model


@pytest.mark.integration
def test_a_two_worker_mid_fusion_run_predicts_as_its_checkpoint(runs, store):
    """Two DDP workers, mid fusion (single-stream runs: test_tune_resume, test_cluster_s3): the
    predictions of every split, the checkpoint, and the stored probabilities are the reloaded
    model's on the inputs sampled at sigma(t), both streams at the same clips."""
    cfg, res = runs("mid-product-2w")
    _check_run(res, store, ["fused"])
    model = _check_checkpoint(res, cfg, store)
    assert set(model.input_projections()) == {"rgb", "flow"}
    from reslstm.sampling import sample_pair
    table = pq.read_table(res.predictions["test"])
    for vid, probs in zip(table.column("video_id").to_pylist()[:3], table.column("probs").to_pylist()):
        rgb, flow = sample_pair(store.features["rgb"][vid], store.features["flow"][vid], cfg.T)
        with torch.no_grad():
            expected = model.probabilities(model({"rgb": torch.from_numpy(rgb)[None],
                                                  "flow": torch.from_numpy(flow)[None]}))[0].numpy()
        np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    assert res.scores["test"]["fused"]["top1"] == pytest.approx(
        float(np.mean([np.argmax(p) == store.labels[v] for v, p in zip(
            table.column("video_id").to_pylist(), table.column("probs").to_pylist())])))


@pytest.mark.integration
@pytest.mark.parametrize("name", ["late-weighted-options"])
def test_late_fusion_options_train(runs, name):
    """One worker each (the 2-worker path is covered above): the run learns (chance 1/4), its
    predictions have both streams' heads and the fused one, and its checkpoint records the
    options. (Trained end to end elsewhere: rgb in test_train_faults, mid-sum in test_presets,
    late-product in test_tune, a linear input projection in test_jobs.)"""
    cfg, res = runs(name)
    table = pq.read_table(res.predictions["test"])
    assert sorted(set(table.column("head").to_pylist())) == ["flow", "fused", "rgb"]
    assert res.best_metrics["val_top1"] >= 0.5, res.history
    _, payload = load_checkpoint(res.best_checkpoint)
    assert payload["model_config"]["fusion"] == cfg.fusion
    for key, value in RUNS[name][1].items():
        field_name = {"hidden": "hidden_size", "residual": "residual", "dropout": "dropout",
                      "input_proj": "input_proj"}[key]
        assert payload["model_config"][field_name] == value


@pytest.mark.integration
@pytest.mark.parametrize("name", ["late-weighted-options"])
def test_late_fusion_run_heads_fuse_to_its_own_fused_output(runs, name, tmp_path):
    """A late-fusion run's stored fused probabilities are its two heads fused by its op (by
    hand), and evaluating the run against itself with that op scores what the run scored."""
    cfg, res = runs(name)
    op = cfg.fusion.split("-", 1)[1]
    table = load_predictions(res.run_dir, "test")
    heads = {h: table.filter(pc.equal(table.column("head"), h)) for h in heads_of(table)}
    p = {h: np.asarray(t.column("probs").to_pylist(), np.float32) for h, t in heads.items()}
    y = np.asarray(heads["fused"].column("label").to_pylist())
    by_hand = late_fuse(p["rgb"], p["flow"], op)
    np.testing.assert_allclose(p["fused"], by_hand, rtol=1e-4, atol=1e-6)
    report = evaluate_fusion(res.run_dir, res.run_dir, op, out_dir=tmp_path / "rep", categories=None)
    assert report.rows[f"fused-{op}"]["top1"] == metrics.topk_accuracy(by_hand, y, 1)
    assert report.rows["rgb"]["top1"] == metrics.topk_accuracy(p["rgb"], y, 1)
    assert report.rows[f"fused-{op}"]["top1"] == pytest.approx(res.scores["test"]["fused"]["top1"])
    assert (tmp_path / "rep" / f"confusion_fused-{op}.png").is_file()
    assert (tmp_path / "rep" / f"per_class_fused-{op}.csv").is_file()


def _evaluate_rank(rank, world, init, shards, out):
    import torch.distributed as dist

    from test_training import tiny_model
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = tiny_model("late-product", seed=3)
        r = worker.evaluate_split(model, shards[rank], "cpu", ("rgb", "flow"))
        out.put((rank, r.loss, r.top1, r.top5, r.mean_class_acc, r.head_top1, len(r.labels)))
    finally:
        dist.destroy_process_group()


@pytest.mark.processes
def test_val_split_over_ranks_scores_as_one_process_on_all_of_it(tmp_path):
    """Each rank evaluates its share of val (one rank none at all); every rank reports the
    whole split's numbers, those of one process evaluating everything."""
    import torch.multiprocessing as mp

    from test_training import separable_batches, tiny_model
    val = separable_batches(("rgb", "flow"), n_batches=5, seed=4)
    for b in val[:3]:
        b["label"][::3] = 1 - b["label"][::3]  # some mistakes, so the numbers say something
    whole = training.evaluate(tiny_model("late-product", seed=3), val, "cpu", ("rgb", "flow"))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    shards = [val[:2], val[2:], []]
    procs = [ctx.Process(target=_evaluate_rank, args=(r, 3, f"file://{tmp_path / 'pg'}", shards, out))
             for r in range(3)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert len(got) == 3
    for _, loss, top1, top5, mca, heads, n in got:
        assert n == sum(len(b["label"]) for b in val)
        assert loss == pytest.approx(whole.loss, rel=1e-6)
        assert (top1, top5, mca) == (whole.top1, whole.top5, whole.mean_class_acc)
        assert heads == whole.head_top1
    assert 0 < whole.top1 < 1
