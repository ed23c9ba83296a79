"""The command-line jobs: every documented option reaches its config (argv -> config, table by
table), bad options exit 2 with one line naming the option, and train -> evaluate run end to
end through the jobs themselves."""

from pathlib import Path

import pytest

from featurestore_fixture import make_feature_store
from jobs_loader import job
from reslstm.configs import DemoConfig, ExtractConfig, SweepConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def captured(monkeypatch, module, target: str) -> list:
    """Replace ``module.target`` by a recorder of its arguments; returns the record."""
    calls = []
    monkeypatch.setattr(module, target, lambda *a, **k: calls.append((a, k)) or None)
    return calls


# ---------------------------------------------------------------------------------------------
# argv -> config
# ---------------------------------------------------------------------------------------------

TRAIN_ARGS = [
    ("--features", "f/store", "features", "f/store"), ("--out", "runs/x", "out", "runs/x"),
    ("--stream", "late-weighted", "fusion", "late-weighted"), ("--hidden", "64", "hidden", 64),
    ("--depth", "3", "depth", 3), ("--T", "7", "T", 7),
    ("--input-proj", "none", "input_proj", "none"), ("--no-residual", None, "residual", False),
    ("--dropout", "0.25", "dropout", 0.25), ("--arch", "meanpool", "arch", "meanpool"),
    ("--epochs", "4", "epochs", 4), ("--batch-size", "5", "batch_size", 5),
    ("--lr", "0.02", "lr", 0.02), ("--seed", "9", "seed", 9), ("--workers", "3", "workers", 3),
    ("--use-gpu", "no", "use_gpu", "no"), ("--storage-path", "s3://b/r", "storage_path", "s3://b/r"),
    ("--pca-max-vectors", "77", "pca_max_vectors", 77),
    ("--cpus-per-worker", "0.5", "cpus_per_worker", 0.5),
    ("--no-cache-data", None, "cache_data", False), ("--name", "run-a", "name", "run-a"),
    ("--max-failures", "-1", "max_failures", -1),
]


def _argv(table):
    return [x for flag, value, _, _ in table for x in ([flag] if value is None else [flag, value])]


def test_every_train_option_reaches_the_config(monkeypatch):
    train = job("train")
    calls = captured(monkeypatch, train, "fit")
    assert train.main(_argv(TRAIN_ARGS) + ["--address", "auto"]) == 0
    (cfg, address), _ = calls[0]
    assert isinstance(cfg, TrainConfig) and address == "auto"
    for flag, _, field, want in TRAIN_ARGS:
        assert getattr(cfg, field) == want, flag
    defaults = TrainConfig(features="f")
    calls.clear()
    train.main(["--features", "f", "--out", "o"])
    cfg = calls[0][0][0]
    assert (cfg.residual, cfg.cache_data, cfg.input_proj, cfg.hidden) == (
        defaults.residual, defaults.cache_data, defaults.input_proj, defaults.hidden)


def test_every_tune_option_reaches_the_sweep_and_its_trials(monkeypatch):
    tune = job("tune")
    calls = captured(monkeypatch, tune, "sweep")
    trial_args = [t for t in TRAIN_ARGS
                  if t[2] not in ("fusion", "hidden", "depth", "T", "residual", "name")]
    sweep_args = [("--hidden", "8,16", "hidden", (8, 16)), ("--depth", "1,2", "depth", (1, 2)),
                  ("--T", "5,9", "T", (5, 9)), ("--fusion", "rgb,mid-sum", "fusion", ("rgb", "mid-sum")),
                  ("--search", "random", "search", "random"), ("--num-samples", "3", "num_samples", 3),
                  ("--grace-period", "2", "grace_period", 2),
                  ("--max-concurrent", "2", "max_concurrent", 2),
                  ("--mlflow-uri", "http://127.0.0.1:5000", "mlflow_uri", "http://127.0.0.1:5000"),
                  ("--experiment", "e1", "experiment", "e1"), ("--name", "sw", "name", "sw"),
                  ("--retry-errored", None, "retry_errored", True),
                  ("--residual", "on,off", "residual", (True, False)), ("--seeds", "3", "seeds", 3),
                  ("--scheduler", "none", "scheduler", "none"), ("--test-all", None, "test_all", True),
                  ("--register-model", "none", "register_model", None)]
    assert tune.main(_argv(trial_args) + _argv(sweep_args)) == 0
    (scfg, _), _ = calls[0]
    assert isinstance(scfg, SweepConfig)
    for flag, _, field, want in sweep_args:
        assert getattr(scfg, field) == want, flag
    for flag, _, field, want in trial_args:
        assert getattr(scfg.base, field) == want, flag
    assert scfg.base.name is None  # the sweep names its trials' runs


def test_every_extract_option_reaches_the_config(monkeypatch):
    extract = job("extract")
    calls = captured(monkeypatch, extract, "run_extraction")
    table = [("--manifest", "m.parquet", "manifest", "m.parquet"), ("--out", "st", "out", "st"),
             ("--streams", "flow", "streams", ("flow",)), ("--extractor", "c3d", "extractor", "c3d"),
             ("--weights", "w.pt", "weights", "w.pt"), ("--flow-weights", "none", "flow_weights", "none"),
             ("--flow", "farneback", "flow", "farneback"), ("--clip-len", "12", "clip_len", 12),
             ("--clip-stride", "4", "clip_stride", 4), ("--crops", "1", "crops", 1),
             ("--size", "160", "size", 160), ("--batch-size", "3", "batch_size", 3),
             ("--actors", "2", "actors", 2), ("--actor-cpus", "1.5", "actor_cpus", 1.5),
             ("--clips-per-segment", "5", "clips_per_segment", 5),
             ("--min-frame-ratio", "0.5", "min_frame_ratio", 0.5),
             ("--max-failed", "0.3", "max_failed", 0.3), ("--retry-failed", None, "retry_failed", True),
             ("--overwrite", None, "overwrite", True), ("--allow-cpu-raft", None, "allow_cpu_raft", True),
             ("--raft-size", "small", "raft_size", "small"),
             ("--raft-weights", "r.pt", "raft_weights", "r.pt"),
             ("--object-store-limit-gb", "1.5", "object_store_limit_gb", 1.5),
             ("--address", "ray://h:10001", "address", "ray://h:10001")]
    assert extract.main(_argv(table)) == 0
    (cfg,), _ = calls[0]
    assert isinstance(cfg, ExtractConfig)
    for flag, _, field, want in table:
        assert getattr(cfg, field) == want, flag
    verify = captured(monkeypatch, extract, "verify")
    extract.main(["--verify", "--out", "st", "--manifest", "m.parquet"])
    assert verify[0][0] == ("st", "m.parquet")


def test_every_demo_option_reaches_the_config(monkeypatch):
    demo = job("demo")
    calls = captured(monkeypatch, demo, "run_demo")
    table = [("--out", "d", "out", "d"), ("--videos-per-class", "6", "videos_per_class", 6),
             ("--seed", "2", "seed", 2), ("--flow", "tvl1", "flow", "tvl1"),
             ("--hidden", "16", "hidden", (16,)), ("--depth", "1,3", "depth", (1, 3)),
             ("--T", "4", "T", (4,)), ("--fusion", "late-sum", "fusion", ("late-sum",)),
             ("--epochs", "3", "epochs", 3), ("--grace-period", "2", "grace_period", 2),
             ("--batch-size", "4", "batch_size", 4), ("--workers", "2", "workers", 2),
             ("--address", "auto", "address", "auto"),
             ("--mlflow-uri", "sqlite:////tmp/x.db", "mlflow_uri", "sqlite:////tmp/x.db")]
    assert demo.main(_argv(table)) == 0
    (cfg,), _ = calls[0]
    assert isinstance(cfg, DemoConfig)
    for flag, _, field, want in table:
        assert getattr(cfg, field) == want, flag


@pytest.mark.parametrize("name, argv, message", [
    ("train", ["--features", "f", "--out", "o", "--epochs", "0"], "train: --epochs: must be > 0, got 0"),
    ("train", ["--features", "f", "--out", "o", "--dropout", "1.5"], "train: --dropout: must be in [0, 1)"),
    ("tune", ["--features", "f", "--out", "o", "--fusion", "late-prod"],
     "tune: --fusion: value 'late-prod' must be one of"),
    ("tune", ["--features", "f", "--out", "o", "--hidden", "8,0"], "tune: --hidden: value 0 must be > 0"),
    ("extract", ["--out", "st", "--extractor", "tiny3d"], "extract: --manifest: is required"),
    ("extract", ["--out", "st", "--manifest", "m", "--streams", "rgb,depth"],
     "extract: --streams: must be a comma list of rgb, flow"),
    ("extract", ["--out", "st", "--manifest", "m", "--max-failed", "2"],
     "extract: --max-failed: must be a share in [0, 1]"),
    ("demo", ["--epochs", "0"], "demo: --epochs: must be > 0"),
])
def test_bad_options_exit_2_naming_the_option(name, argv, message, capsys):
    assert job(name).main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err, err


def test_unknown_and_malformed_options_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        job("train").main(["--features", "f", "--out", "o", "--stream", "rgbb"])
    assert exit_info.value.code == 2 and "invalid choice: 'rgbb'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        job("tune").main(["--features", "f", "--out", "o", "--hidden", "8,big"])
    assert "comma list of int" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# train -> evaluate, through the jobs
# ---------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_train_then_evaluate_jobs_end_to_end(ray_local, tmp_path, capsys):
    """One late-fusion run trained by jobs/train.py; jobs/evaluate.py fuses its two streams'
    heads (a late run given as both sides: each side takes its own stream's head)."""
    store = make_feature_store(tmp_path / "store", seed=11)
    run = tmp_path / "late"
    train = job("train")
    assert train.main(["--features", str(store.root), "--stream", "late-sum", "--hidden", "8",
                       "--T", "5", "--epochs", "2", "--batch-size", "8", "--lr", "0.01",
                       "--workers", "1", "--input-proj", "linear", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "[train] epoch 2:" in out and "summary:" in out
    evaluate = job("evaluate")
    code = evaluate.main(["--rgb", str(run), "--flow", str(run), "--fusion", "weighted",
                          "--out", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "test (4 classes)" in printed and "fused-weighted" in printed
    assert (tmp_path / "report" / "confusion_fused-weighted.png").is_file()
    # A missing run directory is a clear error with exit 2.
    assert evaluate.main(["--rgb", str(tmp_path / "nope"), "--flow", str(run)]) == 2
    assert "evaluate:" in capsys.readouterr().err
