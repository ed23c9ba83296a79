"""The body of ``jobs/manifest.py``: a data set's annotations -> a manifest, and a summary.

``make_manifest(dataset, annotations, videos, out, ...)`` picks the reader of ``dataset``
(``READERS``: ucf101, hmdb51, folder, csv, kinetics, ssv2), checks that the options given are
ones that reader takes, writes the manifest (``reslstm.datasets.write_manifest``) and, when
some listed videos are not downloaded (normal for Kinetics and SSv2), writes them to a CSV
beside the manifest (``<out stem>.missing.csv`` unless ``missing_list`` names one). It returns a
``ManifestSummary`` whose ``text()`` the job prints: the classes, the videos per split, the
missing videos and the readers' notes. No Ray is needed.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import pyarrow as pa

from reslstm import storage
from reslstm.datasets import (SPLITS, manifest_notes, missing_videos, read_csv,
                              read_folder_per_class, read_hmdb51, read_kinetics, read_ssv2,
                              read_ucf101, write_manifest)
from reslstm.datasets.manifest import listing
from reslstm.errors import ConfigError


@dataclass(frozen=True)
class _Reader:
    read: Callable[..., pa.Table]
    annotations: str  # "one", "optional" or "many": how many --annotations it takes
    options: frozenset  # the reader options (beyond annotations and videos) it takes


_OFFICIAL = frozenset({"split", "val_fraction", "seed"})
_STRATIFIED = frozenset({"val_fraction", "test_fraction", "seed"})
READERS = {  # read(annotations as a list, videos, **options)
    "ucf101": _Reader(lambda ann, videos, **kw: read_ucf101(ann[0], videos, **kw), "one", _OFFICIAL),
    "hmdb51": _Reader(lambda ann, videos, **kw: read_hmdb51(ann[0], videos, **kw), "one", _OFFICIAL),
    "folder": _Reader(lambda ann, videos, **kw: read_folder_per_class(
        videos, ann[0] if ann else None, **kw), "optional", _STRATIFIED),
    "csv": _Reader(lambda ann, videos, **kw: read_csv(ann[0], root=videos, **kw), "one", _STRATIFIED),
    "kinetics": _Reader(read_kinetics, "many", frozenset({"val_fraction", "seed"})),
    "ssv2": _Reader(read_ssv2, "many", frozenset({"labels", "val_fraction", "seed"})),
}
_FLAGS = {"split": "--split", "labels": "--labels", "val_fraction": "--val-fraction",
          "test_fraction": "--test-fraction", "seed": "--seed"}


def read_dataset(dataset: str, annotations: Sequence[str], videos: str, **options) -> pa.Table:
    """The manifest table of ``dataset`` from its reader; options left None take the reader's
    defaults. ``ConfigError`` for an unknown data set, an option the reader does not take, or
    the wrong number of annotation files or folders."""
    reader = READERS.get(dataset)
    if reader is None:
        raise ConfigError(f"unknown data set {dataset!r}; choose one of {sorted(READERS)}")
    given = {k: v for k, v in options.items() if v is not None}
    alien = sorted(set(given) - reader.options)
    if alien:
        takers = {o: sorted(d for d, r in READERS.items() if o in r.options) for o in alien}
        raise ConfigError(f"{dataset} takes no " + "; ".join(
            f"{_FLAGS.get(o, o)} (it is for {', '.join(t) or 'no data set'})" for o, t in takers.items()))
    annotations = list(annotations or [])
    counts = {"one": (1, 1), "optional": (0, 1), "many": (1, None)}[reader.annotations]
    if len(annotations) < counts[0] or (counts[1] is not None and len(annotations) > counts[1]):
        need = {"one": "exactly one --annotations", "optional": "at most one --annotations "
                "(a split file)", "many": "one or more --annotations"}[reader.annotations]
        raise ConfigError(f"{dataset} takes {need}, got {len(annotations)}")
    return reader.read(annotations, videos, **given)


@dataclass
class ManifestSummary:
    dataset: str
    out: str
    classes: list[str]  # by label
    per_split: dict[str, int]
    per_class: dict[str, int]
    missing: list[dict]
    missing_list: str | None
    notes: list[str]

    def text(self) -> str:
        total = sum(self.per_split.values())
        lines = [f"{self.dataset}: {total} videos of {len(self.classes)} classes -> {self.out}",
                 "videos per split: " + ", ".join(f"{s} {self.per_split.get(s, 0)}" for s in SPLITS),
                 f"classes ({len(self.classes)}):",
                 listing([f"{i} {name} ({self.per_class.get(name, 0)} videos)"
                          for i, name in enumerate(self.classes)])]
        empty = [name for name in self.classes if not self.per_class.get(name)]
        if empty:
            lines += [f"classes without videos ({len(empty)}):", listing(empty)]
        if self.missing:
            lines += [f"missing: {len(self.missing)} listed videos not found, left out "
                      + f"(all in {self.missing_list}):",
                      listing([f"{m['video_id']} ({m['where']})" for m in self.missing])]
        else:
            lines.append("missing: none")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _missing_list(out: str, given: str | None) -> storage.Location:
    """``given``, else ``<out stem>.missing.csv`` beside the manifest (with its filesystem,
    so an object-store endpoint in ``out``'s URI options holds for it too)."""
    if given:
        return storage.resolve(given)
    loc = storage.resolve(out)
    return loc.parent().join(f"{loc.name.removesuffix('.parquet')}.missing.csv")


def write_missing(missing: list[dict], path) -> None:
    """The missing videos as CSV at ``path`` (a path, URI or ``storage.Location``): video_id,
    label, label_name, split, path (where it was looked for), where (the annotation file and
    line)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["video_id", "label", "label_name", "split", "path", "where"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(missing)
    storage.resolve(path).write_text(buf.getvalue())


def make_manifest(dataset: str, annotations: Sequence[str], videos: str, out: str,
                  missing_list: str | None = None, **options) -> ManifestSummary:
    """Read ``dataset`` (``read_dataset``), write the manifest to ``out`` and the missing
    videos, if any, to ``missing_list``; returns the summary the job prints."""
    table = read_dataset(dataset, annotations, videos, **options)
    missing, notes = missing_videos(table), manifest_notes(table)
    write_manifest(table, out)
    if missing:
        location = _missing_list(str(out), missing_list)
        write_missing(missing, location)
        missing_list = str(location)
    pairs = {m["label"]: m["label_name"] for m in missing}
    pairs.update(zip(table.column("label").to_pylist(), table.column("label_name").to_pylist()))
    classes = [pairs.get(i, f"<label {i}>") for i in range(max(pairs, default=-1) + 1)]
    return ManifestSummary(dataset, str(out), classes,
                           dict(Counter(table.column("split").to_pylist())),
                           dict(Counter(table.column("label_name").to_pylist())),
                           missing, missing_list if missing else None, notes)

