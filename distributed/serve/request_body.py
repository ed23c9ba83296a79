"""What a request to the Serve app carries: a raw video body, a multipart form, or JSON naming
a path, read into a temporary file within the upload limit; its query; and the 4xx answers
(``BadRequest``) for what is wrong with it. No Ray here: the deployment (``app``) uses these."""

from __future__ import annotations

import email.message
import json
import mmap
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse

from reslstm.errors import ReslstmError

READ_CHUNK = 1 << 20
JSON_LIMIT = 1 << 16  # a JSON request names a video; it does not carry one


class BadRequest(ReslstmError):
    """A request we answer with ``status`` and a message (never a traceback); ``headers`` go
    with the answer (``WWW-Authenticate`` of a 401, ``Retry-After``)."""

    def __init__(self, status: int, error: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error, self.headers = status, error, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "message": str(self)}, status_code=self.status,
                            headers=self.headers)


async def save_body(request: Request, target: Path, limit: int) -> int:
    """Stream the request body to ``target``; 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    size = 0
    with open(target, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(size, limit, more=True)
            f.write(chunk)
    return size


def too_large(size: int, limit: int, more: bool = False) -> BadRequest:
    over = "over " if more else ""
    if limit == JSON_LIMIT:
        return BadRequest(413, "too_large", f"a JSON request of {over}{size} bytes; it names a "
                          f"video in at most {JSON_LIMIT} bytes (upload videos as the body)")
    return BadRequest(413, "too_large", f"the video is {over}{size / 2 ** 20:.1f} MiB; this "
                      f"endpoint takes at most {limit / 2 ** 20:g} MiB (max_upload_mb)")


def _content_params(header: str) -> email.message.Message:
    msg = email.message.Message()
    msg["content-type"] = header
    return msg


def split_multipart(body: Path, content_type: str, target: Path) -> tuple[str | None, dict]:
    """The first file part of a multipart/form-data body -> ``target`` (its filename, or None
    when there is no file part) and the form's text fields."""
    boundary = _content_params(content_type).get_param("boundary")
    if not boundary:
        raise BadRequest(400, "bad_form", "multipart/form-data without a boundary")
    delimiter = b"--" + str(boundary).encode("latin-1")
    fields: dict[str, str] = {}
    if body.stat().st_size == 0:
        raise BadRequest(400, "empty", "the request has no body: send the video")
    with open(body, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = mm.find(delimiter)
        while pos != -1:
            start = pos + len(delimiter)
            if mm[start:start + 2] == b"--":
                break  # the closing delimiter
            head_end = mm.find(b"\r\n\r\n", start)
            end = mm.find(b"\r\n" + delimiter, head_end)
            if head_end == -1 or end == -1:
                raise BadRequest(400, "bad_form", "a multipart body cut short (no closing "
                                 "boundary)")
            part = email.message_from_bytes(mm[start:head_end].lstrip(b"\r\n") + b"\r\n\r\n")
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            if filename is not None or name in ("video", "file"):
                with open(target, "wb") as out:
                    for i in range(head_end + 4, end, READ_CHUNK):
                        out.write(mm[i:min(i + READ_CHUNK, end)])
                return filename or str(name), fields
            if name:
                fields[str(name)] = mm[head_end + 4:end].decode("utf-8", "replace")
            pos = end + 2
    return None, fields


def flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(400, "bad_query", f"{name}={value!r}: use true or false")


def top_k(value: str | None) -> int:
    try:
        k = int(value if value is not None else 5)
        if k < 1:
            raise ValueError
    except ValueError:
        raise BadRequest(400, "bad_query", f"top_k={value!r}: use a whole number >= 1") from None
    return k


async def named_path(request: Request, body: Path) -> str:
    """The path or URI a JSON request names: {"path": "..."}."""
    await save_body(request, body, JSON_LIMIT)
    try:
        doc = json.loads(body.read_bytes())
    except ValueError:
        raise BadRequest(400, "bad_json", "the body is not JSON; send {\"path\": \"...\"}, "
                         "or the video itself with another content type") from None
    path = doc.get("path") if isinstance(doc, dict) else None
    if not isinstance(path, str) or not path:
        raise BadRequest(400, "bad_json", "JSON requests name a video: {\"path\": "
                         "\"s3://bucket/clip.mp4\"}")
    return path

