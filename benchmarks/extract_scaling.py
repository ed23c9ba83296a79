"""Videos/s of the Ray extraction against the same work in one plain Python loop.

The synthetic set (``generate_synthetic``) is extracted, RGB and TV-L1 flow (the slow CPU stage,
as in the paper's setting), with the tiny3d extractor and one crop, each time into a new store:

1. baseline: ``run_local``, every stage in one loop in this process, torch and OpenCV pinned
   to one thread: the work of one core;
2. Ray on a local instance with ``--cpus`` CPUs (default 2) and the default resources (on a
   CPU-only cluster only the flow tasks reserve a CPU, one thread each), interleaved with the
   baseline (A B B A, ``--repeats``) so that changes in the machine's load hit both alike;
3. with ``--actor-cpus-run``, the same with the feature actor reserving one CPU
   (``actor_cpus=1``), to show what a CPU held by a mostly idle actor costs;
4. and 5. a simulated cluster (``ray.cluster_utils.Cluster``): a head with no CPUs (it runs
   the driver, as a real head started with ``--num-cpus 0``) and one worker node, then the
   head and ``--nodes - 1`` worker nodes, each with ``--node-cpus`` CPUs.

Printed: videos/s ((video, stream) pairs written / wall time of the extraction call, so Ray's
start-up of workers and actors counts), the ratios Ray / baseline and N nodes / one node, and
for each baseline and Ray run the cores this run kept busy and those other processes on the
machine took meanwhile (on a shared machine the 2-CPU run competes with them for both cores).
On a 2-core machine the cluster ratio cannot exceed 2 (the nodes share the cores).

What Ray costs on top of the work: about 14 CPU-seconds per run whatever the data (worker
processes importing Ray Data, PyAV and OpenCV, the actor importing torch and building its
models, Ray Data's own actors) and about 0.15 CPU-seconds per (video, stream) (tasks, object
transfers, the driver's executor), on the same two cores as the work. On the 11 videos of one
per class (40 s of work) that is 40 % of the work; the default, 3 videos per class (33 videos,
about 100 s of work in the baseline), keeps it near 20 %. The line "overhead" prints it: the
CPU-seconds the Ray runs used beyond the baseline's.

    python benchmarks/extract_scaling.py                        # 3 videos per class (33)
    python benchmarks/extract_scaling.py --videos-per-class 1   # quick, start-up dominated
    python benchmarks/extract_scaling.py --videos-per-class 4 --cpus 8 --nodes 3 --node-cpus 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import psutil  # noqa: E402  (Ray bundles psutil and puts it on the path)
import ray
import torch

from reslstm.configs import ExtractConfig
from reslstm.datasets.synthetic import generate_synthetic
from reslstm.distributed.extract.job import run_extraction
from reslstm.distributed.runtime import local_system_config
from reslstm.extraction.driver import run_local


def config(manifest: Path, out: Path, flow: str, **kw) -> ExtractConfig:
    return ExtractConfig(manifest=str(manifest), out=str(out), extractor="tiny3d", flow=flow,
                         crops=1, progress_every_s=1e9, **kw)


class CpuUse:
    """CPU seconds used by this process and everything it started (Ray's processes and workers,
    polled every 0.5 s), and by the whole machine (/proc/stat), over a ``with`` block: on a
    shared machine, what the others took is what this run could not have."""

    def __init__(self):
        self._stop = threading.Event()
        self._last: dict[int, float] = {}
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _tree(self):
        me = psutil.Process()
        for p in [me] + me.children(recursive=True):
            try:
                t = p.cpu_times()
                yield p.pid, t.user + t.system
            except psutil.Error:
                pass

    def _poll(self):
        while not self._stop.is_set():
            self._last.update(self._tree())
            self._stop.wait(0.5)

    @staticmethod
    def _machine() -> float:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # busy, not idle/iowait

    def __enter__(self):
        self._start = dict(self._tree())
        self._machine0 = self._machine()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._last.update(self._tree())
        self.ours = sum(v - self._start.get(pid, 0.0) for pid, v in self._last.items())
        self.machine = self._machine() - self._machine0


def timed(fn, cfg: ExtractConfig) -> tuple[float, int, CpuUse]:
    """(seconds, pairs written, CPU use) of one extraction call, its report kept off the screen."""
    with contextlib.redirect_stdout(io.StringIO()), CpuUse() as cpu:
        start = time.perf_counter()
        summary = fn(cfg)
        secs = time.perf_counter() - start
    if summary.failed:
        raise RuntimeError(f"extraction failed for some videos: {summary.failed}")
    return secs, sum(summary.written.values()), cpu


def cpu_note(secs: float, cpu: CpuUse) -> str:
    others = max(cpu.machine - cpu.ours, 0.0)
    return (f"[cores busy: this run {cpu.ours / secs:.2f}, other processes {others / secs:.2f}]")


def no_ray_data_progress() -> None:
    """No Ray Data progress even on a terminal: only the results lines."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def on_cluster(manifest: Path, out: Path, flow: str, workers: int, node_cpus: int,
               store_mb: int) -> tuple[float, int]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": store_mb * 2 ** 20, "include_dashboard": False,
        "_system_config": local_system_config(node_cpus)})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=node_cpus, object_store_memory=store_mb * 2 ** 20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")
        no_ray_data_progress()
        secs, n, _ = timed(run_extraction, config(manifest, out, flow))
        return secs, n
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos-per-class", type=int, default=3, help="synthetic videos per class (3: 33 videos)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of baseline and Ray (2)")
    parser.add_argument("--flow", default="tvl1", help="flow method (tvl1, the CPU-heavy one)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (2)")
    parser.add_argument("--nodes", type=int, default=3, help="nodes of the simulated cluster, head included (3)")
    parser.add_argument("--node-cpus", type=int, default=1, help="CPUs of each worker node (1)")
    parser.add_argument("--node-store-mb", type=int, default=512, help="object store of each simulated node")
    parser.add_argument("--actor-cpus-run", action="store_true",
                        help="also run Ray with the feature actor reserving one CPU")
    parser.add_argument("--workdir", help="where the videos and stores go (default: a temp dir)")
    args = parser.parse_args(argv)

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="reslstm-scaling-")
    work = Path(args.workdir or tmp.name)
    try:
        manifest = generate_synthetic(work / "synth", videos_per_class=args.videos_per_class, seed=0)
        print(f"synthetic set: {manifest}; RGB + {args.flow} flow, tiny3d, 1 crop; "
              f"{os.cpu_count()} cores on this machine", flush=True)

        # One core's worth of work: pin the libraries' thread pools, as the Ray tasks are.
        torch.set_num_threads(1)
        cv2.setNumThreads(1)

        def local(i):
            return timed(run_local, config(manifest, work / f"local_{i}", args.flow))

        def on_ray(i, **kw):
            ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                     logging_level="ERROR", _system_config=local_system_config(args.cpus))
            no_ray_data_progress()
            try:
                return timed(run_extraction, config(manifest, work / f"ray_{i}", args.flow, **kw))
            finally:
                ray.shutdown()

        # Interleaved A B B A ... so that a change in the machine's load hits both alike.
        base_runs, ray_runs, base_cpu, ray_cpu = [], [], [], []
        for i in range(args.repeats):
            order = (local, on_ray) if i % 2 == 0 else (on_ray, local)
            for fn in order:
                secs, n, cpu = fn(i)
                (base_runs if fn is local else ray_runs).append(n / secs)
                (base_cpu if fn is local else ray_cpu).append(cpu.ours)
                print(f"  {'baseline' if fn is local else 'Ray':8s} run {i}: {n} pairs in "
                      f"{secs:6.1f}s = {n / secs:.3f} videos/s {cpu_note(secs, cpu)}", flush=True)
        base, fast = statistics.median(base_runs), statistics.median(ray_runs)
        print(f"baseline, one loop in one process (1 thread): {base:.3f} videos/s (median)")
        print(f"Ray, {args.cpus} CPUs, default resources:      {fast:.3f} videos/s (median), "
              f"{fast / base:.2f}x the baseline (target >= 1.6x)", flush=True)
        work_s, ray_s = statistics.median(base_cpu), statistics.median(ray_cpu)
        print(f"overhead: the Ray runs used {ray_s:.1f} CPU-seconds for {work_s:.1f} of the "
              f"baseline's work, {ray_s - work_s:.1f} more (median)", flush=True)
        if args.actor_cpus_run:
            secs, n, _ = on_ray(args.repeats, actor_cpus=1)
            print(f"Ray, {args.cpus} CPUs, actor_cpus=1:           {n / secs:.3f} videos/s, "
                  f"{n / secs / base:.2f}x the baseline", flush=True)

        one_s, n1 = on_cluster(manifest, work / "cluster_1", args.flow, 1, args.node_cpus,
                               args.node_store_mb)
        print(f"cluster: head (0 CPUs) + 1 worker node of {args.node_cpus} CPU(s): {n1} pairs in "
              f"{one_s:6.1f}s = {n1 / one_s:.3f} videos/s", flush=True)
        many_s, nn = on_cluster(manifest, work / "cluster_n", args.flow, args.nodes - 1,
                                args.node_cpus, args.node_store_mb)
        print(f"cluster: head (0 CPUs) + {args.nodes - 1} worker nodes of {args.node_cpus} CPU(s): "
              f"{nn} pairs in {many_s:6.1f}s = {nn / many_s:.3f} videos/s, "
              f"{(nn / many_s) / (n1 / one_s):.2f}x one worker node", flush=True)
    finally:
        if tmp:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
