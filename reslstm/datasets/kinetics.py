"""Kinetics-400/600/700 manifests from the official annotation CSVs.

The CSVs (``kinetics_400_train.csv``, ``..._validate.csv``, ``..._test.csv``; Kinetics-700-2020
also names them ``train.csv``, ``validate.csv``, ``test.csv``) have the header
``label,youtube_id,time_start,time_end,split``; a test CSV may have no ``label`` column. A
clip's file is ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` (``.mp4``, ``.mkv``,
``.webm``, ...), in per-class folders (the class name, or with ``_`` for spaces), per-split
folders or one flat folder: the reader finds it wherever it lies under the video root.

- video_id is the clip name (``---QUuC4vJs_000003_000013``), the id other Kinetics tools use.
- Labels are the class names of the training CSV (of all CSVs when none is a training one),
  sorted: the usual Kinetics label order.
- Splits (``splits.published_split``): ``validate`` is what papers report on, so it becomes
  "test"; ``val_fraction`` of each class's training videos is held out as "val" (seeded);
  labelled test rows are "unused", unlabelled ones are left out with a note.
- Videos not downloaded (some always are: YouTube videos disappear) are left out and listed
  (``manifest.missing_videos``), not an error.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from .manifest import ManifestError, Row, find_video, index_videos
from .splits import annotation_files, finish_published, published_split, split_in_name

_NEEDED = ("youtube_id", "time_start", "time_end")


@dataclass
class _Clip:
    youtube_id: str
    start: int
    end: int
    label: str | None
    split: str  # the manifest split ("train", "test", "unused")
    file: Path
    where: str

    @property
    def name(self) -> str:
        return f"{self.youtube_id}_{self.start:06d}_{self.end:06d}"


def _seconds(text: str, column: str, where: str) -> int:
    """A whole number of seconds ("3", also "3.0")."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or value < 0:
        raise ManifestError(f"{where}: {column} {text!r} is not a whole number of seconds")
    return int(value)


def _read_csv(path: Path) -> Iterator[_Clip]:
    """The clips of one annotation CSV, each row checked (the file and line in every error)."""
    from_name = split_in_name(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            absent = [c for c in _NEEDED if c not in header]
            if absent:
                raise ManifestError(
                    f"{path}: missing columns {absent} (header {header}); a Kinetics CSV has "
                    "label,youtube_id,time_start,time_end,split")
            col = {name: i for i, name in enumerate(header)}
            for fields in reader:
                where = f"{path}:{reader.line_num}"
                if not any(f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    raise ManifestError(f"{where}: {len(fields)} fields, the header has "
                                        f"{len(header)} ({','.join(header)}): {','.join(fields)!r}")
                get = {name: fields[i].strip() for name, i in col.items()}
                if not get["youtube_id"]:
                    raise ManifestError(f"{where}: empty youtube_id")
                start = _seconds(get["time_start"], "time_start", where)
                end = _seconds(get["time_end"], "time_end", where)
                if end <= start:
                    raise ManifestError(f"{where}: time_end {end} is not after time_start {start}")
                word = get.get("split") or from_name
                if not word:
                    raise ManifestError(f"{where}: no split column, and the file name does not end "
                                        "with train, validate or test")
                split = published_split(word, where)
                label = get.get("label") or None
                if label is None and split != "unused":
                    raise ManifestError(f"{where}: a {word} row needs a label")
                yield _Clip(get["youtube_id"], start, end, label, split, path, where)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc}); is this a Kinetics CSV?") from exc
    except csv.Error as exc:
        raise ManifestError(f"{path}: not a readable CSV ({exc})") from exc


def read_kinetics(
    annotations: Path | str | Sequence[Path | str],
    video_root: Path | str,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> pa.Table:
    """Manifest of Kinetics-400/600/700 from its annotation CSVs (see the module docstring).

    ``annotations``: CSV files, or folders whose ``*train.csv``, ``*validate.csv`` and
    ``*test.csv`` are read; the split of a row is its ``split`` column, else the file's name.
    Videos are looked up anywhere under ``video_root``; the ones not found are left out and
    listed (``missing_videos(table)``), unlabelled test rows are counted in
    ``manifest_notes(table)``. ``val_fraction`` of each class's downloaded training videos
    becomes "val", seeded by ``seed``.
    """
    given = [annotations] if isinstance(annotations, (str, Path)) else list(annotations)
    files = annotation_files(given, ".csv", "Kinetics annotation CSV")
    clips = [clip for f in files for clip in _read_csv(f)]
    train = {c.label for c in clips if c.split == "train"}
    classes = sorted(train or {c.label for c in clips if c.label is not None})
    if not classes:
        raise ManifestError(f"no labelled rows in {[str(f) for f in files]}: give the train and "
                            "validate CSVs too")
    label_of = {name: i for i, name in enumerate(classes)}
    root = Path(video_root).expanduser().absolute()
    index = index_videos(root)
    rows: list[Row] = []
    unlabelled: Counter[Path] = Counter()
    for clip in clips:
        if clip.label is None:
            unlabelled[clip.file] += 1
            continue
        if clip.label not in label_of:
            raise ManifestError(f"{clip.where}: unknown label {clip.label!r}: not one of the "
                                f"{len(classes)} classes of the training CSV")
        folders = (clip.label, clip.label.replace(" ", "_"))
        path = find_video(index, clip.name, folders) or root / clip.label / f"{clip.name}.mp4"
        rows.append(Row(clip.name, path, label_of[clip.label], clip.label, clip.split, clip.where))
    notes = [f"{f}: {n} test videos without a label left out (a manifest row needs one; "
             "papers report on validate)" for f, n in unlabelled.items()]
    return finish_published(rows, val_fraction, seed, notes)
