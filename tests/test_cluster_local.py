"""The local cluster scripts: the head of cluster/local/up.sh (token auth on: its job API
answers a client with the token and refuses one without), and cluster/local/down.sh, which
stops exactly what up.sh started: none of its processes is left (the head plus two worker nodes
of `up.sh --workers 2`, and `ray job submit` of jobs/extract.py to them, are tested in
test_cluster_s3.py, whose cluster they are). cluster/local/mlflow.sh: a tracking server
on 127.0.0.1 that takes a run's metric and artifact (kept in a local folder, or in S3 through a
local S3 API) and leaves no process after `stop`."""

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


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to check the head's processes")
def test_a_local_head_with_a_token_then_down_leaves_nothing(tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "ray").exists():
        pytest.skip(f"no ray command in {venv}/bin")
    dash = _free_port()
    env = {**os.environ, "VENV": str(venv), "RAY_HEAD_DIR": str(tmp_path / "head"),
           "RAY_PORT": str(_free_port()), "RAY_DASHBOARD_PORT": str(dash), "RAY_NUM_CPUS": "2",
           "RAY_AGENT_PORT": str(_free_port()), "RAY_CLIENT_PORT": str(_free_port()),
           "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    env.pop("RAY_ADDRESS", None)
    try:
        up = subprocess.run(["bash", str(REPO / "cluster/local/up.sh")], env=env,
                            capture_output=True, text=True, timeout=240)
        temp_dir = (tmp_path / "head" / "temp_dir").read_text().strip()
        head_pids = [int(p) for p in (tmp_path / "head" / "head.pids").read_text().split()]
        assert up.returncode == 0, up.stdout + up.stderr
        assert head_pids and all(_live(p) for p in head_pids)
        # The head keeps idle workers as init_ray's local instances do (2 per CPU + 2).
        raylets = [p for p in head_pids if b"/raylet" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert raylets
        for p in raylets:
            assert b"RAY_num_workers_soft_limit=6" in Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        assert (tmp_path / "token").stat().st_mode & 0o077 == 0  # the token is private
        client = {**env, "RAY_AUTH_MODE": "token"}
        # With the token the job API answers (a job submitted with --working-dir, on a cluster
        # of up.sh with worker nodes: tests/test_cluster_s3.py)...
        listed = subprocess.run([str(venv / "bin" / "ray"), "job", "list", "--address",
                                 f"http://127.0.0.1:{dash}"], env=client, capture_output=True,
                                text=True, timeout=120)
        assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
        # ... and without it, it refuses the client.
        no_token = {k: v for k, v in client.items() if k != "RAY_AUTH_TOKEN_PATH"}
        no_token["HOME"] = str(tmp_path / "nohome")
        denied = subprocess.run([str(venv / "bin" / "ray"), "job", "list", "--address",
                                 f"http://127.0.0.1:{dash}"], env=no_token, capture_output=True,
                                text=True, timeout=120)
        assert denied.returncode != 0
    finally:
        down = subprocess.run(["bash", str(REPO / "cluster/local/down.sh")], env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [p for p in head_pids if _live(p)]
    assert _processes_naming(temp_dir) == []
    assert _processes_marked(temp_dir) == []
    assert not (tmp_path / "head" / "head.pids").exists()


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
