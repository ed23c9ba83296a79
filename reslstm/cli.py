"""The command line of every job: config dataclasses <-> arguments, and the console.

``add_config_arguments(parser, ExtractConfig)`` adds one option per field of a config in
``reslstm.configs`` (type, choices, default and help from the field; booleans get
``--x/--no-x``; tuple fields take comma lists); ``config_from_args(ExtractConfig, args)``
builds the config back, which validates it. Jobs therefore never restate a config.

``setup_console()``: library modules log through ``logging.getLogger(__name__)``; a job calls
this once so that their INFO messages reach stdout as plain lines a person reads top to bottom,
tagged with the package they come from (``[extract]``, ``[train]``, ``[tune]``, ...:
``console_tag``, derived from the logger's name, so no module registers a tag). A record
logged with ``extra={"block": True}`` (tables, summaries) is printed as it is. ``run_job``
wraps a job's main: a project error (``reslstm.errors.ReslstmError``: bad options, a store that
does not match, a failed extraction) prints one line on stderr and exits with its
``exit_code`` (2 unless its class says otherwise); anything else is a bug and propagates with
its full traceback (exit status 1). Argparse's own errors exit 2 before a job's body runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import types
import typing
from typing import Any, Callable, Sequence

from reslstm.errors import ConfigError, ReslstmError


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The job's docstring as written, and every option's default (unless its help already
    says what the default is, or there is none to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def parse_list(text: str, kind: Callable = str) -> tuple:
    """``"512,1024"`` -> (512, 1024) (blank items dropped; a clear error for bad items)."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return tuple(kind(t) for t in items)
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a comma list of {kind.__name__}") from None


def _base_type(hint) -> tuple[Any, bool]:
    """(type, optional) of a field annotation such as ``int | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _list_type(kind: Callable) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return parse_list(text, kind)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = f"comma list of {kind.__name__}"
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, cls, exclude: Sequence[str] = (),
                         required: Sequence[str] = ()) -> tuple[str, ...]:
    """One option per command-line field of dataclass ``cls`` (see the module docstring);
    ``exclude`` leaves fields out, ``required`` makes options with a default required. Returns
    the fields added (for ``config_from_args(..., only=)`` when two configs share a name)."""
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude or meta.get("cli", True) is False:
            continue
        flag = "--" + meta.get("flag", f.name).replace("_", "-")
        kind, _ = _base_type(hints[f.name])
        has_default = f.default is not dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta.get("help") or None}
        if not has_default or f.name in required:
            kwargs["required"] = True
            kwargs["help"] = (kwargs["help"] or "") + " (required)"
        if has_default:
            kwargs["default"] = f.default
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta.get("repeat"):
            kwargs.update(action="append", type=meta.get("items", str), default=None)
        elif "items" in meta:
            kwargs["type"] = _list_type(meta["items"])
            kwargs["metavar"] = "A,B,..."
            if has_default and f.default is not None:  # shown as typed on the command line
                kwargs["default"] = tuple(f.default)
        else:
            kwargs["type"] = kind
            if "choices" in meta:
                kwargs["choices"] = list(meta["choices"])
        parser.add_argument(flag, **kwargs)
        added.append(f.name)
    return tuple(added)


def config_from_args(cls, args: argparse.Namespace, only: Sequence[str] | None = None, **fixed):
    """An instance of dataclass ``cls`` from parsed arguments (fields the parser lacks, or not
    in ``only``, keep their defaults; ``fixed`` sets fields that are not options)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.name not in fixed and hasattr(args, f.name) and (only is None or f.name in only)}
    return cls(**values, **fixed)


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a "
                                          "local Ray)")


# ---------------------------------------------------------------------------------------------
# The console
# ---------------------------------------------------------------------------------------------

class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record arrives (tests and Ray swap it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # logging.StreamHandler sets it once; the property wins
        pass


# A record's console tag is the package its logger's module belongs to: the first name below
# ``reslstm.distributed`` or ``reslstm`` (``reslstm.distributed.train.worker`` -> ``train``,
# ``reslstm.distributed.tune.sweep`` -> ``tune``, ``reslstm.datasets.ucf101`` -> ``datasets``,
# ``reslstm.checkpoint`` -> ``checkpoint``). A new module thus gets its package's tag and a new
# package its own name, with nothing to edit. TAG_SPELLINGS spells a few library packages (or
# one module of a package: the longest match wins) as the job whose lines they print.
CONSOLE_ROOTS = ("reslstm.distributed", "reslstm")  # the most specific first
TAG_SPELLINGS = {
    "extraction": "extract", "features": "extract",  # the library side of jobs/extract.py
    "inference": "predict",                          # ... of jobs/predict.py and serve
    "tracking": "mlflow",                            # MLflow runs and the model registry
    "datasets.synthetic": "synth",                   # jobs/synth.py
    "tune.paper_runs": "paper",                      # jobs/paper.py
}
# How a tagged console line starts (``runtime.filter_worker_logs`` recognises the lines a Ray
# worker's console printed by it).
CONSOLE_LINE = re.compile(r"^\[[a-z][a-z0-9_]*\] ")


def console_tag(logger_name: str) -> str | None:
    """The console tag of a logger (see ``CONSOLE_ROOTS``); None outside this package."""
    for root in CONSOLE_ROOTS:
        if logger_name == root:
            return root.rsplit(".", 1)[-1]
        if logger_name.startswith(root + "."):
            parts = logger_name[len(root) + 1:].split(".")
            break
    else:
        return None
    for n in range(len(parts), 0, -1):
        spelled = TAG_SPELLINGS.get(".".join(parts[:n]))
        if spelled:
            return spelled
    return parts[0]


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if getattr(record, "block", False):
            return text
        tag = console_tag(record.name)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return f"[{tag}] {text}" if tag else text


def setup_console(level: int = logging.INFO) -> None:
    """Send this package's log records at ``level`` and above to stdout (see the module
    docstring). Calling it again replaces the handler, never adds a second one."""
    logger = logging.getLogger("reslstm")
    for h in list(logger.handlers):
        if isinstance(h, _StdoutHandler):
            logger.removeHandler(h)
    handler = _StdoutHandler()
    handler.setFormatter(_ConsoleFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    # One line per message: Ray Train's workers also print the root logger to the console.
    logger.propagate = False


def run_job(name: str, main: Callable[[], int | None]) -> int:
    """Run a job's body with the console set up and return its exit status. A project error
    (``ReslstmError``) is an expected failure: one line ``NAME: message`` on stderr and the
    error's ``exit_code``, no traceback. Any other exception (a ``ValueError`` from a library,
    a ``KeyError``, ...) is a bug: it is not caught here, so Python prints its full traceback
    and the process exits 1 (``KeyboardInterrupt`` likewise propagates)."""
    setup_console()
    try:
        return int(main() or 0)
    except ReslstmError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return int(exc.exit_code)
