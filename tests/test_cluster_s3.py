"""A user's cluster with its storage on S3: a real Ray head (no CPUs) and two worker nodes of
``cluster/local/up.sh --workers 2``, each its own raylet started by ``ray start``, none of them
with AWS settings in its environment; a token-authenticated driver sees the three nodes and
schedules on each. ``jobs/extract.py`` submitted with ``ray job submit``, its manifest, videos
and feature store on the local S3 API: the credentials travel in the URIs (worker nodes do not
inherit the driver's environment), the decode tasks on the worker nodes stream the videos from
the bucket, the driver writes the store there, and the store verifies; ``jobs/train.py`` trains
on the two worker nodes from that store, its run directory on S3. ``down.sh`` stops exactly what ``up.sh`` started: no
process, temp dir or pid file is left."""

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from reslstm import features as fs
from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)
from s3_videos import MISSING_ID, synthetic_on_s3
from test_cluster_local import _free_port, _live, _processes_marked, _processes_naming

REPO = Path(__file__).resolve().parents[1]
BUCKET = "cluster-tests"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to check the nodes")]

# Run on the cluster by the test (a driver with the token): where each decode task ran.
TASK_NODES = r"""
import json, sys
from ray.util.state import list_nodes, list_tasks
head = [n.node_id for n in list_nodes(address=sys.argv[1]) if n.is_head_node]
tasks = list_tasks(address=sys.argv[1], filters=[("job_id", "=", sys.argv[2])], limit=10000,
                   raise_on_missing_output=False)
print(json.dumps({"head": head, "decode": sorted({t.node_id for t in tasks if "decode_segments" in t.name
                                                 and t.state == "FINISHED"})}))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (0 CPUs) + 2 worker nodes (1 CPU each) on this machine; stopped by down.sh, which
    must leave none of their processes, temp dirs or pid files."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "ray").exists():
        pytest.skip(f"no ray command in {venv}/bin")
    tmp = tmp_path_factory.mktemp("cluster")
    state = tmp / "head"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN",
                                                      "RAY_num_workers_soft_limit")}
    env.update({"VENV": str(venv), "RAY_HEAD_DIR": str(state), "RAY_PORT": str(_free_port()),
                "RAY_DASHBOARD_PORT": str(_free_port()), "RAY_AGENT_PORT": str(_free_port()),
                "RAY_CLIENT_PORT": str(_free_port()), "RAY_NUM_CPUS": "0",
                "RAY_WORKER_CPUS": "1", "RAY_WORKER_OBJECT_STORE_MEMORY": str(200 * 2 ** 20),
                "RAY_AUTH_TOKEN_PATH": str(tmp / "token"), "AWS_EC2_METADATA_DISABLED": "true"})
    temp_dirs, pids = [], []
    try:
        up = subprocess.run(["bash", str(REPO / "cluster/local/up.sh"), "--workers", "2"], env=env,
                            capture_output=True, text=True, timeout=300)
        temp_dirs = [(state / "temp_dir").read_text().strip(),
                     *(state / "worker_temp_dirs").read_text().split()]
        head_pids = [int(p) for p in (state / "head.pids").read_text().split()]
        pids = head_pids + [int(p) for p in (state / "workers.pids").read_text().split()]
        assert up.returncode == 0, up.stdout + up.stderr
        yield {"env": {**env, "RAY_AUTH_MODE": "token"}, "dashboard": f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}",
               "address": f"127.0.0.1:{env['RAY_PORT']}", "pids": pids, "head_pids": head_pids,
               "temp_dirs": temp_dirs, "token": tmp / "token"}
    finally:
        down = subprocess.run(["bash", str(REPO / "cluster/local/down.sh")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [p for p in pids if _live(p)]
        for d in temp_dirs:
            assert _processes_naming(d) == [] and _processes_marked(d) == [], d
            assert not Path(d).exists(), d
        assert not (state / "head.pids").exists() and not (state / "workers.pids").exists()


# Run by a driver with the token: the alive nodes, and a task pinned to each of them.
CLIENT = r"""
import json, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=0)
def where():
    import os
    return ray.get_runtime_context().get_node_id(), os.getpid()

ran = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
               for n in nodes], timeout=120)
print(json.dumps({"nodes": [{"id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0)} for n in nodes],
                  "ran_on": [r[0] for r in ran]}))
"""


def _soft_limit(pid: int) -> bytes:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((e for e in env if e.startswith(b"RAY_num_workers_soft_limit=")), b"")


def test_head_and_two_worker_nodes_each_run_a_task_of_a_driver_with_the_token(cluster):
    """The nodes of ``up.sh --workers 2`` (each its own temp dir, idle workers kept as the local
    instance keeps them), a driver with the token on each node, the job API behind the token."""
    temp_dirs, pids, head_pids = cluster["temp_dirs"], cluster["pids"], cluster["head_pids"]
    assert len(set(temp_dirs)) == 3 and all(Path(d).is_dir() for d in temp_dirs)
    assert all(_live(p) for p in pids)
    # The Ray client server is recorded too, though its command line names no temp dir.
    assert [p for p in head_pids if b"ray.util.client.server" in Path(f"/proc/{p}/cmdline").read_bytes()]
    # One raylet per node, each keeping 2 idle workers per CPU of its own + 2.
    raylets = {p: _soft_limit(p) for p in pids if b"/raylet" in Path(f"/proc/{p}/cmdline").read_bytes()}
    assert sorted(raylets.values()) == [b"RAY_num_workers_soft_limit=2"] + [
        b"RAY_num_workers_soft_limit=4"] * 2
    # A driver with the token sees head + 2 alive nodes and runs a task on each of them.
    run = subprocess.run([sys.executable, "-c", CLIENT, cluster["address"]], env=cluster["env"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(seen["nodes"]) == 3
    assert sorted(n["cpus"] for n in seen["nodes"]) == [0, 1, 1]
    assert seen["ran_on"] == [n["id"] for n in seen["nodes"]]
    # up.sh made the token, private to its user; with it the job API answers, without it the
    # API refuses the client.
    assert cluster["token"].stat().st_mode & 0o077 == 0
    ray_cli = [str(Path(sys.prefix) / "bin" / "ray"), "job", "list", "--address", cluster["dashboard"]]
    listed = subprocess.run(ray_cli, env=cluster["env"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    no_token = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["HOME"] = str(cluster["token"].parent / "nohome")
    denied = subprocess.run(ray_cli, env=no_token, capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0


def _submit(cluster, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.prefix) / "bin" / "ray"), "job", "submit", "--address",
                           cluster["dashboard"], "--working-dir", str(REPO), "--", *args],
                          env=cluster["env"], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def extracted(cluster, s3_server, tmp_path_factory):
    """``jobs/extract.py`` submitted to the cluster, manifest, videos and store on S3 (the
    credentials in the URIs only); the feature store a training job on the cluster reads."""
    data = synthetic_on_s3(s3_server, BUCKET, "synth", tmp_path_factory.mktemp("synth"), seed=3,
                           every_split=True)
    out = s3_server.uri(BUCKET, "features")
    job = _submit(cluster, "python", "jobs/extract.py", "--manifest", data["manifest"], "--out", out,
                  "--extractor", "tiny3d", "--flow", "dis", "--crops", "1", "--clips-per-segment", "4",
                  "--max-failed", "1")
    return {**data, "features": out, "job": job}


def test_extract_on_two_worker_nodes_with_storage_on_s3(cluster, extracted):
    job, out = extracted["job"], extracted["features"]
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "3 node(s)" in job.stdout
    assert "rgb: 11 videos written" in job.stdout and "flow: 11 videos written" in job.stdout
    # The store, read here through the same endpoint: every video once, the absent one a failure.
    for stream in ("rgb", "flow"):
        ids = fs.read_stream(out, stream, columns=["video_id"]).column("video_id").to_pylist()
        assert sorted(ids) == sorted(extracted["ids"])
    failures = fs.read_failures(out).to_pylist()
    assert {(f["video_id"], f["error_type"]) for f in failures} == {(MISSING_ID, "VideoDecodeError:missing")}
    assert fs.verify_store(out).ok
    # The worker nodes read the videos: decode tasks ran on nodes other than the head.
    submission = next(ln.split("'")[1] for ln in job.stdout.splitlines() if "Job '" in ln)
    where = subprocess.run([sys.executable, "-c", TASK_NODES, cluster["dashboard"],
                            _ray_job_id(cluster, submission)],
                           env=cluster["env"], capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    nodes = json.loads(where.stdout.strip().splitlines()[-1])
    assert nodes["decode"] and set(nodes["decode"]) - set(nodes["head"]), nodes
    # --verify as a job on the cluster, against the manifest recorded in the store.
    check = _submit(cluster, "python", "jobs/extract.py", "--verify", "--out", out, timeout=300)
    assert check.returncode == 0 and "OK: no problems found" in check.stdout, check.stdout[-3000:]


def _ray_job_id(cluster, submission_id: str) -> str:
    """The Ray job id (e.g. 02000000) of a submitted job, for the state API's task filter."""
    code = ("import sys; from ray.job_submission import JobSubmissionClient as C; "
            "print(C(sys.argv[1]).get_job_info(sys.argv[2]).job_id)")
    got = subprocess.run([sys.executable, "-c", code, cluster["dashboard"], submission_id],
                         env=cluster["env"], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout.strip().splitlines()[-1]


# Run on the cluster by the test: the nodes the training workers of a job ran on.
WORKER_NODES = r"""
import json, sys
from ray.util.state import list_actors, list_nodes
head = [n.node_id for n in list_nodes(address=sys.argv[1]) if n.is_head_node]
actors = list_actors(address=sys.argv[1], filters=[("job_id", "=", sys.argv[2])], limit=10000,
                     raise_on_missing_output=False, detail=True)
print(json.dumps({"head": head, "workers": [a.node_id for a in actors
                                            if "TrainWorker" in a.class_name]}))
"""


def test_two_worker_training_on_the_worker_nodes_with_everything_on_s3(cluster, extracted, s3_server):
    """``jobs/train.py`` submitted to the cluster: its two DDP workers, one per worker node,
    read the store on S3 (late fusion: both streams); checkpoints, predictions and the summary
    go to the run directory on S3, reached through URIs that carry the endpoint and credentials
    (no AWS settings anywhere); the run directory's URI loads the best checkpoint."""
    from reslstm import storage
    from reslstm.checkpoint import load_checkpoint
    from reslstm.reports.predictions import load_predictions

    out = s3_server.uri(BUCKET, "runs/late")
    job = _submit(cluster, "python", "jobs/train.py", "--features", extracted["features"], "--out", out,
                  "--stream", "late-product", "--workers", "2", "--epochs", "2", "--hidden", "8",
                  "--depth", "1", "--T", "3", "--batch-size", "4", "--name", "late-cluster",
                  timeout=900)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "best val top-1" in job.stdout and f"summary: s3://{BUCKET}/runs/late/summary.json" in job.stdout
    # Our lines never show the keys (Ray echoes the entrypoint, URIs and all: not ours).
    ours = "\n".join(ln for ln in job.stdout.splitlines() if "entrypoint" not in ln)
    for secret in (s3_server.secret_key, urllib.parse.quote(s3_server.secret_key, safe="")):
        assert secret not in ours
    keys = s3_server.objects(BUCKET, "runs/late")
    assert {"runs/late/summary.json", "runs/late/predictions/val.parquet",
            "runs/late/predictions/test.parquet"} <= set(keys)
    # Ray Train's run (its snapshot and the checkpoints with model.pt) under the run directory.
    assert any(k.startswith("runs/late/ray_results/late-cluster/") and k.endswith("/model.pt")
               for k in keys), keys
    summary = json.loads(storage.resolve(out).join("summary.json").read_text())
    # Recorded settings name the locations without keys or endpoint (any encoding of them).
    for secret in (s3_server.secret_key, s3_server.access_key,
                   urllib.parse.quote(s3_server.secret_key, safe="")):
        assert secret not in json.dumps(summary)
    assert summary["train_config"]["features"] == f"s3://{BUCKET}/features"
    assert summary["best_epoch"] in (1, 2) and summary["train_config"]["workers"] == 2
    assert summary["best_checkpoint"].startswith(f"s3://{BUCKET}/runs/late/ray_results/late-cluster/")
    # The predictions read back through the run directory's URI: every test video, both heads
    # and the fused one.
    table = load_predictions(out, "test")
    assert set(table.column("head").to_pylist()) == {"fused", "rgb", "flow"}
    assert table.num_rows == 3 * len(set(table.column("video_id").to_pylist())) > 0
    # The run directory's URI is a model reference (what jobs/predict.py --model takes): its
    # summary's best checkpoint is read with the run directory's endpoint and credentials.
    _, payload = load_checkpoint(out)
    assert payload["epoch"] == summary["best_epoch"]
    assert payload["model_config"]["fusion"] == "late-product"
    submission = next(ln.split("'")[1] for ln in job.stdout.splitlines() if "Job '" in ln)
    where = subprocess.run([sys.executable, "-c", WORKER_NODES, cluster["dashboard"],
                            _ray_job_id(cluster, submission)],
                           env=cluster["env"], capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    nodes = json.loads(where.stdout.strip().splitlines()[-1])
    assert len(nodes["workers"]) >= 2, nodes
    assert len(set(nodes["workers"])) == 2 and not set(nodes["workers"]) & set(nodes["head"]), nodes
