"""reslstm.cli's console: the tag of a log line follows from the package its logger belongs to."""

import logging
from pathlib import Path

import pytest

from reslstm.cli import CONSOLE_LINE, _ConsoleFormatter, console_tag

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("logger, tag", [
    # Today's modules that log, with the tags their lines have always had.
    ("reslstm.distributed.train.trainer", "train"),
    ("reslstm.distributed.train.worker", "train"),
    ("reslstm.distributed.train.data", "train"),
    ("reslstm.distributed.tune.sweep", "tune"),
    ("reslstm.distributed.tune.paper_runs", "paper"),
    ("reslstm.distributed.extract.job", "extract"),
    ("reslstm.extraction.driver", "extract"),
    ("reslstm.features.store", "extract"),
    ("reslstm.distributed.predict.batch", "predict"),
    ("reslstm.inference.predictor", "predict"),
    ("reslstm.distributed.serve.app", "serve"),
    ("reslstm.distributed.demo", "demo"),
    ("reslstm.datasets.synthetic", "synth"),
    ("reslstm.distributed.tracking.models", "mlflow"),  # was [registry]: the package is MLflow's
    ("reslstm.checkpoint", "checkpoint"),  # was [predict]; it logs at DEBUG, for training too
])
def test_existing_modules_keep_their_tags(logger, tag):
    assert console_tag(logger) == tag


@pytest.mark.parametrize("logger, tag", [
    # A module nobody has written yet gets its package's tag, with nothing to register.
    ("reslstm.distributed.train.brand_new_module", "train"),
    ("reslstm.distributed.tune.brand_new_module", "tune"),
    ("reslstm.distributed.extract.brand_new_module", "extract"),
    ("reslstm.extraction.brand_new_module", "extract"),
    ("reslstm.features.brand_new_module", "extract"),
    ("reslstm.inference.brand_new_module", "predict"),
    ("reslstm.distributed.tracking.brand_new_module", "mlflow"),
    ("reslstm.datasets.brand_new_reader", "datasets"),  # only the synthetic generator is [synth]
    ("reslstm.distributed.tune.paper_runs.deeper", "paper"),
    # A new package is tagged with its own name; a new top-level module likewise.
    ("reslstm.distributed.brand_new_package.module", "brand_new_package"),
    ("reslstm.brand_new_package.module", "brand_new_package"),
    ("reslstm.reports.sweep_tables", "reports"),
    ("reslstm.distributed.runtime", "runtime"),
    ("reslstm", "reslstm"),
    # Other libraries' loggers never reach this console; they have no tag.
    ("ray.train", None), ("reslstmx.train", None), ("mlflow", None),
])
def test_a_new_module_gets_its_packages_tag(logger, tag):
    assert console_tag(logger) == tag


def _module_names():
    for path in sorted((REPO / "reslstm").rglob("*.py")):
        yield ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for path in sorted((REPO / "distributed").rglob("*.py")):
        parts = path.relative_to(REPO / "distributed").with_suffix("").parts
        yield ".".join(("reslstm", "distributed", *parts)).removesuffix(".__init__")


def test_every_module_has_a_tag_that_the_driver_recognises():
    """A worker's console line reaches a driver's console plain only when it looks like one
    (runtime.filter_worker_logs): every module's tag must."""
    names = list(_module_names())
    assert "reslstm.distributed.train.worker" in names and len(names) > 50
    for name in names:
        tag = console_tag(name)
        assert tag and CONSOLE_LINE.match(f"[{tag}] epoch 1: ..."), (name, tag)


def test_the_formatter_tags_lines_and_leaves_blocks_as_they_are():
    def line(name, msg, level=logging.INFO, **extra):
        record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
        record.__dict__.update(extra)
        return _ConsoleFormatter().format(record)

    assert line("reslstm.distributed.train.brand_new_module", "epoch 1: x") == "[train] epoch 1: x"
    assert line("reslstm.extraction.driver", "disk full", logging.WARNING) == (
        "[extract] warning: disk full")
    assert line("reslstm.distributed.demo", "a\nb", block=True) == "a\nb"
