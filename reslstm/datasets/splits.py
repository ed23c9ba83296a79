"""Split policy of manifests: which videos go to train, val and test.

All rules are seeded and independent of the order files are listed in:

- ``hold_out_val``: ``val_fraction`` of each class's train videos go to "val". UCF-101 holds out
  whole groups ``gNN`` (clips of one group share actor and scene, so a group never straddles
  train and val); the others hold out videos. Each class picks ``round(n * val_fraction)`` of
  its n train groups/videos, at least one when ``val_fraction > 0`` and at most n - 1.
- ``stratified_split`` (folder-per-class and CSV without a split column): per class, videos
  sorted by id are permuted with a generator seeded by (seed, class name); the first
  ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` to val, the
  rest to train. A class keeps at least one training video; test and val each get at least
  one video when their fraction is positive and the class is large enough.

Kinetics and Something-Something v2 publish train / validation / test sets, and papers report
on validation, whose labels are public (those of test are not, or came later): their readers
map the published set of each row through ``published_split`` (train -> "train", val /
validate / validation -> "test", test -> "unused") and end with ``finish_published``, which
leaves out and lists the videos not downloaded and holds ``val_fraction`` of each class's
train videos out as "val" (``hold_out_val``, by video).

``official_split_reader`` makes the readers of official splits (UCF-101, HMDB-51) from the
function that lists a data set's rows: what they share (the split number, the list files'
folder, the video root, validation held out) is written once, there.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from .manifest import ManifestError, Row, check_split_number, finish, listing, locate

# The published sets of Kinetics and SSv2 -> manifest splits (see the module docstring).
PUBLISHED_SPLITS = {"train": "train", "val": "test", "validate": "test", "validation": "test",
                    "test": "unused"}
_SPLIT_IN_NAME = re.compile(r"(?:^|[^a-z])(train|val|validate|validation|test)$")


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by the seed and names, so one class's draw never shifts another's."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ManifestError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), zlib.crc32("/".join(names).encode())])


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, unlike Python's round-half-even


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ManifestError(f"{name} must be in [0, 1), got {value!r}")


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for a class of n videos; keeps at least one for training."""
    n_test = max(1, _round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, _round(n * val_fraction)) if val_fraction > 0 else 0
    while n_val + n_test > max(n - 1, 0):
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def stratified_split(
    video_ids: Sequence[str],
    label_names: Sequence[str],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> list[str]:
    """Split name per video, stratified per class by the seeded rule in the module docstring."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ManifestError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    by_class: dict[str, list[str]] = {}
    for vid, name in zip(video_ids, label_names, strict=True):
        by_class.setdefault(name, []).append(vid)
    split_of: dict[str, str] = {}
    for name, ids in by_class.items():
        ids = sorted(ids)
        order = _rng(seed, "split", name).permutation(len(ids))
        n_val, n_test = _split_counts(len(ids), val_fraction, test_fraction)
        for rank, i in enumerate(order):
            split_of[ids[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return [split_of[vid] for vid in video_ids]


def hold_out_val(rows: list[Row], val_fraction: float, seed: int, by_group: bool) -> None:
    """Move val_fraction of each class's train rows (or train groups) to "val", in place."""
    _check_fraction("val_fraction", val_fraction)
    if val_fraction == 0:
        return
    by_class: dict[str, list[Row]] = {}
    for row in rows:
        if row.split == "train":
            by_class.setdefault(row.label_name, []).append(row)
    if by_group:
        ungrouped = [f"{r.path.name} ({r.where})" for rs in by_class.values() for r in rs if r.group is None]
        if ungrouped:
            raise ManifestError(
                f"{len(ungrouped)} training videos have no group '_gNN_cNN' in their name, so the "
                f"validation split cannot hold out whole groups:\n{listing(ungrouped)}\n"
                "Rename them to the UCF-101 pattern or pass val_fraction=0."
            )
    for name in sorted(by_class):
        members = by_class[name]
        keys = sorted({r.group if by_group else r.video_id for r in members})
        n_val = 0 if len(keys) < 2 else min(len(keys) - 1, max(1, _round(len(keys) * val_fraction)))
        chosen = {keys[i] for i in _rng(seed, "val", name).permutation(len(keys))[:n_val]}
        for row in members:
            if (row.group if by_group else row.video_id) in chosen:
                row.split = "val"


def assign_splits(rows: list[Row], given: bool, val_fraction: float | None, test_fraction: float,
                   seed: int) -> None:
    """Folder/CSV rows: stratified splits when the source gives none, else val held out of train.

    val_fraction None means 0.1, or 0 when the source already has "val" rows.
    """
    if not given:
        vf = 0.1 if val_fraction is None else val_fraction
        ids, names = [r.video_id for r in rows], [r.label_name for r in rows]
        for row, split in zip(rows, stratified_split(ids, names, vf, test_fraction, seed)):
            row.split = split
        return
    if val_fraction is None:
        val_fraction = 0.0 if any(r.split == "val" for r in rows) else 0.1
    hold_out_val(rows, val_fraction, seed, by_group=False)


def official_split_reader(probe: str, subdirs: Sequence[str], by_group: bool):
    """Decorator: the reader of a data set's official splits (UCF-101, HMDB-51), made from the
    function that lists the data set's rows, ``rows(splits_dir, video_root, split, check_files)
    -> list[Row]``, whose name and docstring it keeps.

    The reader is ``read(splits_dir, video_root, split=1, val_fraction=0.1, seed=0,
    check_files=True) -> pa.Table``: it checks the split number (1..3), takes ``splits_dir`` or
    the one of its ``subdirs`` that holds ``probe`` (a glob), makes ``video_root`` absolute,
    lists the rows and ends as every reader does (``manifest.finish``): the files checked when
    ``check_files``, and ``val_fraction`` of each class's train videos (``by_group``: whole
    groups) held out as "val" with ``seed`` (``hold_out_val``).
    """
    def make(rows: Callable[[Path, Path, int, bool], list[Row]]) -> Callable[..., pa.Table]:
        def read(splits_dir: Path | str, video_root: Path | str, split: int = 1,
                 val_fraction: float = 0.1, seed: int = 0, check_files: bool = True) -> pa.Table:
            check_split_number(split)
            root = Path(video_root).expanduser().absolute()
            listed = rows(locate(splits_dir, probe, subdirs), root, split, check_files)
            return finish(listed, root if check_files else None,
                          lambda rs: hold_out_val(rs, val_fraction, seed, by_group=by_group))

        read.__name__, read.__qualname__ = rows.__name__, rows.__qualname__
        read.__module__, read.__doc__ = rows.__module__, rows.__doc__
        return read

    return make


def published_split(word: str, where: str) -> str:
    """The manifest split of a published set's name (``PUBLISHED_SPLITS``)."""
    split = PUBLISHED_SPLITS.get(word.strip().lower())
    if split is None:
        raise ManifestError(f"{where}: split {word!r} is not one of {sorted(PUBLISHED_SPLITS)}")
    return split


def split_in_name(path: Path) -> str | None:
    """The published set a file's name ends with (``kinetics_400_validate.csv`` -> "validate",
    ``something-something-v2-train.json`` -> "train"), or None."""
    match = _SPLIT_IN_NAME.search(path.stem.lower())
    return match.group(1) if match else None


def annotation_files(paths: Sequence[Path | str], suffix: str, what: str) -> list[Path]:
    """The annotation files of a published data set: each of ``paths`` is a file, or a folder
    whose ``*train``, ``*val``, ``*validate``, ``*validation`` and ``*test`` files with
    ``suffix`` are taken."""
    files: list[Path] = []
    for given in paths:
        p = Path(given).expanduser().absolute()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == suffix
                           and split_in_name(f))
            if not found:
                raise ManifestError(f"{p}: no {what} files named '*train{suffix}', "
                                    f"'*validate{suffix}', '*validation{suffix}' or '*test{suffix}'")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ManifestError(f"{what} not found: {p}")
    if not files:
        raise ManifestError(f"no {what} given")
    return list(dict.fromkeys(files))


def finish_published(rows: list[Row], val_fraction: float, seed: int,
                     notes: Sequence[str] = ()) -> pa.Table:
    """The tail of the Kinetics and SSv2 readers: rows carry ``published_split``'s splits; the
    ones whose video is not downloaded are left out and listed (``manifest.missing_videos``),
    and ``val_fraction`` of each class's train videos go to "val", seeded."""
    return finish(rows, assign=lambda rs: hold_out_val(rs, val_fraction, seed, by_group=False),
                  skip_missing=True, notes=notes)
