"""Something-Something v2 manifests from the official JSON annotations.

``labels.json`` (``something-something-v2-labels.json``) maps each class, a template without
its brackets, to its index as a string (``{"Approaching something with your camera": "0",
...}``). ``train.json`` / ``validation.json`` (``something-something-v2-train.json``, ...) are
lists of ``{"id": "78687", "label": "holding potato next to ...", "template": "Holding
[something] next to [something]", "placeholders": [...]}``: the class is the template with
``[`` and ``]`` removed. The videos are ``<id>.webm``, in one flat folder (found anywhere under
the video root).

- video_id is the SSv2 id (``78687``); labels are labels.json's indices.
- Splits (``splits.published_split``): papers report on validation, so it becomes "test";
  ``val_fraction`` of each class's training videos is held out as "val" (seeded). ``test.json``
  has ids only: its videos are left out with a note (a manifest row needs a label); entries of
  a test file that do have a template are "unused".
- Videos not found are left out and listed (``manifest.missing_videos``), not an error.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from .manifest import ManifestError, Row, find_video, index_videos
from .splits import annotation_files, finish_published, published_split, split_in_name


def _read_json(path: Path, kind: type, what: str):
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ManifestError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc}); is this the {what}?") from exc
    if not isinstance(data, kind):
        raise ManifestError(f"{path}: expected a JSON {kind.__name__} ({what}), got a "
                            f"{type(data).__name__}")
    return data


def _read_labels(path: Path) -> list[str]:
    """Class names indexed by label from labels.json (``{"<class>": "<0-based index>"}``)."""
    by_index: dict[int, str] = {}
    for name, index in _read_json(path, dict, "SSv2 labels.json").items():
        if not str(index).strip().isdigit():
            raise ManifestError(f"{path}: class {name!r} has index {index!r}, expected a 0-based "
                                "integer")
        if int(index) in by_index:
            raise ManifestError(f"{path}: index {index} is given to both {by_index[int(index)]!r} "
                                f"and {name!r}")
        by_index[int(index)] = name
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise ManifestError(f"{path}: indices must run 0..{len(by_index) - 1} without gaps")
    return [by_index[i] for i in range(len(by_index))]


def _labels_beside(files: Sequence[Path]) -> Path:
    """labels.json in the folder of the first annotation file."""
    folder = files[0].parent
    found = sorted(folder.glob("*labels.json"))
    if len(found) != 1:
        raise ManifestError(f"{folder}: {'no' if not found else 'several'} '*labels.json' "
                            "files; give the SSv2 labels.json with labels=")
    return found[0]


def read_ssv2(
    annotations: Path | str | Sequence[Path | str],
    video_root: Path | str,
    labels: Path | str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> pa.Table:
    """Manifest of Something-Something v2 (see the module docstring).

    ``annotations``: the train / validation / test JSON files, or folders holding them (their
    set is read from the file name); ``labels``: labels.json (default: the one beside the
    first annotation file). Videos are looked up anywhere under ``video_root``; the ones not
    found are left out and listed (``missing_videos(table)``). ``val_fraction`` of each class's
    downloaded training videos becomes "val", seeded by ``seed``.
    """
    given = [annotations] if isinstance(annotations, (str, Path)) else list(annotations)
    files = annotation_files(given, ".json", "SSv2 annotation JSON")
    labels_path = Path(labels).expanduser().absolute() if labels else _labels_beside(files)
    classes = _read_labels(labels_path)
    label_of = {name: i for i, name in enumerate(classes)}
    root = Path(video_root).expanduser().absolute()
    index = index_videos(root)
    rows: list[Row] = []
    unlabelled: Counter[Path] = Counter()
    for path in files:
        word = split_in_name(path)
        if word is None:
            raise ManifestError(f"{path}: the file name does not say its set; expected "
                                "...train.json, ...validation.json or ...test.json")
        split = published_split(word, str(path))
        for n, entry in enumerate(_read_json(path, list, "SSv2 annotation list"), 1):
            where = f"{path}: entry {n}"
            vid = str(entry.get("id", "")).strip() if isinstance(entry, dict) else ""
            if not vid:
                raise ManifestError(f"{where}: expected an object with an 'id', got "
                                    f"{json.dumps(entry)[:80]}")
            where = f"{where} (id {vid})"
            template = entry.get("template")
            if template is None and split == "unused":
                unlabelled[path] += 1
                continue
            if not isinstance(template, str) or not template.strip():
                raise ManifestError(f"{where}: no 'template'; {word} entries need one (their class)")
            name = template.replace("[", "").replace("]", "")
            if name not in label_of:
                raise ManifestError(f"{where}: unknown label: template {template!r} -> {name!r} "
                                    f"is not one of the {len(classes)} classes of {labels_path}")
            video = find_video(index, vid) or root / f"{vid}.webm"
            rows.append(Row(vid, video, label_of[name], name, split, where))
    notes = [f"{f}: {n} test videos without a label left out (a manifest row needs one; "
             "papers report on validation)" for f, n in unlabelled.items()]
    return finish_published(rows, val_fraction, seed, notes)
