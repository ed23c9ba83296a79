"""distributed.runtime: worker sizing, and the local Ray instance that init_ray starts keeps
idle workers instead of restarting them."""

import subprocess
import sys
import textwrap

import pytest

from reslstm.distributed.runtime import cpus_per_worker, wants_gpu

SCRIPT = textwrap.dedent("""
    import os, time
    import ray
    from reslstm.distributed.runtime import init_ray

    init_ray(num_cpus=1)

    @ray.remote(num_cpus=0)
    def pid():
        time.sleep(1.0)  # the three calls overlap: three workers
        return os.getpid()

    first = set(ray.get([pid.remote() for _ in range(3)]))
    time.sleep(3)  # Ray kills idle workers above its soft limit after 1 s
    second = set(ray.get([pid.remote() for _ in range(3)]))
    print("KEPT", len(first), len(first & second))
""")


def test_idle_workers_above_the_cpu_count_are_kept():
    # With Ray's default (as many idle workers as CPUs, here 1) two of the three workers are
    # killed and the second round starts new ones; the extraction's CPU-less decode tasks next
    # to its flow tasks hit exactly that.
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("KEPT")][-1]
    assert line.split()[1:] == ["3", "3"], run.stdout


def test_cpus_per_worker_shares_what_is_left_and_caps_at_one():
    assert cpus_per_worker(2, 2) == 1.0
    assert cpus_per_worker(2, 2, reserved=1) == 0.5
    assert cpus_per_worker(16, 4) == 1.0
    assert cpus_per_worker(2, 3) == 0.66
    with pytest.raises(ValueError, match="leave nothing"):
        cpus_per_worker(1, 2, reserved=1)


def test_use_gpu_auto_follows_the_cluster():
    assert wants_gpu("auto", 0) is False
    assert wants_gpu("auto", 2) is True
    assert wants_gpu("no", 2) is False
    with pytest.raises(ValueError, match="no GPU"):
        wants_gpu("yes", 0)


def test_worker_log_filter_drops_expected_notes_and_keeps_the_rest(monkeypatch):
    import ray._private.worker as ray_worker

    from reslstm.distributed.runtime import filter_worker_logs

    printed = []
    monkeypatch.setattr(ray_worker, "print_worker_logs", lambda data, *a, **k: printed.append(data))
    filter_worker_logs()
    ray_worker.print_worker_logs({"pid": 1, "lines": [
        "[mutex.cc : 452] RAW: Lock blocking 0x556e103a74e0   @ 0x7f67cb42b1a2",
        "WARNING: 9 PYTHON worker processes have been started on node abc",
        "RuntimeError: a real error"]})
    ray_worker.print_worker_logs({"pid": 2, "lines": [  # a crashed worker's traceback: expected
        "Traceback (most recent call last):",
        "Graceful shutdown of backend failed. This is expected if one of the workers has crashed"]})
    ray_worker.print_worker_logs({"pid": 3, "lines": ["Progress bars disabled. To enable, set X"]})
    ray_worker.print_worker_logs({"pid": 5, "lines": [  # a finished trial's actor ended by Ray
        "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7fa29e726520>",
        "Traceback (most recent call last):",
        '  File "/x/site-packages/ray/_private/worker.py", line 1063, in sigterm_handler',
        "    raise_sys_exit_with_custom_error_message(", "SystemExit: 1"]})
    for end in ("IOError: Socket closed", "RpcError: RPC error: recvmsg:Connection reset by peer "
                "rpc_code: 14"):  # the GCS killing an actor that had already exited
        ray_worker.print_worker_logs({"pid": 4, "lines": [
            "[2026-12-07 02:34:43,124 E 1 1] (gcs_server) gcs_actor_scheduler.cc:538: Failed to "
            f"kill actor 1d14, return status: Invalid: KillActor RPC failed for actor 1d14: {end}"]})
    assert printed == [{"pid": 1, "lines": ["RuntimeError: a real error"]}]
    filter_worker_logs()  # a second call does not wrap the filter again
    assert getattr(ray_worker.print_worker_logs, "filtered", False)


def test_worker_console_lines_reach_the_driver_as_its_own(monkeypatch):
    """A training worker's ``[train] epoch ...`` lines print as the driver's console prints its
    own: without Ray's ``(RayTrainWorker pid=...)`` prefix (``ignore_prefix``), in order with
    the worker's other lines (which keep theirs), and never held back by Ray's deduplication."""
    import ray._private.worker as ray_worker

    from reslstm.distributed.runtime import filter_worker_logs

    printed = []
    monkeypatch.setattr(ray_worker, "print_worker_logs",
                        lambda data, file, plain=False: printed.append((data["lines"], plain)))
    filter_worker_logs()
    ray_worker.print_worker_logs({"pid": 7, "actor_name": "RayTrainWorker", "lines": [
        "[train] epoch 1: train_loss 1.0", "[train] epoch 2: train_loss 0.5", "a worker's print",
        "[train] warning: slow", "[Gloo] Rank 0 is connected to 1 peer ranks"]}, None, False)
    assert printed == [(["[train] epoch 1: train_loss 1.0", "[train] epoch 2: train_loss 0.5"],
                        True),
                       (["a worker's print"], False), (["[train] warning: slow"], True),
                       (["[Gloo] Rank 0 is connected to 1 peer ranks"], False)]
    # Two workers' similar lines (the epoch lines of two runs): both printed when they come.
    dedup = ray_worker.stdout_deduplicator
    for pid in (8, 9):
        out = dedup.deduplicate({"pid": pid, "ip": "x", "lines": ["[train] epoch 1: loss 0.5"]})
        assert [b["lines"] for b in out] == [["[train] epoch 1: loss 0.5"]]
    filter_worker_logs()
    assert dedup.allow_re.pattern.count("[a-z]") == 1  # extended once
