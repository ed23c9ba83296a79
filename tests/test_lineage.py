"""Lineage in MLflow (distributed/tracking/extraction.py, lineage.py): an extraction is an MLflow
run (params, per-stage metrics, the failures table, the store as a dataset, system metrics), the
store's metadata names every such run, and training runs name the store and its extraction."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from reslstm import features as fs
from reslstm.configs import ExtractConfig
from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest
from reslstm.datasets.synthetic import generate_synthetic
from reslstm.distributed.tracking import experiments, lineage
from reslstm.distributed.tracking import runs as tracking
from reslstm.extraction.settings import TooManyFailures


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rows = pq.read_table(generate_synthetic(root, videos_per_class=1, seed=6)).select(
        MANIFEST_SCHEMA.names).slice(0, 2).to_pylist()
    (root / "broken.mp4").write_bytes(b"no video here")
    rows.append({**rows[0], "video_id": "broken", "path": str(root / "broken.mp4")})
    path = root / "m.parquet"
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    return path


def extract(manifest, out, uri, **kw):
    from reslstm.distributed.extract.job import run_extraction

    return run_extraction(ExtractConfig(manifest=str(manifest), out=str(out), extractor="tiny3d",
                                        crops=1, flow="dis", mlflow_uri=uri, **kw))


@pytest.mark.integration
def test_an_extraction_is_an_mlflow_run_the_store_names(ray_local, manifest, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "store"
    summary = extract(manifest, out, uri, max_failed=1.0)  # the broken file fails, 2 written
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("reslstm-extraction")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["reslstm.kind"] == "extraction"
    # Params: how the features were made.
    p = run.data.params
    assert (p["extractor"], p["crops"], p["flow_method"], p["fps"]) == ("tiny3d", "1", "dis", "native")
    assert p["weights_id.rgb"] == p["weights_id.flow"] == "random-init" and p["store"] == str(out)
    # Metrics: this run's counts and each stage's work.
    m = run.data.metrics
    assert m["videos_written"] == 4 == summary.videos and m["failed"] == 2
    assert m["decode_seconds"] > 0 and m["flow_seconds"] > 0 and m["features_seconds"] > 0
    assert m["features_videos_per_s"] == pytest.approx(4 / m["features_seconds"])
    # The failures table, as artifacts.
    local = client.download_artifacts(run.info.run_id, "failures.csv", str(tmp_path / "a"))
    lines = Path(local).read_text().splitlines()
    assert len(lines) == 3 and all("broken" in line for line in lines[1:])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "failures.csv", "failures.parquet"}
    # The store as a dataset input (context extraction), digest of its settings.
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == f"features:{Path(out).name}"
    assert {t.value for t in ds.tags} == {"extraction"}
    assert ds.dataset.digest == lineage.feature_input(str(out)).dataset.digest
    # System metrics of the machine, while it ran.
    assert any(k.startswith("system/cpu_utilization") for k in m), m
    # The store's metadata names the run; a training run's tags name it.
    recorded = json.loads((out / fs.METADATA_FILE).read_text())["extraction_runs"]
    assert [r["run_id"] for r in recorded] == [run.info.run_id] and recorded[0]["tracking_uri"] == uri
    assert lineage.feature_tags(str(out))["features.extraction_run"] == run.info.run_id
    # --experiment none: no run, and the record of the earlier one stays.
    extract(manifest, out, uri, experiment="none", max_failed=1.0)
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert len(lineage.extraction_runs(out)) == 1


def test_a_failed_extraction_ends_its_run_failed_with_what_it_did(manifest, tmp_path, monkeypatch):
    """The job's error ends the run FAILED, with the error and the summary it carries (a
    TooManyFailures after the rows were written); KeyboardInterrupt ends it KILLED."""
    from reslstm.distributed.extract import job
    from reslstm.extraction.driver import ExtractSummary

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = ExtractSummary(store="s", written={"rgb": 3}, failed={"X": 2}, clips=9, warnings=0,
                          skipped_done=0, skipped_failed=0, seconds=2.0, failures_path="f",
                          stage_seconds={"decode": 1.0, "flow": 0.0, "features": 0.5})
    errors = iter([TooManyFailures(done, "2 of the 5 pairs failed, more than --max-failed 0.1"),
                   KeyboardInterrupt()])

    def fail(cfg, subset, mlrun):
        raise next(errors)

    monkeypatch.setattr(job, "_extract", fail)
    with pytest.raises(TooManyFailures):
        extract(manifest, tmp_path / "s", uri)
    with pytest.raises(KeyboardInterrupt):
        extract(manifest, tmp_path / "s", uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("reslstm-extraction")
    first, second = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert first.info.status == "FAILED" and "--max-failed" in first.data.tags["error"]
    assert first.data.metrics["videos_written"] == 3 and first.data.metrics["failed"] == 2
    assert first.data.metrics["decode_s_per_video"] == pytest.approx(1 / 3)
    assert second.info.status == "KILLED"


def test_trial_runs_log_the_store_they_read_and_its_extraction(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    store = tmp_path / "store"
    fs.write_metadata(store, {"rgb": fs.StreamSettings(
        extractor="tiny3d", weights_id="random-init", feature_dim=4, clip_len=16, clip_stride=8,
        crops=1, input_size=112, resize_short=128)},
        extraction_runs=[{"run_id": "abc123", "experiment_id": "1", "tracking_uri": "x",
                          "started": "t"}])
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    exp_id = experiments.ensure_experiment(client, "exp")
    parent = client.create_run(exp_id).info.run_id
    cb = tracking.MLflowTrialCallback(uri, exp_id, parent, "s", {}, epochs=1,
                                      tags=lineage.feature_tags(str(store)),
                                      dataset=lineage.feature_input(str(store)))

    class Trial:
        trial_id, config = "t1", {"hidden": 8, "depth": 1, "T": 5, "fusion": "rgb"}

    cb.on_trial_start(0, [Trial], Trial)
    import time

    time.sleep(1.0)  # a few system-metric samples
    cb.on_trial_complete(0, [Trial], Trial)
    run = client.get_run(cb.run_ids["t1"])
    assert run.data.tags["features.extraction_run"] == "abc123"
    assert run.data.tags["features.store"] == str(fs.FeatureStore(store))
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "features:store" and {t.value for t in ds.tags} == {"training"}
    assert any(k.startswith("system/") for k in run.data.metrics), run.data.metrics
    assert not cb._system  # the monitor stopped with the trial
