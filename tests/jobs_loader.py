"""A job of ``jobs/`` loaded as a fresh module, for tests that call its ``main(argv)``."""

import importlib.util
from pathlib import Path

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def job(name: str):
    """``jobs/NAME.py``, executed anew (its module state never leaks between tests)."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
