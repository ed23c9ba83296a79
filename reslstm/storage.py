"""Where the project reads and writes: a local path or any pyarrow filesystem URI.

``resolve("features/ucf101")`` and ``resolve("s3://bucket/features?region=us-east-1")`` both
give a ``Location``: a pyarrow filesystem and a path on it, so the feature store, predictions,
reports and manifests run unchanged on a laptop's disk and on object storage. A ``Location``
pickles (the filesystem object travels with it, credentials included), so Ray tasks on other
nodes write where the driver asked.

Writes are all-or-nothing for readers: ``write_bytes`` / ``open_output`` on a local disk write a
hidden temporary file, fsync it and rename it into place; on object storage an object becomes
visible only once its upload completes, so the final name is written directly, once. Readers of
this project (and pyarrow datasets) ignore names starting with ``.`` or ``_``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pyarrow.fs as pafs

HIDDEN = (".", "_")


def is_uri(path) -> bool:
    """True for ``scheme://...`` (s3, gs, hdfs, file, ...), False for a plain path."""
    return "://" in str(path)


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
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def __str__(self) -> str:
        return self.uri

    def join(self, *parts: str) -> "Location":
        parts = tuple(str(p).strip("/") for p in parts if str(p))
        return Location(self.filesystem, posixpath.join(self.path, *parts),
                        posixpath.join(self.uri, *parts))

    def parent(self) -> "Location":
        return Location(self.filesystem, posixpath.dirname(self.path.rstrip("/")),
                        posixpath.dirname(self.uri.rstrip("/")))

    def as_path(self) -> Path:
        """The local path; a clear error for object storage (for libraries that need a file)."""
        if not self.local:
            raise ValueError(f"{self.uri} is not on the local disk; this step needs a local path")
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
    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    # -- writing ------------------------------------------------------------------------------
    def mkdir(self) -> None:
        self.filesystem.create_dir(self.path, recursive=True)

    @contextlib.contextmanager
    def open_output(self) -> Iterator:
        """A binary stream whose content appears at this location only when the block ends
        without an error (see the module docstring)."""
        parent = self.parent()
        parent.mkdir()
        if not self.local:
            with self.filesystem.open_output_stream(self.path) as f:
                yield f
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


def resolve(path) -> Location:
    """A ``Location`` for a local path (made absolute) or a filesystem URI such as
    ``s3://bucket/prefix?region=us-east-1&endpoint_override=http://127.0.0.1:9000``.
    ``Location`` objects pass through unchanged."""
    if isinstance(path, Location):
        return path
    text = os.fspath(path) if not isinstance(path, str) else path
    if not is_uri(text) or text.startswith("file://"):
        local = text[len("file://"):] if text.startswith("file://") else text
        absolute = str(Path(local).expanduser().absolute())
        return Location(pafs.LocalFileSystem(), absolute, absolute)
    try:
        filesystem, fs_path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / ValueError by backend
        raise ValueError(f"{_display(text)}: cannot open this URI with pyarrow ({exc}); use a "
                         "local path or a URI such as s3://bucket/prefix") from exc
    return Location(filesystem, fs_path.rstrip("/"), _display(text).rstrip("/"))


def _display(uri: str) -> str:
    """``scheme://bucket/path``: without credentials in the user-info part or the query
    (endpoints and options), so a printed location never shows a secret."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
