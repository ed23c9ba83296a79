"""Where the project reads and writes: a local path or any pyarrow filesystem URI.

``resolve("features/ucf101")`` and ``resolve("s3://bucket/features?region=us-east-1")`` both
give a ``Location``: a pyarrow filesystem and a path on it, so the feature store, predictions,
reports and manifests run unchanged on a laptop's disk and on object storage. A ``Location``
pickles (the filesystem object travels with it, credentials included), so Ray tasks on other
nodes write where the driver asked.

Writes are all-or-nothing for readers: ``write_bytes`` / ``open_output`` on a local disk write a
hidden temporary file, fsync it and rename it into place. Object storage (S3, GCS) has no
rename, but an object becomes visible only once its upload completes: the content is built in
memory (on local disk past ``SPOOL_BYTES``) and uploaded to the final name once, after the block that writes it succeeded (pyarrow's
output streams complete an upload when closed, even on an error, so an error inside the block
must never reach one). Readers of this project (and pyarrow datasets) ignore names starting
with ``.`` or ``_``. Directories do not exist on object storage: ``mkdir`` does nothing there.

Reading: ``open_input`` gives a seekable binary file; on object storage it reads ranges of
``block_size`` bytes on demand and keeps the last few in memory (a bounded read cache), so a
video is streamed, never downloaded whole. ``resolve(path, like=location)`` opens an option-free
URI of ``location``'s scheme (``s3://bucket/videos/a.mp4`` in a manifest) with ``location``'s
filesystem, so paths listed in a file carry neither endpoint nor credentials.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import posixpath
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

from reslstm.errors import ConfigError

HIDDEN = (".", "_")
OBJECT_STORES = ("s3", "gcs")  # pyarrow's type_name of filesystems without directories or rename
READ_BLOCK = 4 * 2 ** 20       # bytes one ranged read of an object fetches
READ_BLOCKS = 4                # blocks an open object keeps in memory
SPOOL_BYTES = 64 * 2 ** 20     # an object being written is held in memory up to this, then on disk
COPY_BYTES = 8 * 2 ** 20       # bytes per write of its upload


def is_uri(path) -> bool:
    """True for ``scheme://...`` (s3, gs, hdfs, file, ...), False for a plain path."""
    return "://" in str(path)


def split_uri(uri: str) -> tuple[str, str, str, str]:
    """(scheme, user-info, ``bucket/key``, query) of ``scheme://[user-info@]bucket/key[?query]``,
    the key taken literally (an object key may hold ``#`` or spaces)."""
    scheme, _, rest = uri.partition("://")
    rest, _, query = rest.partition("?")
    netloc, slash, key = rest.partition("/")
    userinfo, _, host = netloc.rpartition("@")
    return scheme, userinfo, host + slash + key, query


def normpath(path: str) -> str:
    """``posixpath.normpath`` that keeps an empty path empty and a URI's ``scheme://``."""
    if is_uri(path):
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{normpath(rest)}"
    return posixpath.normpath(path) if path else path


@dataclass(frozen=True)
class Location:
    """A file or directory on a filesystem. ``path`` is the filesystem's own path (no scheme);
    ``uri`` is what a person reads: the absolute local path, or ``scheme://bucket/key`` without
    the query options (which may hold an endpoint, never printed credentials)."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def object_store(self) -> bool:
        """S3 or GCS: no directories, no rename, objects visible once uploaded."""
        return self.filesystem.type_name in OBJECT_STORES

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def __str__(self) -> str:
        return self.uri

    def join(self, *parts: str) -> "Location":
        """A location inside this one (``..`` and ``.`` are resolved)."""
        parts = tuple(str(p).strip("/") for p in parts if str(p).strip("/"))
        if not parts:
            return self
        return Location(self.filesystem, normpath(posixpath.join(self.path, *parts)),
                        normpath(posixpath.join(self.uri, *parts)))

    def parent(self) -> "Location":
        return Location(self.filesystem, posixpath.dirname(self.path.rstrip("/")),
                        posixpath.dirname(self.uri.rstrip("/")))

    def as_path(self) -> Path:
        """The local path; a clear error for object storage (for libraries that need a file)."""
        if not self.local:
            raise ConfigError(f"{self.uri} is not on the local disk; this step needs a local path")
        return Path(self.path)

    # -- queries ------------------------------------------------------------------------------
    def info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def size(self) -> int:
        return int(self.info().size or 0)

    def list(self, suffix: str = "", hidden: bool = False) -> list[str]:
        """Filesystem paths of the files directly inside this directory ending in ``suffix``,
        sorted ([] when the directory does not exist); hidden names only with ``hidden``."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        out = []
        for info in infos:
            name = posixpath.basename(info.path)
            if info.type != pafs.FileType.File or not name.endswith(suffix):
                continue
            if name.startswith(HIDDEN) != hidden:
                continue
            out.append(info.path)
        return sorted(out)

    # -- reading ------------------------------------------------------------------------------
    def open_input(self, block_size: int = READ_BLOCK, max_blocks: int = READ_BLOCKS):
        """A seekable binary file (``read``, ``seek``, ``tell``, ``size``); on object storage a
        ``BlockReader``: ranged reads of ``block_size`` bytes, at most ``max_blocks`` kept."""
        if self.local:
            return open(self.path, "rb")
        return BlockReader(self.filesystem.open_input_file(self.path), block_size, max_blocks)

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    # -- writing ------------------------------------------------------------------------------
    def mkdir(self) -> None:
        """Create this directory and its parents (nothing to do on object storage)."""
        if not self.object_store:
            self.filesystem.create_dir(self.path, recursive=True)

    @contextlib.contextmanager
    def open_output(self) -> Iterator:
        """A binary stream whose content appears at this location only when the block ends
        without an error (see the module docstring)."""
        parent = self.parent()
        parent.mkdir()
        if not self.local:
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
                yield spool
                spool.seek(0)
                with self.filesystem.open_output_stream(self.path) as f:
                    shutil.copyfileobj(spool, f, COPY_BYTES)
            return
        tmp = os.path.join(parent.path, f".{self.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_bytes(self, data: bytes) -> None:
        with self.open_output() as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def delete(self) -> None:
        """Delete this file (nothing if absent)."""
        if self.exists():
            self.filesystem.delete_file(self.path)

    def delete_dir(self) -> None:
        """Delete this directory and everything in it (nothing if absent)."""
        if self.exists():
            self.filesystem.delete_dir(self.path)


class BlockReader(io.RawIOBase):
    """A seekable, read-only file over a pyarrow random-access file (an object in S3 or GCS)
    that fetches ``block_size``-byte ranges on demand and keeps the ``max_blocks`` most recently
    used in memory: FFmpeg's small reads and seeks (an MP4's index at the end, then its data)
    cost one request per block, and memory stays bounded however large the object."""

    def __init__(self, source, block_size: int = READ_BLOCK, max_blocks: int = READ_BLOCKS):
        super().__init__()
        self._source = source
        self._size = source.size()
        self._block = int(block_size)
        self._max = max(1, int(max_blocks))
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._pos = 0
        self.requests = 0  # ranged reads made (for tests and benchmarks)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def _get(self, index: int) -> bytes:
        data = self._cache.get(index)
        if data is None:
            data = bytes(self._source.read_at(self._block, index * self._block))
            self.requests += 1
            self._cache[index] = data
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return data

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        out = []
        while self._pos < end:
            index, offset = divmod(self._pos, self._block)
            chunk = self._get(index)[offset: offset + end - self._pos]
            if not chunk:
                break
            out.append(chunk)
            self._pos += len(chunk)
        return b"".join(out)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._cache.clear()
            self._source.close()
        super().close()


def resolve(path, like: Location | None = None) -> Location:
    """A ``Location`` for a local path (made absolute) or a filesystem URI such as
    ``s3://bucket/prefix?region=us-east-1&endpoint_override=http://127.0.0.1:9000``.
    ``Location`` objects pass through unchanged. With ``like`` (a location on object storage),
    a URI of its scheme without options or credentials is opened with ``like``'s filesystem
    (same endpoint and credentials): what a manifest or a store's metadata lists."""
    if isinstance(path, Location):
        return path
    text = os.fspath(path) if not isinstance(path, str) else path
    if like is not None and not like.local and is_uri(text):
        scheme, userinfo, key, query = split_uri(text)
        if scheme == split_uri(like.uri)[0] and not userinfo and not query:
            return Location(like.filesystem, normpath(key).rstrip("/"), normpath(text).rstrip("/"))
    if not is_uri(text) or text.startswith("file://"):
        local = text[len("file://"):] if text.startswith("file://") else text
        absolute = str(Path(local).expanduser().absolute())
        return Location(pafs.LocalFileSystem(), absolute, absolute)
    try:
        filesystem, fs_path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / ValueError by backend
        # pyarrow's message quotes the whole URI: keep its credentials out of ours (and out of
        # the traceback, hence ``from None``).
        reason = str(exc).replace(text, display(text))
        userinfo = split_uri(text)[1]
        if userinfo:
            reason = reason.replace(userinfo, "***")
        raise ConfigError(f"{display(text)}: cannot open this URI with pyarrow ({reason}); use a "
                         "local path or a URI such as s3://bucket/prefix") from None
    return Location(filesystem, fs_path.rstrip("/"), display(text).rstrip("/"))


def join(path: str, *parts: str) -> str:
    """``path`` (a local path or a URI, options and credentials kept) with ``parts`` appended:
    ``join("s3://k:s@b/runs?region=x", "ray_results")`` is ``"s3://k:s@b/runs/ray_results?region=x"``,
    a string that ``resolve`` opens with the same endpoint and credentials."""
    parts = [str(p).strip("/") for p in parts if str(p).strip("/")]
    if not is_uri(path):
        return os.path.join(path, *parts)
    base, mark, query = str(path).partition("?")
    return posixpath.join(base.rstrip("/"), *parts) + mark + query


def display(uri: str) -> str:
    """``scheme://bucket/path``: without credentials in the user-info part or the query
    (endpoints and options), so a printed location never shows a secret. Plain paths pass."""
    if not is_uri(uri):
        return uri
    scheme, _, key, _ = split_uri(uri)
    return f"{scheme}://{key}"


