"""Extraction with the manifest, the videos and the feature store all on S3 (the local moto
server; credentials only in the URIs): a run writes the same features as a run on a local
disk; a video missing from the bucket is a ``VideoDecodeError:missing`` row; ``--verify``
reads the store and its recorded manifest through the same endpoint; a rerun adds nothing;
other settings are refused; no secret lands in the store. The store's lock on object storage:
a second writer is refused while the first holds the lease, racing writers never overlap, a
killed holder's marker stops counting (at once on this host, after its expiry elsewhere), and
a holder that cannot renew stops committing. Then a run killed with SIGKILL mid-way and
``jobs/extract.py`` on Ray with the same store, from a process without AWS settings: each
video exactly once, and nothing written to the local disk."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from reslstm import features as fs
from reslstm import storage
from reslstm.configs import ExtractConfig
from reslstm.extraction.driver import read_manifest, run_local
from reslstm.features import StoreError
from reslstm.features import store as store_module
from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)
from s3_videos import synthetic_on_s3

REPO = Path(__file__).resolve().parents[1]
BUCKET = "extract-tests"
OPTIONS = {"extractor": "tiny3d", "flow": "dis", "crops": 1, "clips_per_segment": 4,
           "max_failed": 1.0}


def _no_aws_env() -> dict:
    """This environment without AWS settings: credentials must come from the URIs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@pytest.fixture(scope="module")
def data(s3_server, tmp_path_factory):
    """The synthetic set (1 video per class) and its manifest on S3, plus a listed video that
    is not there; the same videos and manifest on the local disk, for comparison."""
    return synthetic_on_s3(s3_server, BUCKET, "synth", tmp_path_factory.mktemp("s3data") / "synth")


def _features(store) -> dict:
    out = {}
    for stream in ("rgb", "flow"):
        t = fs.read_stream(store, stream, columns=["video_id", "features"])
        out[stream] = dict(zip(t.column("video_id").to_pylist(), fs.features_to_numpy(t.column("features"))))
    return out


@pytest.fixture(scope="module")
def local_reference(data, tmp_path_factory):
    """The same videos extracted from and into the local disk."""
    out = tmp_path_factory.mktemp("ref") / "store"
    run_local(ExtractConfig(manifest=str(data["local_manifest"]), out=str(out), **OPTIONS))
    return _features(out)


@pytest.mark.integration
def test_local_run_on_s3_writes_what_a_local_disk_run_writes(data, local_reference, s3_server, tmp_path):
    out = s3_server.uri(BUCKET, "single")
    s = run_local(ExtractConfig(manifest=data["manifest"], out=out, **OPTIONS))
    assert s.written == {"rgb": 11, "flow": 11}
    assert s.failed == {"VideoDecodeError:missing": 2}  # the absent video, for each stream
    got = _features(out)
    for stream in ("rgb", "flow"):
        assert set(got[stream]) == data["ids"]
        for vid, feats in local_reference[stream].items():
            np.testing.assert_array_equal(got[stream][vid], feats)
    fail = fs.read_failures(out).to_pylist()
    assert {(f["stream"], f["stage"], f["error_type"], f["path"]) for f in fail} == {
        (s, "decode", "VideoDecodeError:missing", f"s3://{BUCKET}/synth/videos/gone/gone_000.mp4")
        for s in ("rgb", "flow")}
    # --verify, reading the recorded manifest through the store's endpoint and credentials.
    from jobs.extract import main

    assert main(["--verify", "--out", out]) == 0
    # A rerun adds nothing; other settings are refused, naming the difference.
    again = run_local(ExtractConfig(manifest=data["manifest"], out=out, **OPTIONS))
    assert again.written == {} and again.skipped_done == 22 and again.skipped_failed == 2
    with pytest.raises(StoreError, match="clip_stride: store has 8, requested 4"):
        run_local(ExtractConfig(manifest=data["manifest"], out=out, **{**OPTIONS, "clip_stride": 4}))
    for stream in ("rgb", "flow"):
        assert fs.read_stream(out, stream, columns=["video_id"]).num_rows == 11
    # The store holds no secret and no endpoint: what it records is the plain s3:// URI.
    for key in s3_server.objects(BUCKET, "single"):
        body = s3_server.filesystem().open_input_stream(f"{BUCKET}/{key}").read()
        assert s3_server.secret_key.encode() not in body and s3_server.access_key.encode() not in body
        assert b"127.0.0.1" not in body
    meta = json.loads(storage.resolve(out).join("metadata.json").read_text())
    assert meta["manifest"] == f"s3://{BUCKET}/synth/manifest.parquet"
    assert not s3_server.objects(BUCKET, "single/_lock")  # the lease is gone with its job


# ---------------------------------------------------------------------------------------------
# One writer at a time on object storage: the lease
# ---------------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_while_the_first_holds_the_store(data, s3_server):
    out = s3_server.uri(BUCKET, "locked")
    first = fs.FeatureStore(out)
    with first.lock():
        markers = s3_server.objects(BUCKET, "locked/_lock")
        assert len(markers) == 1
        doc = json.loads(s3_server.filesystem().open_input_stream(f"{BUCKET}/{markers[0]}").read())
        assert doc["pid"] == os.getpid() and doc["expires"] > time.time() + 60
        with pytest.raises(StoreError, match="being written by another extraction job"):
            with fs.FeatureStore(out).lock():
                pass
        with pytest.raises(StoreError, match="being written by another extraction job"):
            run_local(ExtractConfig(manifest=data["manifest"], out=out, **OPTIONS))
        assert s3_server.objects(BUCKET, "locked/_lock") == markers  # the refused left no marker
    assert s3_server.objects(BUCKET, "locked/_lock") == []
    with fs.FeatureStore(out).lock():  # free again
        pass


def test_racing_writers_never_hold_the_store_together(s3_server):
    out = s3_server.uri(BUCKET, "race")
    held, refused, lock = [], [], threading.Lock()
    start = threading.Barrier(4)

    def writer(i):
        start.wait()
        try:
            with fs.FeatureStore(out).lock():
                t0 = time.monotonic()
                time.sleep(0.8)
                with lock:
                    held.append((t0, time.monotonic()))
        except StoreError:
            refused.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) + len(refused) == 4 and held
    spans = sorted(held)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two at once


HOLDER = """
import sys, time
from reslstm import features as fs
with fs.FeatureStore(sys.argv[1]).lock():
    print("HELD", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_on_this_host_frees_the_store_at_once(s3_server):
    out = s3_server.uri(BUCKET, "killed-holder")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, out], env=_no_aws_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(StoreError):
            with fs.FeatureStore(out).lock():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert len(s3_server.objects(BUCKET, "killed-holder/_lock")) == 1  # its marker is still there
    with fs.FeatureStore(out).lock():  # but its writer has ended: stale, removed
        assert len(s3_server.objects(BUCKET, "killed-holder/_lock")) == 1


def test_another_hosts_marker_counts_until_it_expires(s3_server):
    out = s3_server.uri(BUCKET, "other-host")
    marker = storage.resolve(out).join("_lock", f"{time.time_ns():020d}-elsewhere.json")
    marker.write_text(json.dumps({"host": "another-node", "pid": 1, "expires": time.time() + 4}))
    with pytest.raises(StoreError, match="expires"):
        with fs.FeatureStore(out).lock():
            pass
    time.sleep(max(0.0, 4.2 - 2.5))  # the refusal itself took ~1-2 s of retries
    while json.loads(marker.read_text())["expires"] > time.time():
        time.sleep(0.2)
    with fs.FeatureStore(out).lock():
        assert not marker.exists()


def test_a_holder_that_cannot_renew_stops_committing(s3_server, monkeypatch):
    out = s3_server.uri(BUCKET, "renew")
    store = fs.FeatureStore(out)
    with store.lock():
        store.check_lock()  # just renewed: fine
        store._lease.renewed -= store_module.LEASE_S  # as if renewals failed for a whole lease
        with pytest.raises(StoreError, match="could not renew its lease"):
            store.check_lock()
        # The writer checks before every commit.
        from reslstm.extraction.writer import StoreWriter
        from reslstm.features import StreamSettings

        settings = {"rgb": StreamSettings("tiny3d", "random-init", 4, 16, 8, 1, 64, 72)}
        writer = StoreWriter(store, settings, run_id="x")
        writer.failures.append({"video_id": "v", "stream": "rgb", "path": "p", "stage": "decode",
                                "error_type": "E", "message": "m", "run_id": "x"})
        with pytest.raises(StoreError, match="could not renew"):
            writer.flush()
    assert s3_server.objects(BUCKET, "renew/failures") == []
    fs.FeatureStore(out).check_lock()  # a store that holds no lease has nothing to check


# ---------------------------------------------------------------------------------------------
# Killed mid-run, then the same command again; nothing on the local disk
# ---------------------------------------------------------------------------------------------

CHILD = """
import json, sys
from reslstm.configs import ExtractConfig
from reslstm.extraction.driver import read_manifest, run_local
run_local(ExtractConfig(**json.loads(sys.argv[1])))
"""


@pytest.mark.integration
def test_resume_after_sigkill_on_s3_writes_each_video_once_and_nothing_locally(
        data, local_reference, s3_server, tmp_path, request):
    """Killed with SIGKILL once rows are committed (its lease marker left behind), then
    ``jobs/extract.py`` on Ray with the same store, from a process without AWS settings: the
    Ray workers read the videos with the credentials of the URI."""
    out = s3_server.uri(BUCKET, "resume")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # The jobs run in an empty directory with a TMPDIR of their own (the Ray session of the
    # rerun goes there; a short path: Ray's socket paths must fit in 107 bytes).
    tmp = Path(tempfile.mkdtemp(prefix="s3t-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    env = {**_no_aws_env(), "TMPDIR": str(tmp)}
    cfg = {"manifest": data["manifest"], "out": out, "rows_per_file": 1, **OPTIONS}
    job = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg)], env=env, cwd=cwd,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(s3_server.objects(BUCKET, "resume/rgb") + s3_server.objects(BUCKET, "resume/flow")) < 3 \
                and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        running = job.poll() is None
        job.kill()  # SIGKILL
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
    assert running, "the job ended before rows were committed: " + job.stdout.read()[-3000:]
    before = {s: fs.written_ids(out, s) for s in ("rgb", "flow")}
    assert 0 < sum(map(len, before.values())) < 22
    again = subprocess.run([sys.executable, str(REPO / "jobs" / "extract.py"), "--manifest",
                            data["manifest"], "--out", out, "--extractor", "tiny3d", "--flow", "dis",
                            "--crops", "1", "--clips-per-segment", "4", "--max-failed", "1"],
                           env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "a local Ray instance" in again.stdout
    for stream in ("rgb", "flow"):
        ids = fs.read_stream(out, stream, columns=["video_id"]).column("video_id").to_pylist()
        assert sorted(ids) == sorted(data["ids"])  # exact: nothing lost, nothing twice
        assert f"{stream}: {11 - len(before[stream])} videos written" in again.stdout
    got = _features(out)
    for stream in ("rgb", "flow"):
        for vid, feats in local_reference[stream].items():
            np.testing.assert_allclose(got[stream][vid], feats, rtol=1e-5, atol=1e-6)
    assert fs.verify_store(out, read_manifest(data["manifest"])).ok
    assert list(cwd.iterdir()) == []
    # Nothing on the local disk: the working directory is still empty, and TMPDIR holds no
    # file outside Ray's session directory (a library's empty cache folder or a socket of
    # multiprocessing are no files).
    assert [str(p) for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()
            and p.relative_to(tmp).parts[0] != "ray"] == []
