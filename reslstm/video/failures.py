"""Why a video cannot be read: the error kinds, ``VideoDecodeError`` and the wording of FFmpeg's
open failures, shared by local files (``reslstm.video.decoding``) and objects on object storage
(``reslstm.video.sources``). Imports nothing of the project but ``reslstm.errors``."""

from __future__ import annotations

import os

from reslstm.errors import ReslstmError

ERROR_KINDS = ("missing", "permission", "empty", "not_a_video", "no_video_stream", "truncated",
               "corrupt", "too_few_frames")

# Leading bytes of containers we can name. A file that starts like one of these but that FFmpeg
# cannot open has lost its index (an MP4 whose moov atom sat at the end, an AVI cut inside its
# header): "truncated" tells the user to fetch it again rather than to drop a non-video.
_SIGNATURES = (
    (4, (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"), "MP4/MOV"),
    (0, (b"RIFF",), "AVI"),
    (0, (b"\x1a\x45\xdf\xa3",), "Matroska/WebM"),
    (0, (b"FLV",), "FLV"),
    (0, (b"OggS",), "Ogg"),
    (0, (b"\x30\x26\xb2\x75",), "ASF/WMV"),
    (0, (b"\x00\x00\x01\xba",), "MPEG-PS"),
)


class VideoDecodeError(ReslstmError):
    """A video that cannot be decoded. ``kind`` is one of ``ERROR_KINDS``; the message names
    the file, what is wrong and what to do."""

    def __init__(self, path, kind: str, message: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown VideoDecodeError kind {kind!r}; expected one of {ERROR_KINDS}")
        self.path = os.fspath(path)
        self.kind = kind
        super().__init__(f"{self.path}: {message}")



def container_kind(path: str, head: bytes | None = None) -> str | None:
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(189)
        except OSError:
            return None
    for offset, magics, name in _SIGNATURES:
        if any(head[offset:offset + len(m)] == m for m in magics):
            return name
    if len(head) == 189 and head[0] == head[188] == 0x47:  # two 188-byte packets' sync bytes
        return "MPEG-TS"
    return None



def unreadable(path: str, e, fmt: str | None, what: str = "file",
               again: str = "Download or copy it again.") -> VideoDecodeError:
    """The error for data FFmpeg cannot parse (``InvalidDataError``): ``truncated`` when the
    first bytes look like a container (``fmt``), else ``not_a_video``. Files and objects alike
    (``what``, and how to get it ``again``)."""
    if fmt is not None:
        return VideoDecodeError(
            path, "truncated", f"starts like a {fmt} file but FFmpeg cannot read its header or "
            f"index ({e.strerror}); the {what} is probably truncated (an MP4 whose moov atom was "
            f"at the end and got cut off). {again}")
    return VideoDecodeError(path, "not_a_video", f"not a video file FFmpeg can read "
                            f"({e.strerror}). Replace it with the real video or drop it "
                            "from the manifest.")


def not_openable(path: str, e) -> VideoDecodeError:
    """The error for any other failure of FFmpeg to open ``path``."""
    return VideoDecodeError(path, "not_a_video", f"FFmpeg cannot open it ({e}). Replace it with "
                            "a real video or drop it from the manifest.")
