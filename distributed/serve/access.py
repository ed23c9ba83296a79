"""Who may ask the Serve app for what: the bearer token, and the locations a request may name.

- ``Token``: from ``--token-file`` (a file on every node running a replica) or the environment
  variable ``RESLSTM_TOKEN`` (what a ``serve deploy`` config can carry). Every route but
  ``/health`` then needs ``Authorization: Bearer <token>``; a missing or wrong one is a 401 with
  ``WWW-Authenticate``. The comparison takes the same time whatever the guess; the token is
  never logged, put in a config or in an answer. No token: the endpoint is unauthenticated
  (it says so at start-up) and binds to 127.0.0.1 unless told otherwise.
- ``Locations``: requests that name a path or URI (``{"path": ...}``) are refused with 403
  unless the operator allowed a prefix (``--allow-prefix``, repeatable). A local path is made
  absolute, ``file://`` spelled out, ``..`` and symlinks resolved (``os.path.realpath``) before
  the check, and the resolved path is what the replica opens, so a link cannot lead out of a
  prefix. A URI must be plain ``scheme://bucket/key``: endpoints, options and credentials come
  from the operator's prefix (a request cannot point the replica at another endpoint), and its
  key is normalised (``..``) before the check. A refusal says only that the location is not
  allowed, never whether it exists.
"""

from __future__ import annotations

import hmac
import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from reslstm import storage
from reslstm.errors import ConfigError

from .request_body import BadRequest

log = logging.getLogger(__name__)

TOKEN_ENV = "RESLSTM_TOKEN"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="reslstm"'}


class Token:
    """The bearer token every route but /health needs, or none (module docstring)."""

    def __init__(self, token_file: str | None = None, environ=os.environ):
        secret = None
        if token_file:
            try:
                secret = Path(token_file).expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(f"--token-file {token_file}: cannot read it ({exc.strerror}); "
                                  "put the token in a file every replica's node can read") from None
            if not secret:
                raise ConfigError(f"--token-file {token_file}: the file is empty; write the "
                                  "token in it (e.g. openssl rand -hex 32 > FILE)")
        elif environ.get(TOKEN_ENV, "").strip():
            secret = environ[TOKEN_ENV].strip()
        self._secret = secret.encode() if secret else None

    @property
    def required(self) -> bool:
        return self._secret is not None

    def check(self, authorization: str | None) -> None:
        """Raise a 401 unless ``authorization`` (the header) carries the token."""
        if self._secret is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise BadRequest(401, "unauthorized", "this endpoint needs a token: send "
                             "Authorization: Bearer <token>", headers=CHALLENGE)
        if not hmac.compare_digest(given.strip().encode(), self._secret):
            raise BadRequest(401, "unauthorized", "the token is not valid", headers={
                "WWW-Authenticate": 'Bearer realm="reslstm", error="invalid_token"'})

    def __repr__(self) -> str:  # never the secret, whatever prints this object
        return f"Token(required={self.required})"


@dataclass(frozen=True)
class _Prefix:
    root: str                 # local: the real absolute path; URI: scheme://bucket/key, normalised
    opened_with: str | None   # a URI prefix as the operator wrote it (endpoint, credentials)


def _plain_uri(text: str) -> str | None:
    """``scheme://bucket/key`` normalised, or None when ``text`` carries credentials, options or
    a key that climbs out of its bucket."""
    scheme, userinfo, key, query = storage.split_uri(text)
    if userinfo or query or "?" in text:
        return None
    key = posixpath.normpath(key) if key else key
    if not key or key.startswith(("..", "/")) or key == ".":
        return None
    return f"{scheme.lower()}://{key}"


def _local(text: str) -> str:
    local = text[len("file://"):] if text.startswith("file://") else text
    return os.path.realpath(os.path.expanduser(local))


def _under(path: str, root: str, sep: str) -> bool:
    return path == root or path.startswith(root.rstrip(sep) + sep)


class Locations:
    """The prefixes requests may name paths and URIs under (module docstring)."""

    def __init__(self, prefixes: Iterable[str] = ()):
        self.prefixes: list[_Prefix] = []
        for text in prefixes:
            if storage.is_uri(text) and not text.startswith("file://"):
                scheme, _, key, _ = storage.split_uri(text)
                root = _plain_uri(f"{scheme}://{key}")
                if root is None:
                    raise ConfigError(f"--allow-prefix {storage.display(text)}: name a bucket "
                                      "and optionally a key prefix, e.g. s3://bucket/videos/")
                self.prefixes.append(_Prefix(root.rstrip("/"), text))
            else:
                local = text[len("file://"):] if text.startswith("file://") else text
                if not os.path.isabs(os.path.expanduser(local)):
                    raise ConfigError(f"--allow-prefix {text!r}: use an absolute path")
                self.prefixes.append(_Prefix(_local(text), None))

    def __bool__(self) -> bool:
        return bool(self.prefixes)

    def describe(self) -> list[str]:
        """The allowed prefixes as a person reads them (no endpoints or credentials)."""
        return [p.root for p in self.prefixes]

    def check(self, named: str) -> tuple[str, str]:
        """(what the replica opens, how answers name it) for a location a request names;
        403 when it is not under an allowed prefix."""
        if not self.prefixes:
            raise BadRequest(403, "paths_disabled", "this endpoint does not read paths or URIs "
                             "(no --allow-prefix); upload the video instead")
        if storage.is_uri(named) and not named.startswith("file://"):
            plain = _plain_uri(named)
            for p in self.prefixes:
                if plain is not None and p.opened_with is not None and _under(plain, p.root, "/"):
                    return self._opened(plain, p.opened_with), plain
        else:
            real = _local(named)
            for p in self.prefixes:
                if p.opened_with is None and _under(real, p.root, os.sep):
                    return real, named
        raise BadRequest(403, "location_not_allowed", "this location is not one the endpoint "
                         "may read; upload the video, or ask the operator which prefixes "
                         "are allowed")

    @staticmethod
    def _opened(plain: str, prefix: str) -> str:
        """``plain`` with the prefix's credentials and options (its endpoint, region)."""
        scheme, userinfo, _, query = storage.split_uri(prefix)
        key = plain[len(scheme) + 3:]
        return f"{scheme}://{userinfo + '@' if userinfo else ''}{key}{'?' + query if query else ''}"
