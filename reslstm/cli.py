"""The command line of every job: config dataclasses <-> arguments, and the console.

``add_config_arguments(parser, ExtractConfig)`` adds one option per field of a config in
``reslstm.configs`` (type, choices, default and help from the field; booleans get
``--x/--no-x``; tuple fields take comma lists); ``config_from_args(ExtractConfig, args)``
builds the config back, which validates it. Jobs therefore never restate a config.

``setup_console()``: library modules log through ``logging.getLogger(__name__)``; a job calls
this once so that their INFO messages reach stdout as plain lines a person reads top to bottom,
tagged with the stage they come from (``[extract]``, ``[train]``, ``[tune]``, ...). A record
logged with ``extra={"block": True}`` (tables, summaries) is printed as it is. ``run_job``
wraps a job's main: expected errors (bad options, a store that does not match, a failed
extraction) print one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from typing import Any, Callable, Sequence

STAGES = (  # logger name prefix -> console tag (first match wins)
    ("reslstm.distributed.demo", "demo"),
    ("reslstm.distributed.tune.paper_runs", "paper"),
    ("reslstm.datasets.synthetic", "synth"),
    ("reslstm.distributed.tune.sweep", "tune"),
    ("reslstm.distributed.tracking.runs", "tune"),
    ("reslstm.distributed.tracking.models", "registry"),
    ("reslstm.distributed.extract.job", "extract"),
    ("reslstm.distributed.predict.batch", "predict"),
    ("reslstm.distributed.serve.app", "serve"),
    ("reslstm.inference.predictor", "predict"),
    ("reslstm.checkpoint", "predict"),
    ("reslstm.extraction", "extract"),
    ("reslstm.features", "extract"),
    ("reslstm.distributed", "train"),
    ("reslstm", "reslstm"),
)


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
        raise ValueError(f"cannot read {text!r} as a comma list of {kind.__name__}") from None


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


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if getattr(record, "block", False):
            return text
        tag = next((t for prefix, t in STAGES if record.name.startswith(prefix)), None)
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


def run_job(name: str, main: Callable[[], int | None], errors: tuple[type, ...] = ()) -> int:
    """Run a job's body with the console set up; ``errors`` (and ValueError) are expected
    failures: one line ``NAME: message`` on stderr and the error's ``exit_code`` (default 2),
    never a traceback."""
    setup_console()
    try:
        return int(main() or 0)
    except (ValueError, *errors) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
