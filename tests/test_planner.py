"""What an extraction will cost before it runs (reslstm.extraction.planner,
distributed/extract/plan.py, jobs/extract.py --dry-run --calibrate): header facts, the dry
run's counts by hand, the ETA model on small numbers, and the commands on a local Ray with the
store left untouched."""

import math
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs_loader import job as load_job
from predict_fixture import extract_config
from reslstm import features as fs
from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest
from reslstm.datasets.synthetic import generate_synthetic
from reslstm.extraction.driver import run_local
from reslstm.extraction.planner import (COUNT_SCHEMA, FACTS_SCHEMA, DryRun, Estimate, Layout,
                                        count_video, frames_of, header_facts)
from reslstm.sampling import num_clips
from reslstm.video.decoding import probe


def fact(vid, ok=True, fps=25.0, frames=100, duration=4.0, **kw):
    return {"video_id": vid, "path": f"/v/{vid}.mp4", "ok": ok, "fps": fps,
            "declared_frames": frames, "duration_s": duration, "width": 128, "height": 96,
            "codec": "h264", "error_type": None, "message": None, **kw}


def test_frames_from_the_headers():
    assert frames_of(fact("a", frames=100, duration=4.0), None) == 100
    assert frames_of(fact("a", frames=0, duration=4.0, fps=29.97), None) == 120  # Matroska
    assert frames_of(fact("a", frames=100, duration=4.0), 10) == 40   # ceil(4.0 x 10)
    assert frames_of(fact("a", frames=100, duration=4.01), 10) == 41  # the grid point at 4.0 s


def counted(facts: list[dict], todo: dict, layout: Layout) -> pa.Table:
    """Facts with their counts, as ``facts_batch`` makes them in the tasks."""
    schema = pa.schema(list(FACTS_SCHEMA) + list(COUNT_SCHEMA))
    return pa.Table.from_pylist([{**f, **count_video(f, {s: f["video_id"] in todo.get(s, ())
                                                         for s in ("rgb", "flow")}, layout)}
                                 for f in facts], schema=schema)


def test_the_dry_run_counts_by_hand():
    report = DryRun(streams=("rgb", "flow"), clip_len=16, clip_stride=8, feature_dim=4, fps=None,
                    in_store=1)
    todo = {"rgb": {"a", "b", "bad"}, "flow": {"a", "bad"}}
    facts = [fact("a", frames=100), fact("b", frames=40), fact("done", frames=1000),
             fact("bad", ok=False, error_type="VideoDecodeError:truncated", message="cut short")]
    half = report.add(counted(facts[:2], todo, report.layout))  # two batches add up
    bad = report.add(counted(facts[2:], todo, report.layout))
    assert half.num_rows == 0 and bad.to_pylist() == [
        {"video_id": "bad", "path": "/v/bad.mp4", "error_type": "VideoDecodeError:truncated",
         "message": "cut short"}]
    assert report.videos == 3 and report.readable == 2 and report.unreadable_count == 1
    assert report.clips == {"rgb": num_clips(100, 16, 8) + num_clips(40, 16, 8),
                            "flow": num_clips(99, 16, 8)}
    assert report.clips == {"rgb": 11 + 4, "flow": 11}
    assert report.frames == 100 + 40 + 100  # b has only its rgb stream to do
    assert report.flow_pairs == 99
    assert report.feature_bytes == (15 + 11) * 4 * 4
    assert report.seconds == 8.0
    assert report.frames_table().to_pylist() == [
        {"video_id": "a", "frames": 100, "work_frames": 200},
        {"video_id": "b", "frames": 40, "work_frames": 40}]
    text = report.text()
    assert "cannot be opened: 1" in text and "/v/bad.mp4: VideoDecodeError:truncated: cut short" in text
    assert "the store already has 1" in text


def test_a_video_counts_its_streams_to_do_only_and_fps_sets_its_frames():
    layout = Layout(16, 8, fps=10)
    c = count_video(fact("a", frames=100, duration=4.0), {"flow": True}, layout)
    assert c == {"todo_rgb": False, "todo_flow": True, "frames": 40, "work_frames": 40,
                 "flow_pairs": 39, "clips_rgb": 0, "clips_flow": num_clips(39, 16, 8)}
    assert count_video(fact("b", ok=False), {"rgb": True}, layout)["work_frames"] == 0


def test_calibration_picks_spread_from_the_fewest_frames_to_the_most():
    from reslstm.distributed.extract.plan import sample

    report = DryRun(streams=("rgb",), clip_len=16, clip_stride=8, feature_dim=4, fps=None)
    frames = {f"v{i}": f for i, f in enumerate([50, 10, 90, 30, 70, 10, 20, 80, 60])}
    todo = {"rgb": set(frames)}
    facts = [fact(v, frames=f) for v, f in frames.items()]
    for lo in range(0, len(facts), 4):
        report.add(counted(facts[lo:lo + 4], todo, report.layout))
    # By frames, then id: v1 v5 (10) v6 v3 v0 v8 v4 v7 v2; 3 picks: the first, middle, last.
    assert sample(report, 3) == ["v0", "v1", "v2"]
    assert sample(report, 100) == sorted(frames)
    with pytest.raises(Exception, match="no readable video"):
        sample(DryRun(streams=("rgb",), clip_len=16, clip_stride=8, feature_dim=4, fps=None), 2)


def test_the_estimate_by_hand():
    # 100 frames of work took decode 10 s, flow 30 s, features 20 s of work; the run took 40 s,
    # 10 s of it starting up, on 2 CPUs: its bound is (10 + 30 + 20) / 2 = 30 s: efficiency 1.
    est = Estimate(stage_seconds={"decode": 10.0, "flow": 30.0, "features": 20.0},
                   sample_frames=100, wall_s=40.0, startup_s=10.0, total_frames=1000, cpus=2,
                   gpus=0)
    assert est.bound(100) == 30.0 and est.efficiency == pytest.approx(1.0)
    assert est.eta_s == pytest.approx(10 + 300)
    assert est.stage_totals() == {"decode": 50.0, "flow": 150.0, "features": 100.0}
    assert est.bottleneck == "flow"
    # With 1 GPU the CNN runs beside the CPU stages: the bound is max(40 / 2, 20 / 1) per 100.
    gpu = Estimate(stage_seconds={"decode": 10.0, "flow": 30.0, "features": 20.0},
                   sample_frames=100, wall_s=40.0, startup_s=10.0, total_frames=1000, cpus=2,
                   gpus=1)
    assert gpu.bound(100) == 20.0 and gpu.efficiency == pytest.approx(1.5)
    assert gpu.eta_s == pytest.approx(10 + 200 * 1.5)
    assert gpu.stage_totals()["features"] == 200.0 and gpu.bottleneck == "features"
    assert "estimated time of the whole job" in gpu.text()


def test_header_facts_read_the_headers_of_good_and_broken_files(tmp_path):
    manifest = pq.read_table(generate_synthetic(tmp_path / "s", videos_per_class=1, seed=1))
    path = manifest.column("path")[0].as_py()
    path = path if Path(path).is_absolute() else str(tmp_path / "s" / path)
    got = header_facts("v", path)
    info = probe(path)
    assert got["ok"] and got["declared_frames"] == info.num_frames and got["fps"] == info.fps
    assert math.isclose(got["duration_s"], info.duration_s)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    bad = header_facts("b", str(tmp_path / "bad.mp4"))
    assert not bad["ok"] and bad["error_type"] == "VideoDecodeError:not_a_video"
    assert not bad["message"].startswith(str(tmp_path))  # the path has its own column
    missing = header_facts("m", str(tmp_path / "missing.mp4"))
    assert missing["error_type"] == "VideoDecodeError:missing"


def test_extraction_times_each_stage(tmp_path):
    manifest = generate_synthetic(tmp_path / "s", videos_per_class=1, seed=2)
    table = pq.read_table(manifest).slice(0, 2)
    write_manifest(table, tmp_path / "m.parquet")
    summary = run_local(extract_config(manifest=str(tmp_path / "m.parquet"), out=str(tmp_path / "o")))
    assert set(summary.stage_seconds) == {"decode", "flow", "features"}
    assert all(v > 0 for v in summary.stage_seconds.values()), summary.stage_seconds
    assert 0 < summary.first_row_s <= summary.seconds
    assert 0 < summary.first_row_work_s and summary.startup_s < summary.first_row_s
    assert "stages worked" in summary.report()


@pytest.mark.integration
def test_dry_run_and_calibrate_leave_the_store_as_it_was(ray_local, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    rows = pq.read_table(generate_synthetic(root, videos_per_class=1, seed=4)).select(
        MANIFEST_SCHEMA.names).to_pylist()
    (root / "bad.mp4").write_bytes(b"garbage")
    rows.append({**rows[0], "video_id": "bad", "path": str(root / "bad.mp4")})
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), root / "all.parquet")
    write_manifest(pa.Table.from_pylist(rows[:2], schema=MANIFEST_SCHEMA), root / "two.parquet")
    out = tmp_path / "store"
    flags = ["--extractor", "tiny3d", "--crops", "1", "--flow", "dis", "--out", str(out)]
    job = load_job("extract")
    run_local(extract_config(manifest=str(root / "two.parquet"), out=str(out)))  # 2 in the store
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    assert job.main(["--manifest", str(root / "all.parquet"), *flags, "--dry-run",
                     "--calibrate", "2"]) == 0
    text = capsys.readouterr().out
    n = len(rows)
    assert f"videos in the manifest to extract: {n - 2}" in text
    assert "the store already has 4 (video, stream) pairs" in text
    assert "cannot be opened: 1" in text and "bad.mp4" in text
    assert "extracting 2 of the videos to do" in text and "bottleneck:" in text
    assert "estimated time of the whole job on this cluster (2 CPUs, 0 GPUs)" in text
    listed = (tmp_path / "extract-dry-run-unreadable.csv").read_text().splitlines()
    assert len(listed) == 2 and listed[1].startswith("bad,")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert fs.read_index(out, ["rgb"]).count("train") + fs.read_index(out, ["rgb"]).count(
        "test") == 2
    assert not list(Path(tempfile.gettempdir()).glob("reslstm-calibrate-*"))  # scratch is gone
