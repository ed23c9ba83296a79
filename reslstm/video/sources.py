"""Videos on object storage (S3, GCS): an object opened for PyAV with the error kinds of a
local file (``reslstm.video.failures``), streamed through ``storage.Location.open_input`` (ranged
reads, a small bounded cache), never downloaded whole. ``reslstm.video.decoding`` calls ``source``
and ``open_object``; nothing else needs this module."""

from __future__ import annotations

import os

import av

from reslstm import storage
from reslstm.video.failures import VideoDecodeError, container_kind, not_openable, unreadable


def source(path):
    """(the name messages use, the ``storage.Location`` of an object or None for a local file)."""
    if isinstance(path, storage.Location):
        return (path.path, None) if path.local else (path.uri, path)
    path = os.fspath(path)
    if storage.is_uri(path):
        loc = storage.resolve(path)
        return (loc.path, None) if loc.local else (loc.uri, loc)
    return path, None


def _denied(exc: OSError) -> bool:
    text = str(exc)
    return isinstance(exc, PermissionError) or "ACCESS_DENIED" in text or "AccessDenied" in text


class _Closing:
    """A container opened on a file object of ours: closes that file after the container (PyAV
    does not close a file object it was given); attribute access goes to the container."""

    def __init__(self, container, source):
        self._container, self._source = container, source

    def __getattr__(self, name):
        return getattr(self._container, name)

    def close(self) -> None:
        try:
            self._container.close()
        finally:
            self._source.close()


def open_object(path: str, loc):
    """``video._open`` for an object on S3/GCS: the same error kinds, read through a bounded cache."""
    import pyarrow.fs as pafs

    try:
        info = loc.info()
        if info.type == pafs.FileType.NotFound:
            raise VideoDecodeError(path, "missing", "no such object. Check the path and the "
                                   "prefix the manifest was built with.")
        if info.type == pafs.FileType.Directory:
            raise VideoDecodeError(path, "not_a_video", "is a prefix (a folder), not a video "
                                   "object. Point the manifest at the video objects inside it.")
        if not info.size:
            raise VideoDecodeError(path, "empty", "the object is empty (0 bytes); the upload "
                                   "probably failed. Upload the video again.")
        source = loc.open_input()
    except VideoDecodeError:
        raise
    except FileNotFoundError as e:
        raise VideoDecodeError(path, "missing", f"no such object ({e}). Check the path.") from e
    except OSError as e:
        if _denied(e):
            raise VideoDecodeError(path, "permission", f"access denied ({e}). Give these "
                                   "credentials read access to the object.") from e
        raise
    try:
        return _Closing(av.open(source, metadata_errors="ignore"), source)
    except av.error.InvalidDataError as e:
        source.seek(0)
        fmt = container_kind(path, source.read(189))
        source.close()
        raise unreadable(path, e, fmt, "object", "Upload it again.") from e
    except av.error.FFmpegError as e:
        source.close()
        raise not_openable(path, e) from e
    except BaseException:
        source.close()
        raise
