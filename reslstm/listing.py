"""Sizes of many files from their folders' listings: what planning an extraction needs to
order its work (largest first) without one request per video.

On object storage a LIST returns a thousand keys where a stat is one HEAD per video, so
sizing 240k videos in a few folders costs hundreds of requests, not 240k. The paths stay in
Arrow: split into folder and name by Arrow kernels and matched to each listing with
``index_in``, so the driver holds no Python object per path, only per folder, and a listing's
entries only while its folder is matched (a fresh plan of 128k videos in one folder: +94 MiB
at its peak, +117 MiB with a dict per path). A local folder is read ``CHUNK`` entries at a
time (``_listing``).
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from reslstm import storage
from reslstm.memory import release_memory


def file_sizes(paths, like: storage.Location | None = None, threads: int = 16) -> dict[str, int]:
    """{path: bytes} of ``paths`` (``file_size_array``'s rule, one listing per folder)."""
    paths = list(paths)
    sizes = file_size_array(pa.array(paths, pa.string()), like, threads)
    return dict(zip(paths, sizes.tolist()))


def file_size_array(paths: pa.Array | pa.ChunkedArray, like: storage.Location | None = None,
                    threads: int = 16) -> np.ndarray:
    """Bytes of each file in ``paths`` (Arrow strings: local paths or URIs, resolved as
    ``resolve(p, like)``), int64 in the same order; 0 for one that is missing, not a file or
    not a valid location (whoever reads it says why).

    One listing per folder (module docstring), ``threads`` folders at a time."""
    if isinstance(paths, pa.ChunkedArray):
        paths = paths.combine_chunks()
    paths = paths.cast(pa.string())
    n = len(paths)
    sizes = np.zeros(n, np.int64)
    if not n:
        return sizes
    head = pc.replace_substring_regex(paths, r"/[^/]*$", "", max_replacements=1)
    name = pc.replace_substring_regex(paths, r"^.*/", "", max_replacements=1)
    # Paths resolved one by one (rare): no folder (or the root), a query ("?": URI options), a
    # name that is not a file's; null paths stay 0.
    odd = pc.or_(pc.or_(pc.invert(pc.match_substring(paths, "/")), pc.match_substring(paths, "?")),
                 pc.or_(pc.is_in(name, value_set=pa.array(["", ".", ".."])),
                        pc.equal(head, ""))).fill_null(True)
    odd = odd.to_numpy(zero_copy_only=False) & paths.is_valid().to_numpy(zero_copy_only=False)
    folders = pc.dictionary_encode(pc.if_else(pa.array(odd), None, head))
    code = folders.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    filesystems: list[pafs.FileSystem] = []  # one per distinct filesystem (resolve makes new objects)

    def key_of(text: str) -> tuple[int, str] | None:
        try:
            loc = storage.resolve(text, like=like)
        except (OSError, ValueError):
            return None
        index = next((i for i, f in enumerate(filesystems) if f.equals(loc.filesystem)), None)
        if index is None:
            index = len(filesystems)
            filesystems.append(loc.filesystem)
        return index, loc.path.rstrip("/")

    # (filesystem index, folder) -> [rows of paths in it]; a folder written two ways is one key
    rows: dict[tuple[int, str], list[np.ndarray]] = {}
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(len(folders.dictionary) + 1))
    for c, text in enumerate(folders.dictionary.to_pylist()):
        key = key_of(text)
        if key is not None:
            rows.setdefault(key, []).append(order[bounds[c]:bounds[c + 1]])
    if odd.any():  # each odd path's name as its filesystem spells it
        spelled = np.full(n, None, object)
        for i in np.flatnonzero(odd).tolist():
            key = key_of(paths[i].as_py())
            if key is not None:
                key, spelled[i] = (key[0], posixpath.dirname(key[1])), posixpath.basename(key[1])
                rows.setdefault(key, []).append(np.array([i]))
        name = pc.if_else(pa.array(odd), pa.array(spelled, pa.string()), name)

    def listed(key) -> None:
        try:
            names, found = _listing(filesystems[key[0]], key[1])
        except OSError:
            return
        at = np.concatenate(rows[key])
        where = pc.index_in(name.take(pa.array(at)), value_set=names).fill_null(-1)
        where = where.to_numpy(zero_copy_only=False)
        sizes[at[where >= 0]] = found[where[where >= 0]]

    with ThreadPoolExecutor(max(1, min(threads, len(rows)))) as pool:
        list(pool.map(listed, list(rows)))
    release_memory()  # the listings' entries and names, freed
    return sizes


CHUNK = 8_192  # entries of a local folder held as Python objects at once


def _listing(filesystem: pafs.FileSystem, folder: str) -> tuple[pa.Array, np.ndarray]:
    """(names, sizes) of the files in ``folder``; OSError when it cannot be listed (a missing
    folder lists empty). pyarrow returns a listing whole, a ``FileInfo`` per entry (a folder of
    128k videos: +40-47 MiB of heap at once), so a local folder is read with ``os.scandir``
    instead, ``CHUNK`` entries at a time into Arrow (+12 MiB, in the same time)."""
    if filesystem.type_name != "local":
        infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        files = [i for i in infos if i.type == pafs.FileType.File]
        return (pa.array([posixpath.basename(i.path.rstrip("/")) for i in files], pa.string()),
                np.fromiter((i.size or 0 for i in files), np.int64, count=len(files)))
    names: list[pa.Array] = []
    sizes: list[np.ndarray] = []
    part: list[str] = []
    part_sizes: list[int] = []

    def close_part():
        names.append(pa.array(part, pa.string()))
        sizes.append(np.array(part_sizes, np.int64))
        part.clear()
        part_sizes.clear()

    try:
        entries = os.scandir(folder or "/")
    except FileNotFoundError:
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    with entries:
        for entry in entries:
            try:
                if not entry.is_file():  # follows a link, as pyarrow's listing does
                    continue
                size = entry.stat().st_size
            except OSError:  # gone since it was listed, or a dangling link
                continue
            part.append(entry.name)
            part_sizes.append(size)
            if len(part) == CHUNK:
                close_part()
    close_part()
    return pa.concat_arrays(names), np.concatenate(sizes)
