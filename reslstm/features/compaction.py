"""Compaction: the small part files of a store directory merged into files of about a target
size, so that a reader whose store grew over many flushes opens a few large files.

A writer flushes whenever it holds about a part's worth of rows, and at least once a minute (so
a killed job loses little work): a long job, or many short reruns, leave many small files. A
compaction merges *runs* of consecutive small files (in name order, which is time order) into
one file each, written with the store's own atomic commit (``storage.Location.open_output``),
and then deletes the files it replaced.

The merged file's name says what it replaces: ``<last>~<generation>-<first>.parquet``, where
``first`` and ``last`` are the stamps (``part-<ns>-<hex>``) of the first and last file of its run
and the generation is one more than the last file's (0 for a file the writer wrote), so the name
sorts right after every file it replaces. Every
reader of the store lists a directory through ``visible``, which drops each file whose stamp
lies in the range of a merged file that is also listed (a merged file inside a larger one's
range too). So, for the store's readers (``FeatureStore``, the training and prediction data,
``--verify``, export):

- Between the merged file's commit and the deletes, and after a job killed there, each row is
  read once: the replaced files are still listed but not visible. The next compaction, or the
  next job on the store, deletes them (``finish``).
- A job killed before the commit leaves only a hidden temporary, removed by the next job.
- A listing that is not a snapshot (object storage pages through keys in name order) never
  misses a row: it reaches the files of a run before their merged name, and if it reaches that
  name before the commit, no file of the run had been deleted when it listed them.

Tools that list the directory themselves (pyarrow, pandas, DuckDB on ``STORE/rgb/*.parquet``)
see the merged rows twice only in that moment between commit and deletes, or after a job killed
in it until the next job on the store; outside a running compaction a store has no replaced
files. Only the store's lock holder compacts (``FeatureStore.compact``).
"""

from __future__ import annotations

import dataclasses
import posixpath
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reslstm import storage

PART_MIB = 128  # the default size of a part file: the writer's and the compaction's target
STAMP = re.compile(r"^(part-\d{20}-[0-9a-f]{8})")
MERGED = re.compile(r"^(part-\d{20}-[0-9a-f]{8})~(\d{4})-(part-\d{20}-[0-9a-f]{8})\.parquet$")


def _span(name: str) -> tuple[str, str] | None:
    """(first stamp, last stamp) of the files a part file stands for; None for a name of
    another form (kept as it is)."""
    merged = MERGED.match(name)
    if merged:
        return merged.group(3), merged.group(1)
    plain = STAMP.match(name)
    return (plain.group(1), plain.group(1)) if plain else None


def _split(paths: list[str]) -> tuple[list[str], list[str]]:
    """(visible, replaced) of a directory's listed part files (module docstring)."""
    spans = {p: _span(posixpath.basename(p)) for p in paths}
    merged = [(p, s) for p, s in spans.items() if s is not None and s[0] != s[1]]
    visible, replaced = [], []
    for p in paths:
        s = spans[p]
        covered = s is not None and any(
            q != p and m[0] <= s[0] and s[1] <= m[1] for q, m in merged)
        (replaced if covered else visible).append(p)
    return visible, replaced


def visible(directory: storage.Location, suffix: str = ".parquet") -> list[str]:
    """The part files a reader of ``directory`` reads (sorted paths on its filesystem)."""
    return _split(directory.list(suffix))[0]


def finish(directory: storage.Location) -> int:
    """Delete the files that merged files replace (what a compaction killed between its commit
    and its deletes left); how many. Only the store's lock holder may call it."""
    _, replaced = _split(directory.list(".parquet"))
    for path in replaced:
        directory.filesystem.delete_file(path)
    return len(replaced)


@dataclasses.dataclass
class Compacted:
    """What one compaction of one directory did."""

    directory: str
    before: int = 0        # visible part files before
    after: int = 0         # and after
    merged: int = 0        # files merged away
    bytes: int = 0         # bytes of the files written

    def line(self, name: str) -> str:
        if not self.merged:
            return f"{name}: {self.before} part file(s), nothing to compact"
        return (f"{name}: {self.before} part files -> {self.after} "
                f"({self.bytes / 2**20:.1f} MiB rewritten)")


def runs(sizes: list[tuple[str, int]], target: int) -> list[list[str]]:
    """Runs of consecutive part files under half the target each, summing to at most
    ``target`` bytes: what one compaction merges. A file named otherwise than a part file, or a
    run of one, is left alone."""
    out, run, total = [], [], 0

    def close():
        if len(run) > 1:
            out.append(list(run))
        run.clear()

    for path, size in sizes:
        if size >= target // 2 or _span(posixpath.basename(path)) is None:
            close()
            total = 0
            continue
        if run and total + size > target:
            close()
            total = 0
        run.append(path)
        total += size
    close()
    return out


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns in ``schema``'s order, nulls for the fields it lacks."""
    columns = [table.column(f.name) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def compact(directory: storage.Location, target: int, check=lambda: None) -> Compacted:
    """Merge the small part files of ``directory`` (``runs``), each run committed as one file
    before its files are deleted; ``check()`` runs before each commit (the store's lease)."""
    finish(directory)
    fs = directory.filesystem
    infos = fs.get_file_info(pafs.FileSelector(directory.path, allow_not_found=True))
    size = {i.path: i.size or 0 for i in infos if i.type == pafs.FileType.File}
    files = visible(directory)
    result = Compacted(str(directory), before=len(files), after=len(files))
    for run in runs([(p, size.get(p, 0)) for p in files], target):
        names = [posixpath.basename(p) for p in run]
        first, last = _span(names[0])[0], _span(names[-1])[1]
        tail = MERGED.match(names[-1])
        generation = 1 + (int(tail.group(2)) if tail else 0)
        # One file of the run in memory at a time (each becomes a row group of the merged
        # file), in one schema: a column that older files lack is null in their rows.
        schema = pa.unify_schemas([pq.read_schema(p, filesystem=fs) for p in run])
        check()
        target_loc = directory.join(f"{last}~{generation:04d}-{first}.parquet")
        with target_loc.open_output() as f, pq.ParquetWriter(f, schema) as writer:
            for p in run:
                writer.write_table(_conform(pq.read_table(p, filesystem=fs), schema))
        for p in run:  # the merged file is committed: from now on these are not read
            fs.delete_file(p)
        result.merged += len(run)
        result.after -= len(run) - 1
        result.bytes += sum(size.get(p, 0) for p in run)
    return result
