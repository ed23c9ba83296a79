"""Manifests from a CSV with columns ``path,label_name[,split][,video_id][,label]``."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa

from .manifest import SPLITS, ManifestError, Row, finish
from .splits import assign_splits


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
        rows.append(Row(vid, p, label_of[rec["label_name"]], rec["label_name"], rec.get("split") or "train", where))
    return finish(rows, base if check_files else None,
                  lambda rs: assign_splits(rs, "split" in columns, val_fraction, test_fraction, seed))
