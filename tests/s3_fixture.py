"""A local S3 API for tests: moto's HTTP server (``moto[server]``, a dev dependency) in a
subprocess on 127.0.0.1 and a free port, with authentication enforced.

pyarrow speaks S3 through its own C++ client, not boto, so moto's in-process mock never sees
its requests: only a real HTTP endpoint does. The server starts with
``INITIAL_NO_AUTH_ACTION_COUNT`` set, so it checks every request's signature after the first
few, which create an IAM user with an access key and an ``s3:*`` policy. A request signed with
other keys (or none) is refused, so a test that passes shows the credentials really travelled
(for instance inside a pickled ``S3FileSystem`` to Ray workers).

Use it from a test module as::

    from s3_fixture import s3_server_fixture  # noqa: F401  (registers the fixture s3_server)

    def test_x(s3_server):
        fs = s3_server.filesystem()
        s3_server.bucket("features")
        uri = s3_server.uri("features", "store")   # for FileSystem.from_uri / the jobs

URI form (checked with pyarrow 25 and moto 5.2.5): ``s3://KEY:SECRET@bucket/prefix?region=
us-east-1&endpoint_override=http%3A%2F%2F127.0.0.1%3APORT``. The endpoint carries its scheme
(``endpoint_override=127.0.0.1:PORT&scheme=http`` works too; without either pyarrow speaks
https). Credentials are accepted in the URI's user-info part, percent-encoded (secrets contain
``/``); without them pyarrow takes ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` from the
environment (see ``env()``). Query parameters ``access_key`` / ``secret_key`` are refused.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import moto.server  # noqa: F401  (the dev extra's; a missing install fails here, loudly)
import pytest

REGION = "us-east-1"
# Requests moto serves before it starts checking signatures: the three IAM calls below.
_SETUP_ACTIONS = 3


@dataclass
class S3Server:
    """A running moto server and the credentials of its one IAM user."""

    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str = REGION
    pid: int = 0
    _buckets: set[str] = field(default_factory=set)

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def filesystem(self, **kwargs):
        """A ``pyarrow.fs.S3FileSystem`` for this server (picklable: credentials included)."""
        import pyarrow.fs as pafs

        opts = {"access_key": self.access_key, "secret_key": self.secret_key,
                "region": self.region, "endpoint_override": self.host_port, "scheme": "http",
                "allow_bucket_creation": True}
        return pafs.S3FileSystem(**{**opts, **kwargs})

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (a valid S3 name: 3-63 lowercase characters) if needed."""
        if name not in self._buckets:
            self.filesystem().create_dir(name)
            self._buckets.add(name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys of the objects under ``prefix`` in ``bucket`` (recursively), sorted."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(f"{bucket}/{prefix.strip('/')}".rstrip("/"), recursive=True,
                                allow_not_found=True)
        return sorted(i.path[len(bucket) + 1:] for i in self.filesystem().get_file_info(sel)
                      if i.type == pafs.FileType.File)

    def uri(self, bucket: str, prefix: str = "", credentials: bool = True) -> str:
        """``s3://`` URI that ``pyarrow.fs.FileSystem.from_uri`` resolves to this server.
        ``credentials=False`` leaves the keys out: the reader then needs ``env()``."""
        q = urllib.parse.quote
        auth = f"{q(self.access_key, safe='')}:{q(self.secret_key, safe='')}@" if credentials else ""
        path = f"{bucket}/{prefix.strip('/')}" if prefix.strip("/") else bucket
        query = urllib.parse.urlencode({"region": self.region, "endpoint_override": self.endpoint})
        return f"s3://{auth}{path}?{query}"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (pyarrow, boto3, an MLflow server) to reach this server.
        ``AWS_ENDPOINT_URL`` is read by boto3 and by pyarrow 25 for URIs without an endpoint;
        MLflow's S3 artifact store wants ``MLFLOW_S3_ENDPOINT_URL``."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
                "AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(endpoint: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode}")
        try:
            # moto's own dashboard API: answers once the server listens; not an AWS action,
            # so it does not count against the unauthenticated setup requests.
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"moto server at {endpoint} did not answer within {timeout:.0f} s")


def _create_user(endpoint: str) -> tuple[str, str]:
    import boto3  # a dependency of moto

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="reslstm-tests")
    iam.put_user_policy(UserName="reslstm-tests", PolicyName="s3-all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reslstm-tests")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


_finalize_registered = False


def _register_finalize_s3() -> None:
    """Finalize pyarrow's S3 client when the test process exits, after every test that used it
    (never earlier: S3 cannot be initialized again in a process once finalized). pyarrow
    registers ``ensure_s3_finalized`` at import; this explicit registration, made at the first
    S3 use, runs before it and before the exit handlers registered earlier (Ray's), which keeps
    the "FinalizeS3 was not called" message away even when pyarrow's own registration did not
    happen (an import of ``pyarrow._s3fs`` alone). Finalizing twice is harmless."""
    global _finalize_registered
    if not _finalize_registered:
        import pyarrow.fs as pafs

        atexit.register(pafs.finalize_s3)
        _finalize_registered = True


def start_s3_server(log_dir: str | None = None) -> tuple[S3Server, subprocess.Popen]:
    """Start a moto server; returns it and its process (stop it with ``stop_s3_server``)."""

    log_dir = log_dir or tempfile.mkdtemp(prefix="moto-")
    last_error: Exception | None = None
    for _ in range(3):  # a free port can be taken between the check and the bind
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_ACTIONS)}
        with open(os.path.join(log_dir, f"moto-{port}.log"), "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                     "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_until_up(endpoint, proc)
            access_key, secret_key = _create_user(endpoint)
        except Exception as e:  # noqa: BLE001  (retried on another port, then raised)
            last_error = e
            _stop(proc)
            continue
        _register_finalize_s3()
        return S3Server(endpoint, access_key, secret_key, pid=proc.pid), proc
    raise RuntimeError(f"could not start moto's S3 server (logs in {log_dir})") from last_error


def stop_s3_server(proc: subprocess.Popen) -> None:
    _stop(proc)


# Registered under the name s3_server; the function's own name differs so that a test's
# `s3_server` argument does not shadow the import (pyflakes F811).
@pytest.fixture(scope="module", name="s3_server")
def s3_server_fixture(tmp_path_factory):
    """A moto S3 server for one test module; stopped (by its PID) when the module is done."""
    server, proc = start_s3_server(str(tmp_path_factory.mktemp("moto")))
    try:
        yield server
    finally:
        stop_s3_server(proc)
