"""What every config is made of: ``opt`` (a field with its command-line help), the
checks configs run where they are made, and the choices only options have. Choices that are
facts of the method live with it and are imported from there: streams and fusions
(``reslstm.fusion``, which also names the model's input projections and architectures), crops
(``reslstm.video.clips``)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from reslstm.errors import ConfigError

USE_GPU = ("auto", "yes", "no")
SEARCHES = ("grid", "random")
WINDOW_VIDEOS = 2048        # videos per Ray Data pipeline at least (``--window-videos``)
WINDOW_VIDEOS_PER_CPU = 32  # ... or this many per CPU of the cluster
WINDOW_HELP = (f"videos per Ray Data pipeline: the job runs as one pipeline per window of this "
               f"many videos, so the statistics Ray Data keeps in the driver for every block "
               f"until its pipeline ends follow the window, not the job; default "
               f"{WINDOW_VIDEOS}, or {WINDOW_VIDEOS_PER_CPU} per CPU on larger clusters; 0: one "
               f"pipeline for the whole job")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, **meta) -> Any:
    """A dataclass field with command-line metadata: ``help``; ``flag`` (another option name);
    ``choices``; ``items`` (element type of a comma list); ``repeat=True`` (an option given once
    per value, e.g. ``--allow-prefix A --allow-prefix B``); ``cli=False`` (not an option). A
    field without a default is a required option."""
    kwargs = {"default_factory": factory} if factory is not None else {"default": default}
    return field(**kwargs, metadata={"help": help, **meta})


def flag_of(cls_or_cfg, name: str) -> str:
    """The command-line option of field ``name``: ``--batch-size``, or its ``flag`` metadata."""
    meta = {f.name: f.metadata for f in dataclasses.fields(cls_or_cfg)}.get(name, {})
    return "--" + meta.get("flag", name).replace("_", "-")


def _check(cfg, ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{flag_of(cfg, name)}: {message}")


def _positive(cfg, *names: str, allow_none: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None and allow_none:
            continue
        _check(cfg, value is not None and value > 0, name, f"must be > 0, got {value!r}")


def _one_of(cfg, name: str, choices) -> None:
    value = getattr(cfg, name)
    _check(cfg, value in choices, name,
           f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def _check_window(cfg) -> None:
    _check(cfg, cfg.window_videos is None or cfg.window_videos >= 0, "window_videos",
           f"must be >= 0 (0: one pipeline for the whole job), got {cfg.window_videos}")


def window_videos(asked: int | None, cpus: int) -> int:
    """Videos per Ray Data pipeline (``WINDOW_HELP``): ``asked`` (0: the whole job in one), else
    ``WINDOW_VIDEOS`` or ``WINDOW_VIDEOS_PER_CPU`` per CPU, whichever is more."""
    if asked is not None:
        return asked
    return max(WINDOW_VIDEOS, WINDOW_VIDEOS_PER_CPU * cpus)
