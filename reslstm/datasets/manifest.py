"""Video manifests: the one table every later stage starts from, and what readers share.

A manifest is a Parquet table with one row per video (``MANIFEST_SCHEMA``):

- ``video_id``   unique, ``"<class>/<file stem>"``
- ``path``       absolute path or filesystem URI of the video file (readers always write
                 absolute paths; ``read_manifest`` resolves a relative path against the
                 manifest's folder, or its prefix for a manifest on S3/GCS)
- ``label``      int32, 0-based class index
- ``label_name`` class name; one-to-one with ``label``
- ``split``      ``"train"``, ``"val"``, ``"test"`` or ``"unused"``

Readers, one module each: ``ucf101.read_ucf101``, ``hmdb51.read_hmdb51``,
``folder.read_folder_per_class``, ``csv_list.read_csv``, ``kinetics.read_kinetics`` and
``ssv2.read_ssv2`` (all re-exported by ``reslstm.datasets``). Each turns its source into ``Row``
objects and hands them to ``finish``, the shared tail: duplicate ids (with the file and line of
both), missing files, the split policy (``splits``) and the validated table. Bad input raises
``ManifestError`` naming the file (and line) and what to do about it.

Missing files are an error, except for data sets downloaded from YouTube and the like
(Kinetics, SSv2), where some always are: those readers look their videos up in one walk of
the video root (``index_videos``, ``find_video``) and ``finish(..., skip_missing=True)`` leaves
the missing rows out and records them, with notes such as unlabelled test videos left out, in
the returned table's schema metadata: ``missing_videos(table)`` and ``manifest_notes(table)``
read them back (``write_manifest`` writes the manifest columns only).

``write_manifest`` and ``read_manifest`` take a local path or a filesystem URI
(``s3://bucket/data/manifest.parquet?region=...``; ``reslstm.storage``). Video URIs listed in a
manifest on object storage need no endpoint or credentials of their own: they are read with the
manifest's (``storage.resolve(path, like=...)``), so the table never holds a secret.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reslstm.errors import ReslstmError
from reslstm.memory import release_arrow_memory

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
CHUNK_ROWS = 65_536  # rows turned into Python strings at a time, where a column needs Python

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"}
)

MAX_LISTED = 10  # how many offending entries an error message lists


class ManifestError(ReslstmError, ValueError):
    """Bad manifest input; the message names the file (and line) and what is wrong."""


@dataclass
class Row:
    video_id: str
    path: Path
    label: int
    label_name: str
    split: str
    where: str  # "file:line" (or the file) the row came from, for error messages
    group: str | None = None  # rows sharing a group land on the same side of the val split


# ----------------------------------------------------------------------------- helpers


def listing(items: Sequence[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    lines = [f"  {item}" for item in items[:MAX_LISTED]]
    if total > MAX_LISTED:
        lines.append(f"  ... and {total - MAX_LISTED} more")
    return "\n".join(lines)


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as (1-based line number, stripped text)."""
    if not path.is_file():
        raise ManifestError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc}); is this really the {what}?") from exc
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def check_split_number(split: int) -> None:
    if split not in (1, 2, 3):
        raise ManifestError(f"split must be 1, 2 or 3 (the official splits), got {split!r}")


def locate(directory: Path | str, probe: str, subdirs: Sequence[str]) -> Path:
    """The folder holding `probe`: `directory` itself or one of its known sub-folders."""
    directory = Path(directory).expanduser().absolute()
    for cand in (directory, *(directory / s for s in subdirs)):
        if any(cand.glob(probe)):
            return cand
    return directory


def index_videos(root: Path, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> dict[str, list[Path]]:
    """Every video file under ``root`` (any depth: per-class, per-split or flat folders) by
    file stem, in one walk; each stem's paths sorted."""
    if not root.is_dir():
        raise ManifestError(f"video folder not found: {root}")
    exts = {e.lower() for e in extensions}
    index: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in exts and not name.startswith("."):
                index.setdefault(stem, []).append(Path(folder) / name)
    for paths in index.values():
        paths.sort()
    return index


def find_video(index: dict[str, list[Path]], stem: str, folders: Iterable[str] = ()) -> Path | None:
    """The video named ``stem`` in ``index``: the one in a folder named in ``folders`` (its
    class, spelled with spaces or underscores) when there are several, else the first."""
    paths = index.get(stem)
    if not paths:
        return None
    preferred = [p for p in paths if p.parent.name in set(folders)]
    return (preferred or paths)[0]


_MISSING_KEY, _NOTES_KEY = b"reslstm.missing", b"reslstm.notes"


def missing_videos(table: pa.Table) -> list[dict]:
    """The rows a reader left out for want of their file (``finish(..., skip_missing=True)``):
    dicts of ``video_id``, ``label``, ``label_name``, ``split``, ``path`` (where it was looked for) and
    ``where`` (the annotation file and line)."""
    return json.loads((table.schema.metadata or {}).get(_MISSING_KEY, b"[]"))


def manifest_notes(table: pa.Table) -> list[str]:
    """What a reader left out on purpose and why (e.g. unlabelled test videos)."""
    return json.loads((table.schema.metadata or {}).get(_NOTES_KEY, b"[]"))


# ----------------------------------------------------------------------------- the shared tail


def _check_duplicates(rows: Iterable[Row]) -> None:
    first: dict[str, Row] = {}
    dups = []
    for row in rows:
        if row.video_id in first:
            dups.append(f"'{row.video_id}' at {row.where} (first at {first[row.video_id].where})")
        else:
            first[row.video_id] = row
    if dups:
        raise ManifestError(f"{len(dups)} duplicate video ids; each video may be listed once:\n{listing(dups)}")


def _check_files(rows: Sequence[Row], video_root: Path | str) -> None:
    missing = [f"{r.path} (listed at {r.where})" for r in rows if not r.path.is_file()]
    if missing:
        raise ManifestError(
            f"{len(missing)} of {len(rows)} listed video files are missing:\n{listing(missing)}\n"
            f"Check the video root ({video_root}), or pass check_files=False to build the "
            "manifest without checking."
        )


def finish(rows: list[Row], files_root: Path | str | None = None,
           assign: Callable[[list[Row]], None] | None = None, skip_missing: bool = False,
           notes: Sequence[str] = ()) -> pa.Table:
    """What every reader ends with: duplicate ids are refused (naming where each was listed),
    the files are checked when ``files_root`` is given (the folder named in the error), or with
    ``skip_missing`` the rows without a file are left out and recorded (``missing_videos``),
    ``assign`` sets the splits in place (``splits.hold_out_val`` / ``assign_splits``) on the
    rows kept, and the rows become a validated manifest table (with ``notes``,
    ``manifest_notes``)."""
    _check_duplicates(rows)
    if files_root is not None:
        _check_files(rows, files_root)
    missing = []
    if skip_missing:
        kept = [r for r in rows if r.path.is_file()]
        missing = [{"video_id": r.video_id, "label": r.label, "label_name": r.label_name,
                    "split": r.split, "path": str(r.path), "where": r.where}
                   for r in rows if not r.path.is_file()]
        rows = kept
    if assign is not None:
        assign(rows)
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
    table = validate_manifest(table)
    if missing or notes:
        table = table.replace_schema_metadata({_MISSING_KEY: json.dumps(missing),
                                               _NOTES_KEY: json.dumps(list(notes))})
    return table


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
    # Checked with Arrow kernels: no Python object per video (a manifest may list 100k+).
    ids = columns["video_id"]
    if pc.count_distinct(ids).as_py() != len(ids):
        dups = sorted(duplicated(ids))
        raise ManifestError(f"{source}: column 'video_id' has {len(dups)} duplicate ids:\n{listing(dups)}")
    if any(pc.any(pc.equal(columns[c], "")).as_py() for c in ("video_id", "path")):
        raise ManifestError(f"{source}: column 'video_id' or 'path' has empty strings")
    bad_splits = sorted(set(pc.unique(columns["split"]).to_pylist()) - set(SPLITS))
    if bad_splits:
        raise ManifestError(f"{source}: column 'split' has values {bad_splits}; allowed: {SPLITS}")
    pairs = _label_pairs(columns["label"], columns["label_name"])
    if any(label < 0 for label, _ in pairs):
        raise ManifestError(f"{source}: column 'label' has negative values; labels are 0-based")
    if len({lab for lab, _ in pairs}) != len(pairs) or len({n for _, n in pairs}) != len(pairs):
        raise ManifestError(f"{source}: columns 'label' and 'label_name' are not one-to-one: {sorted(pairs)[:MAX_LISTED]}")
    extra = [table.schema.field(n) for n in table.column_names if n not in columns]
    return pa.Table.from_arrays([*columns.values(), *(table.column(f.name) for f in extra)],
                                schema=pa.schema([*MANIFEST_SCHEMA, *extra]))


def write_manifest(table: pa.Table, path: Path | str) -> Path | str:
    """Validate and write the manifest as Parquet, so that it appears only when complete (a
    local temp file then a rename; one upload on object storage). Returns the local ``Path``,
    or the URI as given."""
    from reslstm import storage

    if storage.is_uri(path) and not storage.resolve(path).local:
        loc = storage.resolve(path)
        table = validate_manifest(table, source=f"manifest for {loc}")
        with loc.open_output() as f:
            pq.write_table(table, f)
        return path
    path = Path(path)
    table = validate_manifest(table, source=f"manifest for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _absolute(p: str) -> bool:
    from reslstm.storage import is_uri

    return is_uri(p) or os.path.isabs(p)


def read_table(path):
    """(the Parquet table as stored, unchecked; its ``storage.Location``) of a manifest or
    another list of videos (``path``: a local path, URI or ``storage.Location``);
    ``ManifestError`` when it is missing or not Parquet."""
    from reslstm import storage

    loc = storage.resolve(path)
    if not loc.is_file():
        raise ManifestError(f"manifest not found: {loc}")
    try:
        table = pq.read_table(loc.path, filesystem=loc.filesystem)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{loc}: not a readable Parquet manifest ({exc})") from exc
    release_arrow_memory()  # the decoders' buffers: 4x the table's size at 128k rows, kept else
    return table, loc


def resolve_paths(paths: Sequence[str], manifest) -> list[str]:
    """``paths`` listed in the manifest at ``manifest`` (its ``storage.Location``), the relative
    ones resolved against its folder: a local path, or ``scheme://bucket/key`` beside a manifest
    on object storage (read with the manifest's filesystem, ``storage.resolve(p, like=...)``)."""
    folder = manifest.parent()
    return [p if _absolute(p) else folder.join(p).uri for p in paths]


def resolve_path_column(paths: pa.Array | pa.ChunkedArray, manifest) -> pa.Array:
    """``resolve_paths`` on an Arrow column of paths: only the relative ones pass through
    Python, ``CHUNK_ROWS`` at a time; absolute paths and URIs are kept as they are."""
    if isinstance(paths, pa.ChunkedArray):
        paths = paths.combine_chunks()
    paths = paths.cast(pa.string())
    maybe = pc.invert(pc.or_(pc.match_substring(paths, "://"), pc.starts_with(paths, "/")))
    maybe = maybe.fill_null(False)
    todo = np.flatnonzero(maybe.to_numpy(zero_copy_only=False))
    if not len(todo):
        return paths
    pieces = [pa.array(resolve_paths(paths.take(pa.array(todo[a:a + CHUNK_ROWS])).to_pylist(),
                                     manifest), pa.string())
              for a in range(0, len(todo), CHUNK_ROWS)]
    return pc.replace_with_mask(paths, maybe, pa.concat_arrays(pieces))


def duplicated(values: pa.Array | pa.ChunkedArray) -> list:
    """The values that occur more than once (in no particular order)."""
    counts = pc.value_counts(values)
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()


def _label_pairs(labels, names) -> set[tuple[int, str]]:
    """The distinct (label, label_name) pairs of two columns (one per class, when consistent)."""
    t = pa.table({"label": labels, "label_name": names}).group_by(["label", "label_name"]).aggregate([])
    return set(zip(t.column("label").to_pylist(), t.column("label_name").to_pylist()))


def read_manifest(path) -> pa.Table:
    """Read and validate a manifest (a path, URI or ``storage.Location``); relative video paths are resolved against
    its folder (its prefix on object storage)."""
    table, loc = read_table(path)
    table = validate_manifest(table, source=str(loc))
    table = table.set_column(1, MANIFEST_SCHEMA.field("path"),
                             resolve_path_column(table.column("path"), loc))
    release_arrow_memory()  # the checks' hash tables
    return table


def label_names(table: pa.Table) -> list[str]:
    """Class names indexed by label; every label 0..C-1 must occur."""
    pairs = dict(sorted(_label_pairs(table.column("label"), table.column("label_name"))))
    if sorted(pairs) != list(range(len(pairs))):
        gaps = sorted(set(range(max(pairs, default=-1) + 1)) - set(pairs))
        raise ManifestError(f"labels are not contiguous from 0: no rows for labels {gaps[:MAX_LISTED]}")
    return [pairs[i] for i in range(len(pairs))]
