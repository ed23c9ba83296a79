"""Training that survives a lost worker: SIGKILL one of two Ray Train workers mid-run, and the
run completes from its latest checkpoint with every epoch once, DDP keeps the workers' weights
equal, and a rerun under the same --name does not train again."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import console_lines
from featurestore_fixture import make_feature_store
from reslstm.configs import TrainConfig
from reslstm.distributed.train import trainer

pytestmark = pytest.mark.integration
EPOCHS = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_feature_store(tmp_path_factory.mktemp("store"), seed=7)


def _cfg(store, out, **kw):
    return TrainConfig(features=str(store.root), out=str(out), fusion="rgb", hidden=8, depth=2,
                       T=5, epochs=EPOCHS, batch_size=8, lr=1e-2, workers=2, seed=3, **kw)


def _train_worker_pids() -> list[int]:
    import ray._private.worker as ray_worker
    from ray.util.state import list_actors

    actors = list_actors(address=f"http://{ray_worker.get_dashboard_url()}",
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


def _committed_epoch(run_dir: Path) -> int:
    """The latest epoch whose checkpoint Ray Train's controller has registered (its checkpoint
    manager's snapshot in the run directory): what a restarted worker group resumes from. A
    checkpoint directory on disk is not enough; the controller registers it on its next poll."""
    try:
        doc = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(doc["latest_checkpoint_result"]["checkpoint_dir_name"].split("_")[-1])
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being written
        return 0


def _worker_log_text() -> str:
    """Everything the Ray workers of this session wrote to their log files (read from the
    files, not from the driver's stdout, to which Ray forwards lines late and deduplicated)."""
    import ray._private.worker as ray_worker

    logs = Path(ray_worker._global_node.get_logs_dir_path())
    return "".join(f.read_text(errors="replace") for f in sorted(logs.glob("worker-*"))
                   if f.suffix in (".out", ".err"))


def test_a_killed_worker_costs_only_time(ray_local, store, tmp_path):
    cfg = _cfg(store, tmp_path / "killed", name="faulty")
    result, errors = {}, []

    def run():
        try:
            result["res"] = trainer.fit(cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    killed = []
    with console_lines():
        thread = threading.Thread(target=run)
        thread.start()
        run_dir = Path(cfg.resolved_storage()) / "faulty"
        deadline = time.monotonic() + 300
        while not killed and thread.is_alive() and time.monotonic() < deadline:
            if _committed_epoch(run_dir) >= 2:  # mid-run: two epochs checkpointed
                pids = _train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
            time.sleep(0.05)
        thread.join(timeout=600)
    assert not errors, errors
    assert killed, "the run ended before a worker could be killed"
    res = result["res"]
    assert [h["epoch"] for h in res.history] == list(range(1, EPOCHS + 1))  # each epoch once
    # The restarted group continued from a registered checkpoint (epoch k >= 2), not from
    # scratch: the epochs after k carry one restart, those up to k none.
    restarts = [h["restarts"] for h in res.history]
    k = restarts.index(1)
    assert k >= 2 and restarts == [0] * k + [1] * (EPOCHS - k), restarts
    assert f"[train] resumed from epoch {k} (of {EPOCHS})" in _worker_log_text()
    assert all(h["weights_spread"] == 0.0 for h in res.history)  # DDP: workers stay equal
    # The signal is learnable (chance is 1/4): the interrupted run learns it as an unbroken
    # run of these settings does (>= 0.75; test_train's runs are unbroken).
    assert res.best_metrics["val_top1"] >= 0.75, res.history

    # The same command again: the run is finished, nothing is trained again.
    epochs_before = sorted(p.name for p in run_dir.glob("epoch_*"))
    with console_lines() as again_lines:
        again = trainer.fit(cfg)
    assert [h["epoch"] for h in again.history] == list(range(1, EPOCHS + 1))
    assert again.best_checkpoint == res.best_checkpoint
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == epochs_before
    assert any(ln.startswith("[train] continuing faulty") for ln in again_lines), again_lines
    assert not any("] epoch " in ln for ln in again_lines)
