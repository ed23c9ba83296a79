"""Extraction that survives real datasets: every kind of bad input in one manifest through one
Ray run (each video written, with its padded/warning flags, or recorded as a failure with its
stage and error type), a 10-minute video streamed in segments, resume after the driver is
killed with SIGKILL, ``--verify`` catching a corrupted row, and ``--overwrite`` replacing a
stream; and a pipeline that dies of a cluster failure running again on what is unfinished.
Every video is generated here with PyAV, a few frames each. A file without read permission is
unreadable to root too when the extraction runs under ``setpriv`` without CAP_DAC_OVERRIDE."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reslstm import features as fs
from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest
from reslstm.sampling import num_clips
from reslstm.video.decoding import VideoDecodeError, VideoReader

import ray

from reslstm.configs import ExtractConfig
from reslstm.extraction.driver import run_local
from reslstm.extraction.settings import ExtractError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SIZE = 72  # tiny3d's short side: every video is decoded to it
MIN_RATIO = 0.9  # --min-frame-ratio (the default)

# The extraction runs in a child process (a user's driver): it starts its own local Ray with 2
# CPUs and prints its summary as JSON on the last line.
CHILD = """
import json, sys
import ray
from reslstm.cli import setup_console
from reslstm.configs import ExtractConfig
from reslstm.distributed.extract.job import run_extraction
setup_console()  # the summary a job prints
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
s = run_extraction(ExtractConfig(**json.loads(sys.argv[1])))
print("SUMMARY " + json.dumps({"written": s.written, "failed": s.failed, "warnings": s.warnings}))
"""


LOCAL_CHILD = """
import json, sys
from reslstm.configs import ExtractConfig
from reslstm.extraction.driver import run_local
run_local(ExtractConfig(**json.loads(sys.argv[1])))
"""


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def config(manifest, out, **kw) -> dict:
    # max_failed 1: these runs fail videos on purpose (the threshold has tests of its own).
    return {"manifest": str(manifest), "out": str(out), "extractor": "tiny3d", "flow": "dis",
            "crops": 1, "clips_per_segment": 4, "min_frame_ratio": MIN_RATIO, "max_failed": 1.0,
            **kw}


def summary_of(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("SUMMARY "):])


# ---------------------------------------------------------------------------------------------
# Generated videos
# ---------------------------------------------------------------------------------------------

def pattern(n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8: gradients moving at different speeds per channel and a bright block
    in the top-left corner, so that both motion and orientation show in the features."""
    yy = np.arange(h, dtype=np.int32)[:, None]
    xx = np.arange(w, dtype=np.int32)[None, :]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (xx * 255 // max(w - 1, 1) + 3 * i) % 256
        out[i, ..., 1] = (yy * 255 // max(h - 1, 1) + 5 * i) % 256
        out[i, ..., 2] = ((xx + yy + 7 * i) * 2) % 256
        out[i, : h // 4, : w // 3] = 255
    return out


def encode(path: Path, frames, codec="libx264", pix_fmt="yuv420p", container_options=None,
           codec_options=None, rotation=None) -> Path:
    """Encode (n, h, w, 3) uint8 RGB frames (any iterable) into ``path`` with PyAV."""
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=25, options=codec_options or {})
        stream.pix_fmt = pix_fmt
        for i, frame in enumerate(frames):
            if i == 0:
                stream.height, stream.width = frame.shape[:2]
                if rotation is not None:
                    stream.set_display_rotation(rotation)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def count_frames(path: Path) -> tuple[int | None, int]:
    """(decoded, declared) frames, by decoding twice (the same both times), or (None, 0) when
    decoding raises."""
    counts = set()
    for _ in range(2):
        reader = VideoReader(path, short_side=SIZE, min_frame_ratio=None)
        try:
            counts.add((sum(1 for _ in reader), reader.declared_frames))
        except VideoDecodeError:
            counts.add((None, 0))
    assert len(counts) == 1, f"{path}: decoding is not deterministic: {counts}"
    return counts.pop()


def flipped(src: Path, dst: Path, accept) -> tuple[int, int]:
    """Flip two random bits of ``src`` into ``dst``, trying seeds until the damaged file decodes
    without an error but to fewer frames than it declares, in the range ``accept(n, declared)``
    asks for (the flips that hit the index drop frames silently). Returns (decoded, declared)."""
    data = src.read_bytes()
    for seed in range(500):
        rng = np.random.default_rng(seed)
        damaged = bytearray(data)
        for offset in rng.integers(0, len(damaged), 2):
            damaged[offset] ^= 1 << int(rng.integers(0, 8))
        dst.write_bytes(bytes(damaged))
        n, declared = count_frames(dst)
        if n is not None and n < declared and accept(n, declared):
            return n, declared
    raise AssertionError(f"no seed found that damages {src} as wanted")


def unreadable_runner(tmp: Path):
    """How to run a child process for which a chmod 000 file is unreadable, or None.

    An ordinary user simply cannot read it. Root reads it anyway (CAP_DAC_OVERRIDE), so as root
    the child runs under ``setpriv`` without the two capabilities that bypass file modes: the
    kernel then refuses the read exactly as it would for any user.
    """
    probe = tmp / "locked.bin"
    probe.write_bytes(b"x")
    probe.chmod(0)
    test = [sys.executable, "-c", f"open({str(probe)!r}).read()"]
    candidates = [[]]
    if shutil.which("setpriv"):
        candidates.append(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"])
    for prefix in candidates:
        run = subprocess.run(prefix + test, capture_output=True, text=True)
        if run.returncode != 0 and "PermissionError" in run.stderr:
            return prefix
    return None


# What each file must give, per stream: ("ok", padded, warning) or ("fail", stage, error_type).
OK = ("ok", False, False)
PADDED = ("ok", True, False)


def fail(kind, stage="decode"):
    return ("fail", stage, f"VideoDecodeError:{kind}")


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """One manifest with every kind of input, extracted in one run of the Ray pipeline."""
    root = tmp_path_factory.mktemp("robust")
    v = root / "videos"
    v.mkdir()
    os.chmod(v, 0o755)
    frames = pattern(40, 48, 64)
    files, expect = {}, {}

    def add(name, path, rgb, flow=None):
        files[name], expect[name] = Path(path), {"rgb": rgb, "flow": flow or rgb}

    # Good files in other codecs and containers, and odd pixel formats.
    add("h264_mp4", encode(v / "h264.mp4", frames), OK)
    add("vp9_webm", encode(v / "vp9.webm", frames, codec="libvpx-vp9",
                           codec_options={"deadline": "realtime", "cpu-used": "8"}), OK)
    add("mpeg4_avi", encode(v / "mpeg4.avi", frames, codec="mpeg4"), OK)
    add("h264_mkv", encode(v / "h264.mkv", frames), OK)
    add("yuv444", encode(v / "yuv444.mp4", frames, pix_fmt="yuv444p"), OK)
    add("yuv420p10", encode(v / "yuv420p10.mp4", frames, pix_fmt="yuv420p10le"), OK)
    # Large frames, a few of them: decoded straight to the working size.
    fast = {"preset": "ultrafast"}
    add("hd_1080p", encode(v / "hd.mp4", pattern(5, 1080, 1920), codec_options=fast), PADDED)
    add("uhd_4k", encode(v / "uhd.mp4", pattern(3, 2160, 3840), codec_options=fast), PADDED)
    # Shorter than one clip; a single frame has no optical flow.
    add("short_10", encode(v / "short.mp4", frames[:10]), PADDED)
    add("one_frame", encode(v / "one.mp4", frames[:1]), PADDED,
        ("fail", "flow", "TooShortForFlow:too_short_for_flow"))
    # Rotation: stored 96 x 128 with a display rotation of 90 degrees is upright 128 x 96; the
    # same upright frames stored as such, and the stored frames without the rotation, compare.
    upright = pattern(24, 128, 96)
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))  # (24, 96, 128, 3)
    add("rotated_90", encode(v / "rotated.mp4", stored, rotation=90), OK)
    add("upright_ref", encode(v / "upright.mp4", upright), OK)
    add("sideways_ref", encode(v / "sideways.mp4", stored), OK)
    # Broken files.
    (v / "empty.mp4").write_bytes(b"")
    add("empty", v / "empty.mp4", fail("empty"))
    (v / "random.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    add("random_bytes", v / "random.mp4", fail("not_a_video"))
    (v / "text.mp4").write_text("this is a text file with a video name\n" * 20)
    add("text_as_mp4", v / "text.mp4", fail("not_a_video"))
    whole = encode(root / "moov_end.mp4", frames).read_bytes()
    assert whole.find(b"moov") > whole.find(b"mdat")  # the default: index at the end
    (v / "cut_index_end.mp4").write_bytes(whole[: len(whole) // 2])
    add("cut_index_end", v / "cut_index_end.mp4", fail("truncated"))
    front = encode(root / "moov_front.mp4", frames,
                   container_options={"movflags": "faststart"}).read_bytes()
    assert front.find(b"moov") < front.find(b"mdat")
    (v / "cut_index_front.mp4").write_bytes(front[: len(front) // 2])  # decodes part-way
    assert 0 < count_frames(v / "cut_index_front.mp4")[0] < MIN_RATIO * 40
    add("cut_index_front", v / "cut_index_front.mp4", fail("too_few_frames"))
    zeroed = bytearray(front)
    zeroed[len(zeroed) // 2: len(zeroed) // 2 + len(zeroed) // 10] = bytes(len(zeroed) // 10)
    (v / "zeroed.mp4").write_bytes(bytes(zeroed))
    add("zeroed_middle", v / "zeroed.mp4", fail("corrupt"))
    warn_n, declared = flipped(root / "moov_end.mp4", v / "flips_warn.mp4",
                               lambda n, d: n >= MIN_RATIO * d)
    add("flips_warning", v / "flips_warn.mp4", ("ok", False, True))
    flipped(root / "moov_end.mp4", v / "flips_fail.mp4", lambda n, d: 0 < n < MIN_RATIO * d)
    add("flips_too_few", v / "flips_fail.mp4", fail("too_few_frames"))
    with av.open(str(v / "audio.m4a"), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    add("audio_only", v / "audio.m4a", fail("no_video_stream"))
    add("missing", v / "does_not_exist.mp4", fail("missing"))
    runner = unreadable_runner(root)
    if runner is not None:
        shutil.copy(v / "h264.mp4", v / "locked.mp4")
        (v / "locked.mp4").chmod(0)
        add("unreadable", v / "locked.mp4", fail("permission"))

    rows = [{"video_id": name, "path": str(path), "label": i % 3, "label_name": f"c{i % 3}",
             "split": "train"} for i, (name, path) in enumerate(files.items())]
    manifest = write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA),
                              root / "manifest.parquet")
    out = root / "store"
    run = subprocess.run((runner or []) + [sys.executable, "-c", CHILD,
                                           json.dumps(config(manifest, out))],
                         env=child_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {"root": root, "out": out, "manifest": manifest, "files": files, "expect": expect,
            "printed": run.stdout, "summary": summary_of(run.stdout), "runner": runner,
            "warn": (warn_n, declared)}


def test_every_input_is_written_or_recorded_with_its_stage_and_type(bad_inputs):
    out, expect = bad_inputs["out"], bad_inputs["expect"]
    failures = {(f["video_id"], f["stream"]): f for f in fs.read_failures(out).to_pylist()}
    for stream in ("rgb", "flow"):
        rows = {r["video_id"]: r for r in fs.read_stream(out, stream).drop(["features"]).to_pylist()}
        for name, want in expect.items():
            want = want[stream]
            if want[0] == "ok":
                assert name in rows and (name, stream) not in failures, (name, stream, failures.get((name, stream)))
                row = rows[name]
                assert (row["padded"], row["warning"] is not None) == want[1:], (name, stream, row)
                assert row["num_clips"] == num_clips(row["num_frames"], 16, 8)
            else:
                assert name not in rows, (name, stream)
                f = failures[(name, stream)]
                assert (f["stage"], f["error_type"]) == want[1:], (name, stream, f)
                assert str(bad_inputs["files"][name]) in f["message"]
    assert len(failures) == sum(w[s][0] == "fail" for w in expect.values() for s in ("rgb", "flow"))


def test_frame_counts_flags_and_warning_text(bad_inputs):
    out = bad_inputs["out"]
    rgb = {r["video_id"]: r for r in fs.read_stream(out, "rgb").drop(["features"]).to_pylist()}
    flow = {r["video_id"]: r for r in fs.read_stream(out, "flow").drop(["features"]).to_pylist()}
    for name, n in [("h264_mp4", 40), ("vp9_webm", 40), ("mpeg4_avi", 40), ("h264_mkv", 40),
                    ("yuv444", 40), ("yuv420p10", 40), ("hd_1080p", 5), ("uhd_4k", 3),
                    ("short_10", 10), ("rotated_90", 24)]:
        assert (rgb[name]["num_frames"], flow[name]["num_frames"]) == (n, n - 1), name
    assert (rgb["short_10"]["num_clips"], flow["short_10"]["num_clips"]) == (1, 1)
    assert (rgb["one_frame"]["num_frames"], rgb["one_frame"]["num_clips"]) == (1, 1)
    n, declared = bad_inputs["warn"]
    for rows in (rgb, flow):
        assert rows["flips_warning"]["warning"] == f"decoded {n} of {declared} frames the container declares"
    assert rgb["flips_warning"]["num_frames"] == n


def test_summary_counts_failures_by_type(bad_inputs):
    expect = bad_inputs["expect"]
    want = Counter(w[s][2] for w in expect.values() for s in ("rgb", "flow") if w[s][0] == "fail")
    got = bad_inputs["summary"]
    assert got["failed"] == dict(want)
    written = {s: sum(w[s][0] == "ok" for w in expect.values()) for s in ("rgb", "flow")}
    assert got["written"] == written and got["warnings"] == 2
    printed = bad_inputs["printed"]
    for error_type, n in want.items():
        assert re.search(rf"^\s+{n}\s+{re.escape(error_type)}$", printed, re.M), error_type
    assert f"failed: {sum(want.values())} (failures table:" in printed
    report = fs.verify_store(bad_inputs["out"], pq.read_table(bad_inputs["manifest"]))
    assert report.ok, report.text()


def test_rotated_video_is_extracted_upright(bad_inputs):
    """The rotated file's features match those of the same picture stored upright, and not
    those of the stored (sideways) frames: the pipeline saw upright frames."""
    out = bad_inputs["out"]
    for stream in ("rgb", "flow"):
        table = fs.read_stream(out, stream)
        feats = dict(zip(table.column("video_id").to_pylist(),
                         fs.features_to_numpy(table.column("features"))))
        rot, up, side = feats["rotated_90"], feats["upright_ref"], feats["sideways_ref"]
        assert rot.shape[0] == up.shape[0] == side.shape[0] == (2 if stream == "rgb" else 1)
        assert np.linalg.norm(rot - up) < 0.5 * np.linalg.norm(rot - side), stream


def test_unreadable_file(bad_inputs):
    if bad_inputs["runner"] is None:
        pytest.skip("no way here to make a file unreadable to the extraction: running as root "
                    "(chmod 000 does not stop root) without setpriv to drop CAP_DAC_OVERRIDE")
    f = [r for r in fs.read_failures(bad_inputs["out"]).to_pylist() if r["video_id"] == "unreadable"]
    assert sorted((r["stream"], r["error_type"]) for r in f) == [
        ("flow", "VideoDecodeError:permission"), ("rgb", "VideoDecodeError:permission")]
    assert all("permission denied" in r["message"] for r in f)


def test_4k_frames_are_decoded_straight_to_the_working_size(bad_inputs):
    """Never a full-size RGB frame in memory: the scaled frame comes out of swscale."""
    path = bad_inputs["files"]["uhd_4k"]
    tracemalloc.start()
    try:
        shapes = {f.shape for f in VideoReader(path, short_side=SIZE)}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shapes == {(SIZE, 128, 3)}
    assert peak < 3840 * 2160 * 3 // 10  # a tenth of one 4K RGB frame


# ---------------------------------------------------------------------------------------------
# Long videos: segments of clips, joined back in order
# ---------------------------------------------------------------------------------------------

def long_frames(n: int, h: int = 48, w: int = 64):
    """Frames of a long video, one at a time (the video never sits in memory whole)."""
    yy = np.arange(h, dtype=np.int32)[:, None]
    xx = np.arange(w, dtype=np.int32)[None, :]
    for i in range(n):
        frame = np.empty((h, w, 3), np.uint8)
        frame[..., 0] = (xx * 4 + i) % 256
        frame[..., 1] = (yy * 5 + 2 * i) % 256
        frame[..., 2] = ((xx + yy) * 3 + i // 5) % 256
        yield frame


def test_a_long_video_and_segments_equal_one_pass(ray_local, tmp_path):
    """A one-minute video (1500 frames: 186 clips in 6 segments of 32) comes back whole, its
    clips counted as sampling counts them; a short one cut into 4 segments equals one pass.
    (Memory against video length, up to 20 minutes: benchmarks/memory.py.)"""
    import torch

    from reslstm.distributed.extract.job import run_extraction
    from reslstm.extractors import clip_features, create_extractor
    from reslstm.flow.methods import compute_flow, quantize_flow
    from reslstm.video.decoding import read_frames

    long = encode(tmp_path / "one_minute.mp4", long_frames(60 * 25),
                  codec_options={"preset": "ultrafast"})
    short = encode(tmp_path / "short.mp4", pattern(100, 48, 64))
    for path, per_segment in ((long, 32), (short, 3)):  # the short video: 11 clips in 4 segments
        manifest = write_manifest(pa.Table.from_pylist(
            [{"video_id": path.stem, "path": str(path), "label": 0, "label_name": "c",
              "split": "train"}], schema=MANIFEST_SCHEMA), tmp_path / f"{path.stem}.parquet")
        cfg = ExtractConfig(**config(manifest, tmp_path / "store", clips_per_segment=per_segment))
        with redirect_stdout(io.StringIO()):
            summary = run_extraction(cfg)
        assert summary.written == {"rgb": 1, "flow": 1} and not summary.failed
    got = {}
    for stream, n in (("rgb", 1500), ("flow", 1499)):
        table = fs.read_stream(tmp_path / "store", stream)
        rows = {r["video_id"]: r for r in table.drop(["features"]).to_pylist()}
        assert (rows["one_minute"]["num_frames"], rows["one_minute"]["num_clips"]) == (n, num_clips(n, 16, 8))
        got[stream] = dict(zip(table.column("video_id").to_pylist(),
                               fs.features_to_numpy(table.column("features"))))
    assert len(got["rgb"]["one_minute"]) == 186 and np.isfinite(got["rgb"]["one_minute"]).all()

    # The short video in one pass: all frames, all clips at once.
    frames = read_frames(short, short_side=SIZE)
    for stream, data in (("rgb", frames), ("flow", quantize_flow(compute_flow(frames, "dis")))):
        extractor = create_extractor("tiny3d", stream).eval()
        whole = clip_features(extractor, data, 16, 8, 1, 32, torch.device("cpu"))
        assert whole.shape == got[stream]["short"].shape == (num_clips(len(data), 16, 8),
                                                             extractor.feature_dim)
        np.testing.assert_allclose(got[stream]["short"], whole, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Resume exactly once after the driver is killed; --verify; --overwrite
# ---------------------------------------------------------------------------------------------

def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "extract.py"), *map(str, args)],
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A job killed with SIGKILL once some rows are committed, then the same command again."""
    from reslstm.datasets.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("resume")
    manifest = generate_synthetic(root / "synth", videos_per_class=1, seed=4)
    ids = set(pq.read_table(manifest).column("video_id").to_pylist())
    out = root / "store"
    # Two rows per part file: rows are committed all along the job. The killed job runs the
    # stages in its own process (``run_local``: the same driver, writer and store, no Ray to
    # start); the rerun is the command on Ray. (A job on Ray that loses part of its cluster:
    # test_extract_cluster; a killed driver on Ray resuming: test_tune_resume.)
    job = subprocess.Popen([sys.executable, "-c", LOCAL_CHILD, json.dumps(config(manifest, out, rows_per_file=2))],
                           env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not fs.stream_files(out, "rgb") and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        running = job.poll() is None
        job.kill()  # SIGKILL to the driver alone
        job.wait(timeout=30)
    finally:
        # The local Ray the driver started, in the driver's process group, goes too.
        with_group = subprocess.run(["pgrep", "-g", str(job.pid)], capture_output=True, text=True)
        if with_group.stdout.strip():
            os.killpg(job.pid, signal.SIGKILL)
    assert running, "the job ended before any row was committed; it cannot be killed mid-job"
    before = {s: fs.written_ids(out, s) for s in ("rgb", "flow")}
    # Every committed file is whole (only hidden temporaries can be partial).
    for s in ("rgb", "flow"):
        for f in fs.stream_files(out, s):
            assert pq.read_table(f).num_rows > 0
    again = _cli("--manifest", manifest, "--out", out, "--extractor", "tiny3d", "--flow", "dis",
                 "--crops", 1, "--clips-per-segment", 4)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return {"out": out, "manifest": manifest, "ids": ids, "before": before, "rerun": again.stdout}


def test_resume_after_sigkill_writes_each_video_exactly_once(killed_and_resumed):
    k = killed_and_resumed
    before, ids = k["before"], k["ids"]
    assert 0 < len(before["rgb"]) < len(ids)  # killed mid-job, with rows committed
    for stream in ("rgb", "flow"):
        table = fs.read_stream(k["out"], stream, columns=["video_id"])
        assert table.num_rows == len(ids)  # exact: nothing lost, nothing twice
        assert set(table.column("video_id").to_pylist()) == ids
        # The rerun extracted exactly the videos the killed job had not committed.
        assert f"{stream}: {len(ids) - len(before[stream])} videos written" in k["rerun"]
    assert f"skipped: {len(before['rgb']) + len(before['flow'])} already extracted" in k["rerun"]
    assert fs.read_failures(k["out"]).num_rows == 0
    report = fs.verify_store(k["out"], pq.read_table(k["manifest"]))
    assert report.ok, report.text()


def test_verify_cli_passes_then_catches_a_corrupted_row(killed_and_resumed, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(killed_and_resumed["out"], out)
    ok = _cli("--verify", "--out", out, "--manifest", killed_and_resumed["manifest"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    n = len(killed_and_resumed["ids"])
    assert "OK: no problems found" in ok.stdout and f"rgb: {n} rows, 0 recorded failures" in ok.stdout

    # One video's features get a NaN, rewritten in place as a (valid) Parquet file.
    path = Path(fs.stream_files(out, "rgb")[0])
    table = pq.read_table(path)
    feats = fs.features_to_numpy(table.column("features"))
    feats[0] = feats[0].copy()
    feats[0][0, 0] = np.nan
    table = table.set_column(table.schema.get_field_index("features"), "features",
                             fs.features_to_arrow(feats, feats[0].shape[1]))
    pq.write_table(table, path)
    bad = _cli("--verify", "--out", out, "--manifest", killed_and_resumed["manifest"])
    assert bad.returncode == 1, bad.stdout + bad.stderr
    vid = table.column("video_id")[0].as_py()
    assert f"rgb/{vid} ({path.name}): non-finite features" in bad.stdout
    assert "1 problem(s)" in bad.stdout


def test_overwrite_replaces_the_stream(tmp_path):
    from reslstm.datasets.synthetic import generate_synthetic

    synth = pq.read_table(generate_synthetic(tmp_path / "synth", videos_per_class=1, seed=6))
    rows = synth.select(MANIFEST_SCHEMA.names).to_pylist()[:3]
    rows.append({**rows[0], "video_id": "gone", "path": str(tmp_path / "gone.mp4")})
    manifest = write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "m.parquet")
    out = tmp_path / "store"
    with redirect_stdout(io.StringIO()):
        run_local(ExtractConfig(**config(manifest, out, streams=("rgb",))))
        old_files = fs.stream_files(out, "rgb")
        old = fs.read_stream(out, "rgb").sort_by("video_id")
        second = run_local(ExtractConfig(**config(manifest, out, streams=("rgb",), clip_stride=4,
                                                  overwrite=True)))
    assert second.written == {"rgb": 3} and second.skipped_done == 0
    new = fs.read_stream(out, "rgb").sort_by("video_id")
    assert new.num_rows == 3 and not set(old_files) & set(fs.stream_files(out, "rgb"))
    assert fs.read_metadata(out)["rgb"].clip_stride == 4
    for a, b in zip(old.to_pylist(), new.to_pylist()):
        assert a["video_id"] == b["video_id"] and a["num_frames"] == b["num_frames"]
        assert b["num_clips"] == num_clips(b["num_frames"], 16, 4) > a["num_clips"]
    # The stream's old failure is gone with it; the new run recorded its own, once.
    fails = fs.read_failures(out, current_only=False).to_pylist()
    assert [(f["video_id"], f["run_id"]) for f in fails] == [("gone", fails[0]["run_id"])]
    assert fs.verify_store(out, pq.read_table(manifest)).ok


def test_cluster_failure_reruns_only_the_unfinished_pairs(ray_local, tmp_path, monkeypatch):
    """A pipeline that dies of a cluster failure (here: a node, after 3 rows) runs again on what
    is not finished; a failure of another kind is not retried."""
    import reslstm.distributed.extract.job as ex
    from reslstm.datasets.synthetic import generate_synthetic

    synth = pq.read_table(generate_synthetic(tmp_path / "synth", videos_per_class=1, seed=8))
    manifest = write_manifest(synth.select(MANIFEST_SCHEMA.names).slice(0, 4), tmp_path / "m.parquet")
    real, calls = ex.build_pipeline, []

    def dies_once(error):
        def build(todo, *args, **kwargs):
            calls.append(len(todo))
            ds = real(todo, *args, **kwargs)
            if len(calls) > 1:
                return ds

            class Dying:
                def iter_batches(self, **kw):
                    for i, batch in enumerate(ds.iter_batches(**kw)):
                        if i == 3:
                            raise error
                        yield batch
            return Dying()
        return build

    # One segment per (video, stream): 3 rows = 3 pairs finished before the node goes.
    monkeypatch.setattr(ex, "build_pipeline", dies_once(ray.exceptions.NodeDiedError("node 1 died")))
    buf = io.StringIO()
    with redirect_stdout(buf):
        summary = ex.run_extraction(ExtractConfig(**config(manifest, tmp_path / "store", clips_per_segment=32)))
    assert calls == [8, 5]
    assert "NodeDiedError: node 1 died); running it again on the 5 unfinished" in buf.getvalue()
    assert summary.written == {"rgb": 4, "flow": 4} and not summary.failed
    assert fs.verify_store(tmp_path / "store", pq.read_table(manifest)).ok

    calls.clear()
    monkeypatch.setattr(ex, "build_pipeline", dies_once(ValueError("a bug")))
    with redirect_stdout(io.StringIO()), pytest.raises(ExtractError, match="stopped: ValueError: a bug"):
        ex.run_extraction(ExtractConfig(**config(manifest, tmp_path / "store2", clips_per_segment=32)))
    assert calls == [8]
