"""Shared fixtures: the real test videos, when this checkout sits beside them; a private local
Ray, shared by the modules that use it (they run last, one after another); and the console
lines a job would print."""

import contextlib
import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real videos live beside the repository (../shared/videos); a plain clone has none, and
# the tests that need them skip with this reason. RESLSTM_TEST_VIDEOS overrides the place.
SHARED_VIDEOS = Path(os.environ.get("RESLSTM_TEST_VIDEOS", REPO.parent / "shared" / "videos"))

# Exact frame counts, read by decoding every frame with PyAV.
SHARED_VIDEO_FRAMES = {
    "kinetics_demo_340x256.mp4": 280,
    "short_32f_340x256.mp4": 32,
    "xvid_mp3_320x240.avi": 164,
    "activitynet_320x240_audio.mp4": 355,
}


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Jobs that log to MLflow without a URI given (extraction) use MLFLOW_TRACKING_URI: one
    SQLite store for the session, not ./mlflow.db in the checkout. A test that reads a job's
    runs passes its own URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session", autouse=True)
def console():
    """The library's log lines reach stdout as a job's console prints them (``reslstm.cli``),
    so tests read what a user reads."""
    from reslstm.cli import setup_console

    setup_console()


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """Directory of the real test videos; skips the test when it is absent."""
    if not all((SHARED_VIDEOS / name).is_file() for name in SHARED_VIDEO_FRAMES):
        pytest.skip(f"real test videos not found at {SHARED_VIDEOS} (set RESLSTM_TEST_VIDEOS)")
    return SHARED_VIDEOS


_SHARED_RAY: dict = {}  # the local Ray that ray_local started: {"gcs": its GCS address}


def _start_shared_ray():
    import ray

    from reslstm.distributed.runtime import init_ray

    init_ray(num_cpus=2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    _SHARED_RAY["gcs"] = ray.get_runtime_context().gcs_address


def _stop_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _SHARED_RAY.clear()


def _shared_ray_is_whole(timeout: float = 30.0) -> bool:
    """Whether the Ray that ray_local started is still this process's Ray, with both its CPUs
    free again (what a module left running, e.g. an actor, is waited for, not inherited)."""
    import time

    import ray

    if not ray.is_initialized() or ray.get_runtime_context().gcs_address != _SHARED_RAY.get("gcs"):
        return False
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < 2:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


_RAY_LOCAL_MODULES = pytest.StashKey[set]()  # the test modules that use ray_local


def pytest_collection_modifyitems(session, config, items):
    """The modules that use ``ray_local`` run last, one after another, so that one local Ray
    serves them all (each start of Ray costs ~10 s of both cores); the other modules keep
    their order before them. The order within a module is unchanged."""
    shared = {item.module for item in items
              if "ray_local" in getattr(item, "fixturenames", ()) and hasattr(item, "module")}
    config.stash[_RAY_LOCAL_MODULES] = shared
    items.sort(key=lambda item: getattr(item, "module", None) in shared)  # stable


@pytest.fixture(scope="session", autouse=True)
def _ray_session():
    yield
    _stop_ray()


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_running(request):
    """A module runs either on the shared local Ray (it uses ``ray_local``) or with no Ray of
    this process running: it may start its own (a cluster, a job in a subprocess)."""
    if request.module not in request.config.stash.get(_RAY_LOCAL_MODULES, set()):
        _stop_ray()
    yield


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray with 2 CPUs (never a running cluster), started as the jobs start
    theirs (``runtime.init_ray``: dashboard on 127.0.0.1, quiet logs). Consecutive modules
    that use it share one instance (starting Ray costs seconds of both cores); a module finds
    it with both CPUs free, or gets a new one."""
    if not _shared_ray_is_whole():
        _stop_ray()
        _start_shared_ray()
    yield


@contextlib.contextmanager
def console_lines(level=logging.INFO):
    """The lines a job's console (``reslstm.cli.setup_console``) would print while the block
    runs, collected in a list (messages of this package's loggers, formatted with their tag)."""
    from reslstm.cli import _ConsoleFormatter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.extend(_ConsoleFormatter().format(record).splitlines())

    logger = logging.getLogger("reslstm")
    handler, old_level = Collect(level), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
