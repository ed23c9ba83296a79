"""The cluster: connecting to Ray, sizing work to its resources, and quieting Ray's logs.

``init_ray`` is the one place that decides between a cluster and a local instance: a job
started by ``ray job submit`` finds its cluster in ``RAY_ADDRESS``; ``--address`` names one
explicitly (``auto``, ``HOST:6379`` or ``ray://HOST:10001``); with neither, a private local
instance starts (``address="local"``, so an unrelated running cluster is never joined by
accident) and stops when the process exits. ``wants_gpu`` / ``cpus_per_worker`` size training
workers; ``quiet_ray_logs`` is the one place that sets Ray's log levels (drivers and workers).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys

import numpy as np
import ray

from reslstm.cli import CONSOLE_LINE
from reslstm.errors import ConfigError


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> str:
    """Connect to (or start) Ray once; returns a one-line description of what it connected to.
    ``quiet``: Ray's own logs at WARNING and Ray Data's progress only on a terminal (the latter
    also when the caller connected already)."""
    if ray.is_initialized():
        if quiet:
            quiet_ray_logs()
        return _describe("the Ray cluster this process is connected to")
    driver_settings()
    if quiet:
        quiet_ray_logs()
    kwargs: dict = {"log_to_driver": True}
    if quiet:
        kwargs["logging_level"] = "WARNING"
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        try:
            ray.init(address=target, **kwargs)
        except (ConnectionError, ValueError) as exc:  # no cluster there, or a malformed address
            raise ConfigError(f"cannot connect to the Ray cluster at {target!r} (--address or "
                              f"RAY_ADDRESS): {exc}") from exc
        where = f"cluster at {target}"
    else:
        # The dashboard (on 127.0.0.1 only) also serves the State API, through which Ray
        # Train's placement-group cleaner frees the workers' CPUs of a trial that Tune stopped
        # early. The cleaner finds the API by looking for running Ray instances, which fails
        # ("Found multiple active Ray instances") when another one runs on the machine: its
        # address goes into the environment the new instance's processes inherit (and only
        # theirs: this process's value is restored afterwards).
        port = free_port()
        saved = os.environ.get(API_SERVER_ENV)
        os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
        try:
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                           dashboard_host="127.0.0.1", dashboard_port=port,
                           _system_config=local_system_config(num_cpus or os.cpu_count() or 1),
                           **kwargs)
        finally:
            if saved is None:
                os.environ.pop(API_SERVER_ENV, None)
            else:
                os.environ[API_SERVER_ENV] = saved
        where = "a local Ray instance" + (f" (dashboard http://{ctx.dashboard_url})"
                                          if ctx.dashboard_url else "")
    if quiet:
        quiet_ray_logs()  # Ray Data's context and the worker-log printer exist now
    return _describe(where)


def _describe(where: str) -> str:
    res = ray.cluster_resources()
    return (f"{where}: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs, "
            f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s)")


API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"

# Settings Ray reads from the driver's environment (a user's own value wins):
DRIVER_ENV = {
    # Ray Train's controller drains each worker's one-slot report queue once per health check
    # (default every 2 s), so ray.train.report blocks up to 2 s: with a small Res-LSTM that is
    # most of an epoch.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Ray Train's print patch sends a worker's print both to its log and to stdout, so a line
    # reached the driver twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Tune's console tables (a configuration box and a status table every few seconds, even at
    # verbose=0 with the new output): sweeps log their own lines, one per trial event.
    "RAY_AIR_NEW_OUTPUT": "0",
}

# Lines Ray's own processes print about expected events; a person reads them as problems
# (``filter_worker_logs`` drops exactly these).
EXPECTED_WORKER_LINES = tuple(re.compile(p) for p in (
    # Ray core, for every actor Ray Data and Ray Train create with restarts enabled (Ray Data
    # always passes its map function by reference: ray#53727). In the driver itself (its first
    # actor pool, e.g. the extraction's FeatureStage) Ray's C++ prints it once per process
    # straight to stderr, where no Python filter reaches.
    r"core_worker\.cc:\d+: Actor (\S+ )?with class name: .* has constructor arguments in the "
    r"object store and max_restarts > 0",
    # Ray Train freeing the CPUs of a trial that Tune (ASHA) stopped early: the expected end.
    r"Detected that the Ray Train controller actor \(\w+\) is dead\. Cleaning up placement group",
    # Ray Train's own dataset manager using a Ray Data option that Ray Data deprecated.
    r"RayDeprecationWarning: `ExecutionOptions\.exclude_resources` is deprecated",
    r"^\s*self\.exclude_resources = exclude_resources\s*$",
    # Ray Data in the actors that split training data: progress bars are off on purpose.
    r"Progress bars disabled\. To enable, set",
    r"Dataset \S+ execution finished in [\d.]+ seconds",
    # The raylet, when Ray Data and Ray Train start more worker processes than a 2-CPU node
    # starts at once; they are needed and reused.
    r"WARNING: \d+ PYTHON worker processes have been started on node",
    # Abseil's mutex tracing (gRPC inside a worker), now and then when a trial's worker exits.
    r"\[mutex\.cc : \d+\] RAW: (Lock blocking|Lock returning|Unlock) 0x[0-9a-f]+ ",
))


# Batches of lines (a traceback) printed for an expected event: a training worker lost on
# purpose or by preemption, which Ray Train recovers from (``--max-failures``); the raylet's
# own line says that a worker died, and the workers log "resumed from epoch k".
EXPECTED_WORKER_BLOCKS = tuple(re.compile(p) for p in (
    r"Graceful shutdown of backend failed\. This is expected if one of the workers has crashed",
    r"Connection closed by peer .* This is typically caused by a remote worker crashing",
    # The GCS killing an actor whose process has already exited: the socket is gone.
    r"\(gcs_server\) gcs_actor_scheduler\.cc:\d+: Failed to kill actor .*"
    r"(Socket closed|Connection reset by peer)",
    # Ray Data's file listing, interrupted when its (finished) dataset shuts down.
    r"dynamic_work_queue\.py\", line \d+, in _signal_completion",
    # A process Ray ends with SIGTERM (a finished Tune trial's actor) while Python runs a
    # cleanup callback: Python reports the SystemExit that Ray's handler raises as "ignored".
    r"ray/_private/worker\.py\", line \d+, in sigterm_handler",
))


def driver_settings() -> None:
    """Set ``DRIVER_ENV`` in this process (before Ray starts; values already set win)."""
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)


def filter_worker_logs() -> None:
    """What Ray prints in this driver for its other processes (workers, actors, the raylet):

    - ``EXPECTED_WORKER_LINES`` (and ``EXPECTED_WORKER_BLOCKS``) are dropped;
    - the project's console lines (``reslstm.cli.CONSOLE_LINE``, e.g. ``[train] epoch 3: ...``
      from rank 0 of a training run, or ``[serve] replica ready``) are printed as this
      driver's console prints its own: one plain line each, without Ray's ``(RayTrainWorker
      pid=...)`` prefix and its colour codes, and never merged by Ray's log deduplication
      (which holds back similar lines of two processes and prints them later). So the epoch
      lines of ``jobs/train.py`` and the demo's baseline read like the sweep's, which its
      driver logs;
    - every other line, errors included, is printed as before (prefixed)."""
    import ray._private.worker as ray_worker  # no public hook for the driver's log printer

    printer = ray_worker.print_worker_logs
    if getattr(printer, "filtered", False):
        return

    def filtered(data, print_file=None, ignore_prefix=False):
        lines = data.get("lines", [])
        if any(p.search(ln) for p in EXPECTED_WORKER_BLOCKS for ln in lines):
            return
        lines = [ln for ln in lines if not any(p.search(ln) for p in EXPECTED_WORKER_LINES)]
        # Runs of console lines and of other lines, in their order.
        for console, run in itertools.groupby(lines, key=lambda ln: bool(CONSOLE_LINE.match(ln))):
            printer({**data, "lines": list(run)}, print_file, ignore_prefix or console)

    filtered.filtered = True
    ray_worker.print_worker_logs = filtered
    for dedup in (ray_worker.stdout_deduplicator, ray_worker.stderr_deduplicator):
        allowed = dedup.allow_re.pattern if dedup.allow_re else ""  # never held back
        if CONSOLE_LINE.pattern not in allowed:
            dedup.allow_re = re.compile("|".join(p for p in (allowed, CONSOLE_LINE.pattern) if p))


def quiet_ray_logs() -> None:
    """Ray's own logs at the level a person wants in a job's console, in this process (a driver
    or a training worker).

    - Ray Data's progress only on a terminal. Without one it logs a dozen lines per dataset
      pass every few seconds (training prepares five small passes before its first epoch, and
      each worker says once that its progress bars are off); the jobs log their own progress.
    - Ray Train's two INFO lines per report ("Reporting training result ...", "Checkpoint
      successfully created ..."): the epoch line says the same in one. The first comes from a
      logger named after its file, hence the lookup.
    - MLflow's notes when it creates a database; Ray's notes on expected events
      (``_ExpectedRayWarnings``, ``filter_worker_logs``).
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stdout.isatty()
    ctx.print_on_execution_start = sys.stdout.isatty()
    levels = {"ray.train": logging.WARNING, "mlflow": logging.WARNING}
    if not sys.stdout.isatty():
        levels.update({"ray.data._internal.progress": logging.ERROR,
                       "ray.data._internal.execution.streaming_executor": logging.WARNING})
    try:
        from ray.train.v2._internal.execution import context as train_context

        levels[train_context.__file__] = logging.WARNING
    except ImportError:  # another Ray version: its logs stay
        pass
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for handler in logging.getLogger("ray").handlers:  # Ray's own console handler
        if not any(isinstance(f, _ExpectedRayWarnings) for f in handler.filters):
            handler.addFilter(_ExpectedRayWarnings())
    filter_worker_logs()


class _ExpectedRayWarnings(logging.Filter):
    """Drops Ray's notes about expected events, which a person reads as problems: that the
    local instance uses token authentication (Ray 2.60's default, on purpose here)."""

    EXPECTED = ("Token authentication is enabled for this Ray cluster",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.EXPECTED)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def idle_workers_to_keep(cpus: int) -> int:
    """How many idle worker processes a node keeps (Ray's ``num_workers_soft_limit``).

    Ray keeps only as many idle workers as the node has CPUs and kills the rest after a
    second. The extraction runs CPU-less decode tasks next to one-CPU flow tasks (two workers
    per CPU), so decode workers idle for a moment were killed and restarted, each start
    re-importing Ray Data, PyAV and OpenCV (about 1 CPU-second): on 2 CPUs, 9 worker starts
    for 33 videos instead of 5, and about 3 % of the wall time. Keeping two per CPU (and
    Ray Data's own two actors) keeps them. Workers are only started when tasks need them,
    so this adds no processes, it only stops the churn.
    """
    return 2 * cpus + 2


def local_system_config(cpus: int) -> dict:
    """Ray settings of the local instance ``init_ray`` starts; ``cluster/local/up.sh`` sets
    the same through ``RAY_num_workers_soft_limit`` (the way to set it on any ``ray start``)."""
    return {"num_workers_soft_limit": idle_workers_to_keep(cpus)}


def cluster_gpus() -> int:
    """GPUs the connected cluster has (0 on a CPU-only cluster)."""
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 0))


def wants_gpu(use_gpu: str, gpus_available: int) -> bool:
    """``--use-gpu auto|yes|no`` against the cluster's GPUs; yes without GPUs is an error."""
    if use_gpu not in ("auto", "yes", "no"):
        raise ConfigError(f"--use-gpu must be auto, yes or no, got {use_gpu!r}")
    if use_gpu == "yes" and gpus_available < 1:
        raise ConfigError("--use-gpu yes, but the cluster has no GPU; use --use-gpu auto or no")
    return use_gpu == "yes" or (use_gpu == "auto" and gpus_available > 0)


def cpus_per_worker(cpus: float, workers: int, reserved: float = 0.0) -> float:
    """CPUs per training worker: at most 1, and what is left after ``reserved`` (e.g. a Tune
    trial's own CPU) shared by the workers, rounded down to 0.01 (Ray's granularity)."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    share = np.floor(100 * (cpus - reserved) / workers) / 100
    if share < 0.01:
        raise ConfigError(f"{cpus} CPUs leave nothing for {workers} workers after {reserved} "
                         "reserved; use fewer workers or a bigger cluster")
    return float(min(1.0, share))
