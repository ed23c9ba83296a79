"""HMDB-51 manifests from the official ``<class>_test_splitN.txt`` files (1 train, 2 test, 0 unused).

Validation is held out of the training videos per class (``splits.hold_out_val``).
"""

from __future__ import annotations

import re
from pathlib import Path

from .manifest import ManifestError, Row, listing, read_lines
from .splits import official_split_reader

_HMDB_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d+)\.txt$")


_HMDB_SPLIT_CODES = {"1": "train", "2": "test", "0": "unused"}


@official_split_reader("*_test_split*.txt", ("testTrainMulti_7030_splits",), by_group=False)
def read_hmdb51(splits_dir: Path, video_root: Path, split: int, check_files: bool) -> list[Row]:
    """Manifest of HMDB-51 split `split` (1..3) from the ``<class>_test_splitN.txt`` files:
    ``read_hmdb51(splits_dir, video_root, split=1, val_fraction=0.1, seed=0, check_files=True)``
    (``splits.official_split_reader``).

    Each line is ``<video>.avi <0|1|2>`` (1 train, 2 test, 0 unused); videos live at
    ``video_root/<class>/<video>.avi``; labels are class names sorted. splits_dir may also be
    the folder above ``testTrainMulti_7030_splits``. Unused videos stay in the manifest with
    split "unused". val_fraction of each class's train videos goes to "val", seeded.
    """
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
        raise ManifestError(f"{len(missing)} HMDB-51 split files are missing:\n{listing(names)}")
    rows: list[Row] = []
    for label, cls in enumerate(sorted(files)):
        path = files[cls]
        for lineno, line in read_lines(path, "HMDB-51 split file"):
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in _HMDB_SPLIT_CODES:
                raise ManifestError(
                    f"{path}:{lineno}: malformed line, expected '<video>.avi <0|1|2>' "
                    f"(1 train, 2 test, 0 unused), got {line!r}"
                )
            name, code = parts
            rows.append(
                Row(f"{cls}/{Path(name).stem}", video_root / cls / name, label, cls,
                     _HMDB_SPLIT_CODES[code], f"{path}:{lineno}")
            )
    return rows
