"""One error family (``reslstm.errors``): every exception class of the project derives from
``ReslstmError``; an entry point prints a project error as one line and exits with its
``exit_code``, and lets anything else (a bug) go with its full traceback and exit status 1."""

import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobs_loader import job
from reslstm import storage
from reslstm.cli import run_job
from reslstm.datasets.categories import categories_for
from reslstm.errors import ConfigError, ReslstmError
from reslstm.extractors import extractor_info
from reslstm.flow.methods import make_flow
from reslstm.fusion import make_fusion

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# The family
# ---------------------------------------------------------------------------------------------

def project_modules() -> list[str]:
    """Every module of ``reslstm`` and of ``reslstm.distributed`` (installed from distributed/,
    so it is walked on its own)."""
    import reslstm.distributed

    names = []
    for package in (reslstm, reslstm.distributed):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(set(names))


def project_exceptions() -> dict[str, type]:
    """{module.Class: class} of every exception class defined (not imported) in the project."""
    found = {}
    for name in project_modules():
        module = importlib.import_module(name)
        for cls_name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, BaseException)
                    and cls.__module__ == module.__name__):
                found[f"{name}.{cls_name}"] = cls
    return found


def test_every_project_exception_derives_from_reslstm_error():
    found = project_exceptions()
    # The walk reaches both packages (a walk that found nothing would pass vacuously).
    for known in ("reslstm.errors.ConfigError", "reslstm.features.schema.StoreError",
                  "reslstm.video.failures.VideoDecodeError",
                  "reslstm.distributed.predict.files.PredictFailures",
                  "reslstm.distributed.serve.request_body.BadRequest"):
        assert known in found, sorted(found)
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, ReslstmError))
    assert not outside, f"exception classes outside the ReslstmError family: {outside}"


def test_specific_errors_keep_their_second_base_and_exit_codes():
    from reslstm.checkpoint import ModelRefError
    from reslstm.distributed.predict.files import PredictFailures
    from reslstm.extraction.settings import ExtractError, TooManyFailures
    from reslstm.features import StoreError
    from reslstm.inference.predictor import VideoFailed

    assert issubclass(ConfigError, ValueError) and issubclass(ModelRefError, ValueError)
    assert issubclass(StoreError, RuntimeError) and issubclass(ExtractError, RuntimeError)
    assert (ConfigError.exit_code, StoreError.exit_code, ExtractError.exit_code) == (2, 2, 2)
    assert TooManyFailures.exit_code == PredictFailures.exit_code == VideoFailed.exit_code == 1


def _ray_address(address):
    import ray

    from reslstm.distributed.runtime import init_ray

    if ray.is_initialized():  # init_ray would keep the connection it has
        pytest.skip("Ray is already connected in this process")
    init_ray(address)


@pytest.mark.parametrize("call, message", [
    (lambda: storage.resolve("nosuch://bucket/x"), "cannot open this URI"),
    (lambda: make_fusion("late-prod"), "unknown fusion"),
    (lambda: extractor_info("i4d"), "unknown extractor"),
    (lambda: make_flow("tvl2"), "unknown flow method"),
    (lambda: categories_for("ssv2"), "no categories"),
    (lambda: _ray_address("not-an-address"), "cannot connect to the Ray cluster"),
])
def test_what_a_user_can_get_wrong_is_a_project_error(call, message):
    """Names and places a user types: a ConfigError (still a ValueError for old callers)."""
    with pytest.raises(ConfigError, match=message):
        call()


# ---------------------------------------------------------------------------------------------
# run_job
# ---------------------------------------------------------------------------------------------

def test_run_job_prints_a_project_error_as_one_line(capsys):
    class Stop(ReslstmError):
        exit_code = 3

    def body():
        raise Stop("the store at x is not a feature store; run jobs/extract.py first")

    assert run_job("train", body) == 3
    assert capsys.readouterr().err == ("train: the store at x is not a feature store; run "
                                       "jobs/extract.py first\n")
    assert run_job("train", lambda: (_ for _ in ()).throw(ConfigError("--epochs: bad"))) == 2
    assert capsys.readouterr().err == "train: --epochs: bad\n"


@pytest.mark.parametrize("bug", [ValueError("a library's ValueError"), KeyError("k")])
def test_run_job_lets_a_bug_through(bug, capsys):
    def body():
        raise bug

    with pytest.raises(type(bug)):
        run_job("train", body)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# A job's body, through the job
# ---------------------------------------------------------------------------------------------

def test_a_project_error_in_a_job_exits_2_with_one_line(tmp_path, capsys):
    evaluate = job("evaluate")
    assert evaluate.main(["--predictions", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluate: ") and str(tmp_path / "missing") in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    # A file that is not Parquet: pyarrow's ValueError (ArrowInvalid) named as bad input.
    garbage = tmp_path / "test.parquet"
    garbage.write_bytes(b"not parquet at all")
    assert evaluate.main(["--predictions", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evaluate: {garbage}: not a readable Parquet file"), err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_a_bug_in_a_job_propagates_from_main(monkeypatch):
    evaluate = job("evaluate")

    def broken(**options):
        raise KeyError("probs")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    with pytest.raises(KeyError, match="probs"):
        evaluate.main(["--predictions", "runs/x"])


# The job run as a script, with one library function replaced by a bug first.
INJECT = textwrap.dedent("""
    import runpy, sys
    import reslstm.reports.predictions as predictions

    def load_predictions(*args, **kwargs):
        raise {error}

    predictions.load_predictions = load_predictions
    sys.argv = ["jobs/evaluate.py", "--predictions", "runs/nowhere"]
    runpy.run_path("jobs/evaluate.py", run_name="__main__")
""")


@pytest.mark.parametrize("error, last_line", [
    ("ValueError('injected bug: a ValueError deep inside the job')",
     "ValueError: injected bug: a ValueError deep inside the job"),
    ("KeyError('probs')", "KeyError: 'probs'"),
])
def test_an_injected_bug_shows_its_traceback_and_exits_1(error, last_line):
    run = subprocess.run([sys.executable, "-c", INJECT.format(error=error)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    err = run.stderr
    assert run.returncode == 1, (run.returncode, err[-3000:])
    assert "Traceback (most recent call last):" in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == last_line, err[-3000:]
    # The whole way down: the job, run_job, the distributed function, the library.
    for frame in ("jobs/evaluate.py", "reslstm/cli.py", "distributed/evaluate.py",
                  "reslstm/reports/predictions.py", "in load_predictions"):
        assert frame in err, (frame, err[-3000:])
    assert not err.startswith("evaluate: "), err[-3000:]
