"""A sweep survives its driver: SIGKILL the process group of `jobs/tune.py --name S` once a
trial has finished, run the same command again, and the sweep completes with each trial once,
in Tune and in MLflow, every run finished under one parent."""

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from featurestore_fixture import make_feature_store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2


def _finished_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute(
                "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'reslstm.kind' and t.value = 'trial' and r.status = 'FINISHED'"
            ).fetchone()[0]
    except sqlite3.Error:  # the driver is creating the tables
        return 0


def _processes_naming(text: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to stop the killed sweep's Ray")
def test_a_killed_sweep_driver_resumes_with_each_trial_once(tmp_path):
    store = make_feature_store(tmp_path / "store", seed=4)
    db = tmp_path / "mlflow.db"
    # Ray's own files under a short, known folder: the killed driver's Ray processes are found
    # (and stopped, by PID) through it.
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp,
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "jobs" / "tune.py"), "--features", str(store.root),
           "--out", str(tmp_path / "sweep"), "--name", "resumable", "--hidden", "8,12",
           "--depth", "1", "--T", "5", "--fusion", "rgb", "--epochs", str(EPOCHS),
           "--grace-period", str(EPOCHS), "--workers", "1", "--batch-size", "8", "--lr", "0.01",
           "--input-proj", "linear", "--max-concurrent", "1", "--mlflow-uri", f"sqlite:///{db}",
           "--experiment", "resume-test"]
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True, text=True)
        deadline = time.monotonic() + 400
        while _finished_trials(db) < 1 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert _finished_trials(db) >= 1, "no trial finished in time"
        os.killpg(first.pid, signal.SIGKILL)  # the driver and everything in its group
        first.wait(timeout=30)
        for pid in _processes_naming(ray_tmp):  # its Ray instance, if it outlived the group
            os.kill(pid, signal.SIGKILL)

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    finally:
        for pid in _processes_naming(ray_tmp):
            os.kill(pid, signal.SIGKILL)
    assert "resuming sweep resumable" in again.stdout

    # Tune: both trials, each once, all finished.
    table = [ln for ln in again.stdout.splitlines() if ln[:1].isalnum() and " rgb " in ln]
    assert len(table) == 2 and len({ln.split()[0] for ln in table}) == 2, again.stdout

    # MLflow: one parent, one run per trial under it, each with every epoch once, all finished.
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("resume-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("reslstm.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("reslstm.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 2 and len({r.data.tags["ray.trial_id"] for r in trials}) == 2
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_top1")]
        assert steps == list(range(1, EPOCHS + 1)), (r.data.tags["ray.trial_id"], steps)
