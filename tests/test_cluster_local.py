"""cluster/local/mlflow.sh: a tracking server on 127.0.0.1 that takes a run's metric and
artifact (kept in a local folder, or in S3 through a local S3 API) and leaves no process after
`stop`; and the helpers that find a cluster's processes. The cluster of cluster/local/up.sh
(token auth: its job API answers a client with the token and refuses one without; a head plus
two worker nodes, `ray job submit` to them) and down.sh, which stops exactly what up.sh started,
are tested in test_cluster_s3.py."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def _processes_naming(text: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") and _live(int(p.name)):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def _processes_marked(temp_dir: str) -> list[int]:
    """Live processes that up.sh started for the node of ``temp_dir`` (the environment marker
    also catches the Ray client server, whose command line names no temp dir)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if f"RESLSTM_RAY_NODE={temp_dir}".encode() in (p / "environ").read_bytes().split(b"\0") \
                        and _live(int(p.name)):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def _mlflow_sh(cmd: str, env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "cluster/local/mlflow.sh"), cmd], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _log_and_read_back(url: str, tmp_path: Path) -> str:
    """Log a run with a metric and an artifact through the server; returns the run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp = client.create_experiment(f"cluster-local-{tmp_path.name}")
    run = client.create_run(exp)
    rid = run.info.run_id
    client.log_metric(rid, "val_top1", 0.75, step=3)
    (tmp_path / "report.txt").write_text("confusion matrix here")
    client.log_artifact(rid, str(tmp_path / "report.txt"))
    client.set_terminated(rid)
    # The artifact went through the server (proxied), not to a path the client chose.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    hist = client.get_metric_history(rid, "val_top1")
    assert [(m.step, m.value) for m in hist] == [(3, 0.75)]
    assert [f.path for f in client.list_artifacts(rid)] == ["report.txt"]
    got = client.download_artifacts(rid, "report.txt", str(tmp_path / "down"))
    assert Path(got).read_text() == "confusion matrix here"
    return rid


def _mlflow_server(tmp_path: Path, extra_env: dict | None = None):
    """Start mlflow.sh with its state in tmp_path; returns (env, url, server pid)."""
    env = {**os.environ, "VENV": str(Path(sys.prefix)), "MLFLOW_STATE_DIR": str(tmp_path / "mlflow"),
           **(extra_env or {})}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_PORT", "MLFLOW_BACKEND_STORE_URI"):
        env.pop(k, None)
    up = _mlflow_sh("start", env)
    assert up.returncode == 0, up.stdout + up.stderr
    url = up.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:")
    assert _mlflow_sh("url", env).stdout.strip() == url
    return env, url, int((tmp_path / "mlflow" / "server.pid").read_text())


def _tree(pid: int) -> set[int]:
    """``pid`` and its live descendants (parent links in /proc)."""
    parents = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {pid}, True
    while grew:
        new = {c for c, pp in parents.items() if pp in tree and c not in tree}
        tree |= new
        grew = bool(new)
    return {p for p in tree if _live(p)}


def _assert_stopped(env: dict, pid: int, state: Path) -> None:
    tree = _tree(pid)
    assert len(tree) >= 2  # the server and its web worker(s) at least
    down = _mlflow_sh("stop", env, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    # Nothing of it is left: not the server, its uvicorn workers or its job runners, nor any
    # process naming its state dir.
    assert not [p for p in tree if _live(p)]
    assert _processes_naming(str(state)) == []
    assert _mlflow_sh("url", env).returncode != 0


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to check the server's processes")
def test_mlflow_server_takes_a_run_then_stop_leaves_nothing(tmp_path, monkeypatch):
    if not (Path(sys.prefix) / "bin" / "mlflow").exists():
        pytest.skip(f"no mlflow command in {sys.prefix}/bin")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail fast, not after minutes
    env, url, pid = _mlflow_server(tmp_path)
    try:
        # A second start refuses while one runs (one server per state dir).
        assert _mlflow_sh("start", env).returncode != 0
        rid = _log_and_read_back(url, tmp_path)
        # Runs in the SQLite database, artifacts in the state dir's folder.
        assert (tmp_path / "mlflow" / "mlflow.db").is_file()
        assert list((tmp_path / "mlflow" / "artifacts").rglob(f"{rid}/artifacts/report.txt"))
    finally:
        _assert_stopped(env, pid, tmp_path / "mlflow")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to check the server's processes")
def test_mlflow_server_keeps_artifacts_in_s3(tmp_path, s3_server, monkeypatch):
    if not (Path(sys.prefix) / "bin" / "mlflow").exists():
        pytest.skip(f"no mlflow command in {sys.prefix}/bin")
    import pyarrow.fs as pafs

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    # With an S3 destination, MLflow 3.17's server advertises presigned downloads and clients
    # then fetch artifacts straight from S3 (moto, checking signatures, answers presigned URLs
    # with 500). A client that cannot reach the bucket sets this to download through the server.
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")

    s3_server.bucket("mlflow-artifacts")
    # The server alone holds the S3 credentials; the client only talks HTTP to it.
    env, url, pid = _mlflow_server(tmp_path, {**s3_server.env(),
                                              "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow-artifacts/runs"})
    try:
        rid = _log_and_read_back(url, tmp_path)
        found = s3_server.filesystem().get_file_info(
            pafs.FileSelector("mlflow-artifacts/runs", recursive=True))
        assert [i.path for i in found if i.path.endswith(f"{rid}/artifacts/report.txt")]
        assert not (tmp_path / "mlflow" / "artifacts").exists()
    finally:
        _assert_stopped(env, pid, tmp_path / "mlflow")
