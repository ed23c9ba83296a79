"""Video manifests: the one table every later stage starts from.

A manifest is a Parquet table with one row per video (``MANIFEST_SCHEMA``):

- ``video_id``   unique, ``"<class>/<file stem>"``
- ``path``       absolute path of the video file (readers always write absolute paths;
                 ``read_manifest`` resolves a relative path against the manifest's folder)
- ``label``      int32, 0-based class index
- ``label_name`` class name; one-to-one with ``label``
- ``split``      ``"train"``, ``"val"``, ``"test"`` or ``"unused"``

Readers: ``read_ucf101`` (classInd.txt, trainlist0N.txt, testlist0N.txt), ``read_hmdb51``
(``<class>_test_splitN.txt``), ``read_folder_per_class`` (``root/<class>/<video>``) and
``read_csv`` (columns ``path,label_name[,split][,video_id][,label]``).

Split rules, all seeded and independent of the order files are listed in:

- Validation held out from train (``val_fraction`` of each class): UCF-101 holds out whole
  groups ``gNN`` (clips of one group share actor and scene, so a group never straddles train
  and val); the others hold out videos. Each class picks ``round(n * val_fraction)`` of its n
  train groups/videos, at least one when ``val_fraction > 0`` and at most n - 1.
- ``stratified_split`` (folder-per-class and CSV without a split column): per class, videos
  sorted by id are permuted with a generator seeded by (seed, class name); the first
  ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` to val, the
  rest to train. A class keeps at least one training video; test and val each get at least
  one video when their fraction is positive and the class is large enough.

Bad input raises ``ManifestError`` naming the file (and line) and what to do about it.
"""

from __future__ import annotations

import csv
import math
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("label_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
SPLITS = ("train", "val", "test", "unused")
VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"}
)
MAX_LISTED = 10  # how many offending entries an error message lists
_UCF_GROUP = re.compile(r"_g(\d+)_c\d+$")
_HMDB_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d+)\.txt$")
_HMDB_SPLIT_CODES = {"1": "train", "2": "test", "0": "unused"}


class ManifestError(ValueError):
    """Bad manifest input; the message names the file (and line) and what is wrong."""


@dataclass
class _Row:
    video_id: str
    path: Path
    label: int
    label_name: str
    split: str
    where: str  # "file:line" (or the file) the row came from, for error messages
    group: str | None = None  # rows sharing a group land on the same side of the val split


# ----------------------------------------------------------------------------- helpers


def _listing(items: Sequence[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    lines = [f"  {item}" for item in items[:MAX_LISTED]]
    if total > MAX_LISTED:
        lines.append(f"  ... and {total - MAX_LISTED} more")
    return "\n".join(lines)


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as (1-based line number, stripped text)."""
    if not path.is_file():
        raise ManifestError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc}); is this really the {what}?") from exc
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


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


def _hold_out_val(rows: list[_Row], val_fraction: float, seed: int, by_group: bool) -> None:
    """Move val_fraction of each class's train rows (or train groups) to "val", in place."""
    _check_fraction("val_fraction", val_fraction)
    if val_fraction == 0:
        return
    by_class: dict[str, list[_Row]] = {}
    for row in rows:
        if row.split == "train":
            by_class.setdefault(row.label_name, []).append(row)
    if by_group:
        ungrouped = [f"{r.path.name} ({r.where})" for rs in by_class.values() for r in rs if r.group is None]
        if ungrouped:
            raise ManifestError(
                f"{len(ungrouped)} training videos have no group '_gNN_cNN' in their name, so the "
                f"validation split cannot hold out whole groups:\n{_listing(ungrouped)}\n"
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


def _assign_splits(rows: list[_Row], given: bool, val_fraction: float | None, test_fraction: float,
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
    _hold_out_val(rows, val_fraction, seed, by_group=False)


def _check_duplicates(rows: Iterable[_Row]) -> None:
    first: dict[str, _Row] = {}
    dups = []
    for row in rows:
        if row.video_id in first:
            dups.append(f"'{row.video_id}' at {row.where} (first at {first[row.video_id].where})")
        else:
            first[row.video_id] = row
    if dups:
        raise ManifestError(f"{len(dups)} duplicate video ids; each video may be listed once:\n{_listing(dups)}")


def _check_files(rows: Sequence[_Row], video_root: Path | str) -> None:
    missing = [f"{r.path} (listed at {r.where})" for r in rows if not r.path.is_file()]
    if missing:
        raise ManifestError(
            f"{len(missing)} of {len(rows)} listed video files are missing:\n{_listing(missing)}\n"
            f"Check the video root ({video_root}), or pass check_files=False to build the "
            "manifest without checking."
        )


def _to_table(rows: Sequence[_Row]) -> pa.Table:
    _check_duplicates(rows)
    table = pa.table(
        {
            "video_id": [r.video_id for r in rows],
            "path": [str(r.path) for r in rows],
            "label": pa.array([r.label for r in rows], pa.int32()),
            "label_name": [r.label_name for r in rows],
            "split": [r.split for r in rows],
        },
        schema=MANIFEST_SCHEMA,
    )
    return validate_manifest(table)


def _locate(directory: Path | str, probe: str, subdirs: Sequence[str]) -> Path:
    """The folder holding `probe`: `directory` itself or one of its known sub-folders."""
    directory = Path(directory).expanduser().absolute()
    for cand in (directory, *(directory / s for s in subdirs)):
        if any(cand.glob(probe)):
            return cand
    return directory


def _check_split_number(split: int) -> None:
    if split not in (1, 2, 3):
        raise ManifestError(f"split must be 1, 2 or 3 (the official splits), got {split!r}")


# ----------------------------------------------------------------------------- UCF-101


def _read_class_ind(path: Path) -> list[str]:
    """Class names indexed by 0-based label from classInd.txt ("1 ApplyEyeMakeup")."""
    by_id: dict[int, tuple[str, str]] = {}
    for lineno, line in _read_lines(path, "UCF-101 class index (classInd.txt)"):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ManifestError(f"{path}:{lineno}: expected '<1-based id> <ClassName>', got {line!r}")
        cid, name = int(parts[0]), parts[1]
        if cid in by_id:
            raise ManifestError(f"{path}:{lineno}: class id {cid} already used at {by_id[cid][1]}")
        by_id[cid] = (name, f"{path}:{lineno}")
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise ManifestError(f"{path}: class ids must run 1..{len(by_id)} without gaps, got {sorted(by_id)}")
    names = [by_id[i][0] for i in range(1, len(by_id) + 1)]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: a class name appears twice")
    return names


def read_ucf101(
    splits_dir: Path | str,
    video_root: Path | str,
    split: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
    check_files: bool = True,
) -> pa.Table:
    """Manifest of UCF-101 split `split` (1..3) from the official list files.

    splits_dir holds classInd.txt, trainlist0N.txt and testlist0N.txt (or is the folder above
    ``ucfTrainTestlist``); videos live at ``video_root/<Class>/<video>.avi`` (a flat
    ``video_root/<video>.avi`` is accepted too). val_fraction of each class's train groups
    goes to "val", seeded (see the module docstring).
    """
    _check_split_number(split)
    splits_dir = _locate(splits_dir, "classInd.txt", ("ucfTrainTestlist",))
    video_root = Path(video_root).expanduser().absolute()
    class_ind = splits_dir / "classInd.txt"
    classes = _read_class_ind(class_ind)
    exact = {name: i for i, name in enumerate(classes)}
    folded = {name.lower(): i for i, name in enumerate(classes)}  # folder names vary in case
    rows: list[_Row] = []
    for kind, fname in (("train", f"trainlist{split:02d}.txt"), ("test", f"testlist{split:02d}.txt")):
        list_path = splits_dir / fname
        for lineno, line in _read_lines(list_path, f"UCF-101 {kind} list for split {split}"):
            where = f"{list_path}:{lineno}"
            parts = line.split()
            rel = parts[0].replace("\\", "/")
            if len(parts) not in ((2,) if kind == "train" else (1, 2)) or rel.count("/") != 1:
                shape = "'<Class>/<video>.avi <1-based label>'" if kind == "train" else "'<Class>/<video>.avi'"
                raise ManifestError(f"{where}: malformed line, expected {shape}, got {line!r}")
            folder, filename = rel.split("/")
            label = exact.get(folder, folded.get(folder.lower()))
            if label is None:
                raise ManifestError(
                    f"{where}: unknown label: class folder '{folder}' is not in {class_ind} "
                    f"({len(classes)} classes)"
                )
            if len(parts) == 2:
                if not parts[1].isdigit():
                    raise ManifestError(f"{where}: malformed label {parts[1]!r}, expected a 1-based class id")
                if int(parts[1]) != label + 1:
                    raise ManifestError(
                        f"{where}: label {parts[1]} disagrees with class folder '{folder}' "
                        f"(id {label + 1} in {class_ind})"
                    )
            path = video_root / rel
            if check_files and not path.is_file() and (video_root / filename).is_file():
                path = video_root / filename
            stem = Path(filename).stem
            match = _UCF_GROUP.search(stem)
            group = f"{classes[label]}/g{int(match.group(1)):02d}" if match else None
            rows.append(_Row(f"{classes[label]}/{stem}", path, label, classes[label], kind, where, group))
    _check_duplicates(rows)
    if check_files:
        _check_files(rows, video_root)
    _hold_out_val(rows, val_fraction, seed, by_group=True)
    return _to_table(rows)


# ----------------------------------------------------------------------------- HMDB-51


def read_hmdb51(
    splits_dir: Path | str,
    video_root: Path | str,
    split: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
    check_files: bool = True,
) -> pa.Table:
    """Manifest of HMDB-51 split `split` (1..3) from the ``<class>_test_splitN.txt`` files.

    Each line is ``<video>.avi <0|1|2>`` (1 train, 2 test, 0 unused); videos live at
    ``video_root/<class>/<video>.avi``; labels are class names sorted. splits_dir may also be
    the folder above ``testTrainMulti_7030_splits``. Unused videos stay in the manifest with
    split "unused". val_fraction of each class's train videos goes to "val", seeded.
    """
    _check_split_number(split)
    splits_dir = _locate(splits_dir, "*_test_split*.txt", ("testTrainMulti_7030_splits",))
    video_root = Path(video_root).expanduser().absolute()
    if not splits_dir.is_dir():
        raise ManifestError(f"HMDB-51 split folder not found: {splits_dir}")
    files: dict[str, Path] = {}
    all_classes: set[str] = set()
    for entry in splits_dir.iterdir():
        match = _HMDB_SPLIT_FILE.match(entry.name)
        if match:
            all_classes.add(match["cls"])
            if int(match["n"]) == split:
                files[match["cls"]] = entry
    if not files:
        raise ManifestError(
            f"no HMDB-51 split files '<class>_test_split{split}.txt' in {splits_dir}; "
            "point splits_dir at the unpacked testTrainMulti_7030_splits folder"
        )
    missing = sorted(all_classes - files.keys())
    if missing:
        names = [str(splits_dir / f"{cls}_test_split{split}.txt") for cls in missing]
        raise ManifestError(f"{len(missing)} HMDB-51 split files are missing:\n{_listing(names)}")
    rows: list[_Row] = []
    for label, cls in enumerate(sorted(files)):
        path = files[cls]
        for lineno, line in _read_lines(path, "HMDB-51 split file"):
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in _HMDB_SPLIT_CODES:
                raise ManifestError(
                    f"{path}:{lineno}: malformed line, expected '<video>.avi <0|1|2>' "
                    f"(1 train, 2 test, 0 unused), got {line!r}"
                )
            name, code = parts
            rows.append(
                _Row(f"{cls}/{Path(name).stem}", video_root / cls / name, label, cls,
                     _HMDB_SPLIT_CODES[code], f"{path}:{lineno}")
            )
    _check_duplicates(rows)
    if check_files:
        _check_files(rows, video_root)
    _hold_out_val(rows, val_fraction, seed, by_group=False)
    return _to_table(rows)


# ----------------------------------------------------------------------------- folders and CSV


def _read_split_file(split_file: Path) -> dict[str, tuple[str, str]]:
    """'<class>/<file> <split>' lines -> {relative path: (split, where)}."""
    out: dict[str, tuple[str, str]] = {}
    for lineno, line in _read_lines(split_file, "split file"):
        where = f"{split_file}:{lineno}"
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or parts[1] not in SPLITS:
            raise ManifestError(f"{where}: malformed line, expected '<class>/<file> <{'|'.join(SPLITS)}>', got {line!r}")
        rel = parts[0].replace("\\", "/")
        if rel in out:
            raise ManifestError(f"{where}: '{rel}' already listed at {out[rel][1]}")
        out[rel] = (parts[1], where)
    return out


def read_folder_per_class(
    root: Path | str,
    split_file: Path | str | None = None,
    val_fraction: float | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    check_files: bool = True,
) -> pa.Table:
    """Manifest of ``root/<class>/<video>``: classes are the sorted folders holding videos.

    Without split_file the splits follow ``stratified_split`` (val_fraction None means 0.1).
    A split_file has lines ``<class>/<file> <train|val|test|unused>`` relative to root; videos
    it does not list are "unused", and val_fraction (None: 0.1 when it lists no "val") of each
    class's train videos is held out as "val".
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise ManifestError(f"video folder not found: {root}")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found: dict[str, list[Path]] = {}
    for cls_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        videos = sorted(f for f in cls_dir.iterdir()
                        if f.is_file() and f.suffix.lower() in exts and not f.name.startswith("."))
        if videos:
            found[cls_dir.name] = videos
    if not found:
        raise ManifestError(f"{root}: no '<class>/<video>' files with extensions {sorted(exts)}")
    label_of = {name: i for i, name in enumerate(sorted(found))}
    rows = [_Row(f"{cls}/{v.stem}", v, label_of[cls], cls, "train", str(v))
            for cls, videos in found.items() for v in videos]
    _check_duplicates(rows)
    if split_file is None:
        _assign_splits(rows, False, val_fraction, test_fraction, seed)
        return _to_table(rows)
    split_file = Path(split_file)
    listed = _read_split_file(split_file)
    on_disk = {f"{r.label_name}/{r.path.name}": r for r in rows}
    unknown = sorted({rel.split("/")[0] for rel in listed if rel.split("/")[0] not in label_of})
    if unknown:
        raise ManifestError(f"{split_file}: unknown labels, no class folders with videos under {root} for: {unknown}")
    absent = [f"{root / rel} (listed at {where})" for rel, (_, where) in listed.items() if rel not in on_disk]
    if absent and check_files:
        raise ManifestError(f"{len(absent)} video files listed in {split_file} are missing:\n{_listing(absent)}\n"
                            "Fix the split file, or pass check_files=False to skip them.")
    for rel, row in on_disk.items():
        row.split, row.where = listed.get(rel, ("unused", str(row.path)))
    _assign_splits(rows, True, val_fraction, test_fraction, seed)
    return _to_table(rows)


def read_csv(
    path: Path | str,
    root: Path | str | None = None,
    val_fraction: float | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    check_files: bool = True,
) -> pa.Table:
    """Manifest from a CSV with columns ``path,label_name[,split][,video_id][,label]``.

    Relative paths are taken from root (default: the CSV's folder). Labels are the sorted
    label names unless a ``label`` column gives them (0-based, one per name). video_id defaults
    to ``<label_name>/<file stem>``. Without a split column splits follow ``stratified_split``;
    with one, val_fraction (None: 0.1 when no row is "val") of each class's train rows is
    held out as "val".
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise ManifestError(f"CSV manifest not found: {path}")
    base = Path(root).expanduser().absolute() if root is not None else path.parent
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        for needed in ("path", "label_name"):
            if needed not in columns:
                raise ManifestError(f"{path}: missing column '{needed}' (header has {columns}); "
                                    "expected path,label_name[,split][,video_id][,label]")
        records = []
        for raw in reader:
            rec = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path}:{reader.line_num}"
            if not rec["path"] or not rec["label_name"]:
                raise ManifestError(f"{where}: empty path or label_name")
            if "split" in columns and rec.get("split") not in SPLITS:
                raise ManifestError(f"{where}: split {rec.get('split')!r} is not one of {SPLITS}")
            if "label" in columns and not rec.get("label", "").isdigit():
                raise ManifestError(f"{where}: label {rec.get('label')!r} is not a 0-based integer")
            records.append((rec, where))
    if not records:
        raise ManifestError(f"{path}: no rows")
    if "label" in columns:
        label_of: dict[str, int] = {}
        name_of: dict[int, str] = {}
        for rec, where in records:
            name, label = rec["label_name"], int(rec["label"])
            if label_of.setdefault(name, label) != label or name_of.setdefault(label, name) != name:
                raise ManifestError(f"{where}: conflicting label: '{name}' -> {label} conflicts with "
                                    f"earlier rows ('{name}' -> {label_of[name]}, {label} -> '{name_of[label]}')")
    else:
        label_of = {name: i for i, name in enumerate(sorted({rec["label_name"] for rec, _ in records}))}
    rows = []
    for rec, where in records:
        p = Path(rec["path"]).expanduser()
        p = p if p.is_absolute() else base / p
        vid = rec.get("video_id") or f"{rec['label_name']}/{p.stem}"
        rows.append(_Row(vid, p, label_of[rec["label_name"]], rec["label_name"], rec.get("split") or "train", where))
    _check_duplicates(rows)
    if check_files:
        _check_files(rows, base)
    _assign_splits(rows, "split" in columns, val_fraction, test_fraction, seed)
    return _to_table(rows)


# ----------------------------------------------------------------------------- Parquet I/O


def validate_manifest(table: pa.Table, source: str = "manifest table") -> pa.Table:
    """Check the schema and invariants; returns the table with the schema's columns first, cast."""
    columns = {}
    for field in MANIFEST_SCHEMA:
        if field.name not in table.column_names:
            raise ManifestError(f"{source}: missing column '{field.name}' (has {table.column_names}); "
                                f"a manifest needs {MANIFEST_SCHEMA.names}")
        col = table.column(field.name)
        if col.type != field.type:
            try:
                col = col.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ManifestError(f"{source}: column '{field.name}' has type {col.type}, expected {field.type}") from exc
        if col.null_count:
            raise ManifestError(f"{source}: column '{field.name}' has {col.null_count} null values")
        columns[field.name] = col
    ids = columns["video_id"].to_pylist()
    if len(set(ids)) != len(ids):
        dups = sorted(v for v, n in Counter(ids).items() if n > 1)
        raise ManifestError(f"{source}: column 'video_id' has {len(dups)} duplicate ids:\n{_listing(dups)}")
    if "" in ids or "" in columns["path"].to_pylist():
        raise ManifestError(f"{source}: column 'video_id' or 'path' has empty strings")
    bad_splits = sorted(set(columns["split"].to_pylist()) - set(SPLITS))
    if bad_splits:
        raise ManifestError(f"{source}: column 'split' has values {bad_splits}; allowed: {SPLITS}")
    pairs = set(zip(columns["label"].to_pylist(), columns["label_name"].to_pylist()))
    if any(label < 0 for label, _ in pairs):
        raise ManifestError(f"{source}: column 'label' has negative values; labels are 0-based")
    if len({lab for lab, _ in pairs}) != len(pairs) or len({n for _, n in pairs}) != len(pairs):
        raise ManifestError(f"{source}: columns 'label' and 'label_name' are not one-to-one: {sorted(pairs)[:MAX_LISTED]}")
    extra = [table.schema.field(n) for n in table.column_names if n not in columns]
    return pa.Table.from_arrays([*columns.values(), *(table.column(f.name) for f in extra)],
                                schema=pa.schema([*MANIFEST_SCHEMA, *extra]))


def write_manifest(table: pa.Table, path: Path | str) -> Path:
    """Validate and write the manifest as Parquet (atomically: a temp file then a rename)."""
    path = Path(path)
    table = validate_manifest(table, source=f"manifest for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_manifest(path: Path | str) -> pa.Table:
    """Read and validate a manifest; relative video paths are resolved against its folder."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: not a readable Parquet manifest ({exc})") from exc
    table = validate_manifest(table, source=str(path))
    paths = table.column("path").to_pylist()
    if not all(os.path.isabs(p) for p in paths):
        resolved = pa.array([p if os.path.isabs(p) else str(path.parent / p) for p in paths], pa.string())
        table = table.set_column(1, MANIFEST_SCHEMA.field("path"), resolved)
    return table


def label_names(table: pa.Table) -> list[str]:
    """Class names indexed by label; every label 0..C-1 must occur."""
    pairs = dict(zip(table.column("label").to_pylist(), table.column("label_name").to_pylist()))
    if sorted(pairs) != list(range(len(pairs))):
        gaps = sorted(set(range(max(pairs, default=-1) + 1)) - set(pairs))
        raise ManifestError(f"labels are not contiguous from 0: no rows for labels {gaps[:MAX_LISTED]}")
    return [pairs[i] for i in range(len(pairs))]
