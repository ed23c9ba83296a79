"""The local Ray instance that init_ray starts keeps idle workers instead of restarting them."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray")

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
