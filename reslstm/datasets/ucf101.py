"""UCF-101 manifests from the official list files (classInd.txt, trainlist0N.txt, testlist0N.txt).

Validation is held out of the training list by whole groups ``gNN`` (``splits.hold_out_val``).
"""

from __future__ import annotations

import re
from pathlib import Path

from .manifest import ManifestError, Row, read_lines
from .splits import official_split_reader

_UCF_GROUP = re.compile(r"_g(\d+)_c\d+$")


def _read_class_ind(path: Path) -> list[str]:
    """Class names indexed by 0-based label from classInd.txt ("1 ApplyEyeMakeup")."""
    by_id: dict[int, tuple[str, str]] = {}
    for lineno, line in read_lines(path, "UCF-101 class index (classInd.txt)"):
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


@official_split_reader("classInd.txt", ("ucfTrainTestlist",), by_group=True)
def read_ucf101(splits_dir: Path, video_root: Path, split: int, check_files: bool) -> list[Row]:
    """Manifest of UCF-101 split `split` (1..3) from the official list files:
    ``read_ucf101(splits_dir, video_root, split=1, val_fraction=0.1, seed=0, check_files=True)``
    (``splits.official_split_reader``).

    splits_dir holds classInd.txt, trainlist0N.txt and testlist0N.txt (or is the folder above
    ``ucfTrainTestlist``); videos live at ``video_root/<Class>/<video>.avi`` (a flat
    ``video_root/<video>.avi`` is accepted too). val_fraction of each class's train groups
    goes to "val", seeded (see the module docstring).
    """
    class_ind = splits_dir / "classInd.txt"
    classes = _read_class_ind(class_ind)
    exact = {name: i for i, name in enumerate(classes)}
    folded = {name.lower(): i for i, name in enumerate(classes)}  # folder names vary in case
    rows: list[Row] = []
    for kind, fname in (("train", f"trainlist{split:02d}.txt"), ("test", f"testlist{split:02d}.txt")):
        list_path = splits_dir / fname
        for lineno, line in read_lines(list_path, f"UCF-101 {kind} list for split {split}"):
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
            rows.append(Row(f"{classes[label]}/{stem}", path, label, classes[label], kind, where, group))
    return rows
