"""Training with everything on the local S3 API: the feature store, the run directory
(predictions, summary.json) and Ray Train's checkpoints, all reached through URIs that carry the
endpoint and credentials, with no AWS settings in the environment and nothing written to the
working directory. (A sweep with its storage on S3: test_tune.py.)"""

import json
import os
import urllib.parse

import pyarrow.fs as pafs
import pytest

from featurestore_fixture import make_feature_store
from reslstm import storage
from reslstm.configs import TrainConfig
from reslstm.checkpoint import load_checkpoint
from reslstm.distributed.train import trainer
from reslstm.reports.predictions import load_predictions
from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)

BUCKET = "train-tests"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_store(s3_server, tmp_path_factory):
    """The tests' small feature store, uploaded to the bucket; its URI."""
    local = make_feature_store(tmp_path_factory.mktemp("store"), seed=5)
    s3_server.bucket(BUCKET)
    pafs.copy_files(str(local.root), f"{BUCKET}/features",
                    source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=s3_server.filesystem())
    return s3_server.uri(BUCKET, "features")


@pytest.fixture
def no_aws_env(monkeypatch, tmp_path):
    """No AWS variables (credentials must come from the URIs) and an empty working directory
    that must stay empty."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_train_run_with_features_run_dir_and_checkpoints_on_s3(ray_local, s3_server, s3_store,
                                                               no_aws_env):
    out = s3_server.uri(BUCKET, "runs/late")
    cfg = TrainConfig(features=s3_store, out=out, fusion="late-product", hidden=8, depth=2, T=5,
                      epochs=2, batch_size=8, lr=1e-2, workers=2, name="late-s3")
    assert cfg.resolved_storage() == storage.join(out, "ray_results")
    assert "?" in cfg.resolved_storage() and "@" in cfg.resolved_storage()
    res = trainer.fit(cfg)

    keys = s3_server.objects(BUCKET, "runs/late")
    assert "runs/late/summary.json" in keys
    assert {"runs/late/predictions/val.parquet", "runs/late/predictions/test.parquet"} <= set(keys)
    # Ray Train's run (its snapshot and the checkpoints with model.pt) under the run directory.
    assert any(k.startswith("runs/late/ray_results/late-s3/") and k.endswith("/model.pt")
               for k in keys), keys
    # Printed and recorded locations carry neither the endpoint nor the keys.
    assert res.run_dir == f"s3://{BUCKET}/runs/late"
    assert res.predictions["test"] == f"s3://{BUCKET}/runs/late/predictions/test.parquet"
    summary = json.loads(storage.resolve(out).join("summary.json").read_text())
    # Recorded settings name the locations without keys or endpoint (any encoding of them).
    for secret in (s3_server.secret_key, s3_server.access_key,
                   urllib.parse.quote(s3_server.secret_key, safe="")):
        assert secret not in json.dumps(summary)
    assert summary["train_config"]["features"] == f"s3://{BUCKET}/features"
    assert summary["best_epoch"] in (1, 2)
    # The predictions read back through the run directory's URI: every test video, both heads.
    table = load_predictions(out, "test")
    assert set(table.column("head").to_pylist()) == {"fused", "rgb", "flow"}
    assert table.num_rows == 3 * len(set(table.column("video_id").to_pylist()))
    # The best checkpoint loads from S3 with the history of both epochs.
    assert res.best_checkpoint.startswith(f"s3://{BUCKET}/runs/late/ray_results/late-s3/")
    # The run directory's URI is a model reference (what jobs/predict.py --model takes): its
    # summary's best checkpoint is read with the run directory's endpoint and credentials.
    _, payload = load_checkpoint(out)
    assert payload["epoch"] == res.best_epoch
    assert [h["epoch"] for h in res.history] == [1, 2]
    # Nothing was written locally (Ray's session files live under its temp dir).
    assert list(no_aws_env.iterdir()) == []
    # The same command with the same name continues the finished run: nothing is retrained.
    assert trainer.has_run(trainer.storage_location(cfg), "late-s3")
