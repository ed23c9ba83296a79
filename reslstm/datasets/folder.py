"""Manifests of a folder per class (``root/<class>/<video>``), with an optional split file.

Without a split file the splits are stratified per class (``splits.stratified_split``); a split
file lists ``<class>/<file> <train|val|test|unused>`` lines relative to the root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa

from .manifest import SPLITS, VIDEO_EXTENSIONS, ManifestError, Row, finish, listing, read_lines
from .splits import assign_splits


def _read_split_file(split_file: Path) -> dict[str, tuple[str, str]]:
    """'<class>/<file> <split>' lines -> {relative path: (split, where)}."""
    out: dict[str, tuple[str, str]] = {}
    for lineno, line in read_lines(split_file, "split file"):
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
    rows = [Row(f"{cls}/{v.stem}", v, label_of[cls], cls, "train", str(v))
            for cls, videos in found.items() for v in videos]
    if split_file is None:
        return finish(rows, assign=lambda rs: assign_splits(rs, False, val_fraction,
                                                            test_fraction, seed))
    split_file = Path(split_file)
    listed = _read_split_file(split_file)
    on_disk = {f"{r.label_name}/{r.path.name}": r for r in rows}
    unknown = sorted({rel.split("/")[0] for rel in listed if rel.split("/")[0] not in label_of})
    if unknown:
        raise ManifestError(f"{split_file}: unknown labels, no class folders with videos under {root} for: {unknown}")
    absent = [f"{root / rel} (listed at {where})" for rel, (_, where) in listed.items() if rel not in on_disk]
    if absent and check_files:
        raise ManifestError(f"{len(absent)} video files listed in {split_file} are missing:\n{listing(absent)}\n"
                            "Fix the split file, or pass check_files=False to skip them.")
    for rel, row in on_disk.items():
        row.split, row.where = listed.get(rel, ("unused", str(row.path)))
    return finish(rows, assign=lambda rs: assign_splits(rs, True, val_fraction, test_fraction, seed))
