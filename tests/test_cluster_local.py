"""`ray job submit` of jobs/extract.py against the head of cluster/local/up.sh (token auth on),
then cluster/local/down.sh stops exactly that head: none of its processes is left."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reslstm import features as fs
from reslstm.datasets.synthetic import generate_synthetic

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


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to check the head's processes")
def test_job_submit_against_local_head_then_down_leaves_nothing(tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "ray").exists():
        pytest.skip(f"no ray command in {venv}/bin")
    dash = _free_port()
    env = {**os.environ, "VENV": str(venv), "RAY_HEAD_DIR": str(tmp_path / "head"),
           "RAY_PORT": str(_free_port()), "RAY_DASHBOARD_PORT": str(dash), "RAY_NUM_CPUS": "2",
           "RAY_AGENT_PORT": str(_free_port()), "RAY_CLIENT_PORT": str(_free_port()),
           "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    env.pop("RAY_ADDRESS", None)
    manifest = generate_synthetic(tmp_path / "data", videos_per_class=1, seed=5)
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
        job = subprocess.run(
            [str(venv / "bin" / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
             "--working-dir", str(REPO), "--", "python", "jobs/extract.py", "--manifest", str(manifest),
             "--out", str(tmp_path / "store"), "--extractor", "tiny3d", "--streams", "rgb",
             "--crops", "1"], env=client, capture_output=True, text=True, timeout=300)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout + job.stderr
        assert "11 videos written" in job.stdout
        assert len(fs.written_ids(tmp_path / "store", "rgb")) == 11
        # Without the token the job API refuses the client.
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
    assert not (tmp_path / "head" / "head.pids").exists()
