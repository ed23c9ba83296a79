"""Feature extraction end to end on a local Ray: synthetic videos, the real test videos and
broken files in one manifest; the store's schema, counts, resume and settings checks; and the
Ray pipeline against the same stages run in one plain loop."""

import io
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from reslstm import features as fs
from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest
from reslstm.datasets.synthetic import generate_synthetic
from reslstm.extractors import create_extractor
from reslstm.sampling import num_clips

from conftest import SHARED_VIDEO_FRAMES, SHARED_VIDEOS

from reslstm.configs import ExtractConfig
from reslstm.distributed.extract.job import run_extraction
from reslstm.extraction.driver import run_local

pytestmark = pytest.mark.integration
TINY3D_DIM = create_extractor("tiny3d", "rgb").feature_dim


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A manifest of tiny synthetic videos, the real test videos (when present), a garbage file
    named .mp4 and a path that does not exist."""
    root = tmp_path_factory.mktemp("data")
    synth = pq.read_table(generate_synthetic(root / "synth", videos_per_class=1, seed=3))
    rows = synth.select(MANIFEST_SCHEMA.names).to_pylist()
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    rows.append({"video_id": "broken/garbage", "path": str(root / "garbage.mp4"), "label": 0,
                 "label_name": rows[0]["label_name"], "split": "train"})
    rows.append({"video_id": "broken/missing", "path": str(root / "missing.mp4"), "label": 0,
                 "label_name": rows[0]["label_name"], "split": "train"})
    real = all((SHARED_VIDEOS / n).is_file() for n in SHARED_VIDEO_FRAMES)
    if real:
        for name in SHARED_VIDEO_FRAMES:
            rows.append({"video_id": f"real/{Path(name).stem}", "path": str(SHARED_VIDEOS / name),
                         "label": 1, "label_name": rows[1]["label_name"], "split": "test"})
    manifest = write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), root / "manifest.parquet")
    return {"manifest": manifest, "rows": rows, "root": root, "real": real}


def _cfg(dataset, out, **kw):
    base = dict(manifest=str(dataset["manifest"]), out=str(out), extractor="tiny3d", flow="dis",
                crops=1, clips_per_segment=4, progress_every_s=1.0, max_failed=1.0)
    return ExtractConfig(**{**base, **kw})


def feature_actors() -> set[str]:
    from ray.util.state import list_actors

    return {a.actor_id for a in list_actors(limit=10_000) if "FeatureStage" in a.class_name}


@pytest.fixture(scope="module")
def extracted(ray_local, dataset):
    """The job in two windows (--window-videos: half the videos): one pipeline, with its own
    feature actors, per window; every test below reads what they wrote together."""
    out = dataset["root"] / "store"
    buf = io.StringIO()
    before = feature_actors()
    with redirect_stdout(buf):
        summary = run_extraction(_cfg(dataset, out, window_videos=-(-len(dataset["rows"]) // 2)))
    assert len(feature_actors() - before) >= 2  # one actor per pool on the test Ray's 2 CPUs
    return out, summary, buf.getvalue()


def test_every_good_video_written_and_broken_ones_recorded(dataset, extracted):
    out, summary, printed = extracted
    good = [r["video_id"] for r in dataset["rows"] if not r["video_id"].startswith("broken/")]
    for stream in ("rgb", "flow"):
        assert fs.written_ids(out, stream) == set(good)
    fails = fs.read_failures(out).to_pylist()
    kinds = {(f["video_id"], f["stream"]): (f["stage"], f["error_type"]) for f in fails}
    assert kinds == {
        ("broken/garbage", "rgb"): ("decode", "VideoDecodeError:not_a_video"),
        ("broken/garbage", "flow"): ("decode", "VideoDecodeError:not_a_video"),
        ("broken/missing", "rgb"): ("decode", "VideoDecodeError:missing"),
        ("broken/missing", "flow"): ("decode", "VideoDecodeError:missing"),
    }
    assert all("garbage.mp4" in f["message"] or "missing.mp4" in f["message"] for f in fails)
    assert summary.written == {"rgb": len(good), "flow": len(good)}
    assert summary.failed == {"VideoDecodeError:not_a_video": 2, "VideoDecodeError:missing": 2}
    assert "failed: 4 (failures table:" in printed and "videos/s" in printed


def test_store_schema_and_counts_readable_by_plain_pyarrow(dataset, extracted):
    out, _, _ = extracted
    for stream in ("rgb", "flow"):
        table = pads.dataset(str(out / stream), format="parquet").to_table()
        assert table.schema.equals(fs.feature_schema(TINY3D_DIM))
        for row, feats in zip(table.drop(["features"]).to_pylist(),
                              fs.features_to_numpy(table.column("features"))):
            assert row["num_clips"] == num_clips(row["num_frames"], 16, 8) == len(feats)
            assert feats.shape[1] == TINY3D_DIM and np.isfinite(feats).all()


def test_real_videos_have_their_exact_frame_counts(dataset, extracted):
    if not dataset["real"]:
        pytest.skip(f"real test videos not found at {SHARED_VIDEOS}")
    out, _, _ = extracted
    for stream, minus in (("rgb", 0), ("flow", 1)):
        rows = {r["video_id"]: r for r in fs.read_stream(out, stream, columns=["video_id", "num_frames", "num_clips"]).to_pylist()}
        for name, frames in SHARED_VIDEO_FRAMES.items():
            row = rows[f"real/{Path(name).stem}"]
            assert row["num_frames"] == frames - minus, (stream, name)
            assert row["num_clips"] == num_clips(frames - minus, 16, 8)


def test_verify_passes_on_the_extracted_store(dataset, extracted):
    out, _, _ = extracted
    report = fs.verify_store(out, pq.read_table(dataset["manifest"]))
    assert report.ok, report.text()


def test_rerun_extracts_nothing_and_retry_failed_retries_only_failures(dataset, extracted):
    out, _, _ = extracted
    before = sorted(fs.stream_files(out, "rgb"))
    with redirect_stdout(io.StringIO()):
        again = run_extraction(_cfg(dataset, out))
    assert again.written == {} and again.skipped_done == 2 * (len(dataset["rows"]) - 2)
    assert again.skipped_failed == 4
    assert sorted(fs.stream_files(out, "rgb")) == before
    with redirect_stdout(io.StringIO()):
        retry = run_extraction(_cfg(dataset, out, retry_failed=True))
    assert retry.written == {} and sum(retry.failed.values()) == 4
    assert fs.read_failures(out).num_rows == 4  # the latest failure per pair, not 8 rows


def test_other_settings_are_refused_naming_the_differences(dataset, extracted):
    out, _, _ = extracted
    with pytest.raises(fs.StoreError, match=r"crops: store has 1, requested 10.*--overwrite"):
        run_extraction(_cfg(dataset, out, crops=10))
    with pytest.raises(fs.StoreError, match=r"flow_method: store has 'dis', requested 'farneback'"):
        run_extraction(_cfg(dataset, out, flow="farneback"))


def test_ray_pipeline_equals_plain_loop_and_segments_join_exactly(dataset, extracted, tmp_path):
    """The same features, row for row, from the Ray pipeline (segments of 4 clips) and from one
    plain loop that extracts every video in a single segment."""
    out, _, _ = extracted
    with redirect_stdout(io.StringIO()):
        run_local(_cfg(dataset, tmp_path / "local", clips_per_segment=10_000))
    for stream in ("rgb", "flow"):
        a = fs.read_stream(out, stream).sort_by("video_id")
        b = fs.read_stream(tmp_path / "local", stream).sort_by("video_id")
        assert a.column("video_id").to_pylist() == b.column("video_id").to_pylist()
        assert a.drop(["features"]).equals(b.drop(["features"]))
        for fa, fb in zip(fs.features_to_numpy(a.column("features")), fs.features_to_numpy(b.column("features"))):
            np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)
    # The longer videos span several 4-clip segments, so the join was exercised.
    assert max(r["num_clips"] for r in fs.read_stream(out, "rgb", columns=["num_clips"]).to_pylist()) > 8


def test_ten_crops_of_a_torchvision_model_through_the_ray_pipeline(ray_local, tmp_path):
    """--crops 10 with r3d_18 (random weights) on the flow stream (its first convolution made
    2-channel): every stage on Ray, and each stored clip feature equals the model's 10-crop
    mean computed directly on the frames' flow. (The crops of an RGB clip: test_extractors.)"""
    from reslstm.video.clips import pad_frames
    from reslstm.datasets.synthetic import synthesize_video, write_mp4
    from reslstm.extractors import clip_features
    from reslstm.flow.methods import compute_flow, quantize_flow
    from reslstm.video.decoding import read_frames

    # 17 frames: one RGB clip and one flow clip (16 flow frames); r3d_18 on 10 crops is slow on
    # a CPU.
    write_mp4(synthesize_video("slide_up", 0, seed=5, height=48, width=64)[:17], tmp_path / "v.mp4")
    manifest = write_manifest(pa.table({
        "video_id": ["v"], "path": [str(tmp_path / "v.mp4")], "label": pa.array([0], pa.int32()),
        "label_name": ["slide_up"], "split": ["train"]}, schema=MANIFEST_SCHEMA),
        tmp_path / "one.parquet")
    cfg = ExtractConfig(manifest=str(manifest), out=str(tmp_path / "store"), extractor="r3d_18",
                        weights="none", flow_weights="none", flow="dis", crops=10, batch_size=4,
                        streams=("flow",))
    summary = run_extraction(cfg)
    assert summary.written == {"flow": 1} and not summary.failed
    settings = fs.read_metadata(tmp_path / "store")
    assert settings["flow"].crops == 10 and settings["flow"].feature_dim == 512
    frames = read_frames(tmp_path / "v.mp4", short_side=settings["flow"].resize_short)
    flow = pad_frames(quantize_flow(compute_flow(frames, "dis")), 16)
    for stream, x in (("flow", flow),):
        (stored,) = fs.features_to_numpy(fs.read_stream(tmp_path / "store", stream).column("features"))
        direct = clip_features(create_extractor("r3d_18", stream, None), x, 16, 8, crops=10,
                               device="cpu")
        assert stored.shape == direct.shape == (1, 512)
        np.testing.assert_allclose(stored, direct, rtol=1e-4, atol=1e-5)


def test_raft_flow_runs_in_the_feature_stage_and_is_recorded(tmp_path):
    """--flow raft (here random-init RAFT on the CPU, allowed explicitly): the actor computes the
    flow, and the store records which RAFT made it, so other RAFT weights are refused."""
    from reslstm.datasets.synthetic import synthesize_video, write_mp4

    # 18 frames: 17 flow frames, one flow clip (RAFT on a CPU is slow).
    write_mp4(synthesize_video("grow_then_shrink", 0, seed=4, height=48, width=64)[:18],
              tmp_path / "v.mp4")
    manifest = write_manifest(pa.table({
        "video_id": ["v"], "path": [str(tmp_path / "v.mp4")], "label": pa.array([0], pa.int32()),
        "label_name": ["grow_then_shrink"], "split": ["train"]}, schema=MANIFEST_SCHEMA),
        tmp_path / "one.parquet")
    cfg = ExtractConfig(manifest=str(manifest), out=str(tmp_path / "store"), streams=("flow",),
                        extractor="tiny3d", flow="raft", raft_size="small", raft_weights="none",
                        allow_cpu_raft=True, crops=1)
    with redirect_stdout(io.StringIO()):
        summary = run_local(cfg)
    assert summary.written == {"flow": 1} and not summary.failed
    assert fs.read_metadata(tmp_path / "store")["flow"].flow_method == "raft-small:random-init"
    row = fs.read_stream(tmp_path / "store", "flow").to_pylist()[0]
    assert (row["num_frames"], row["num_clips"]) == (17, 1)
    with pytest.raises(fs.StoreError, match="flow_method: store has 'raft-small:random-init'"):
        run_local(ExtractConfig(**{**cfg.__dict__, "flow": "dis"}))


def test_a_pipeline_keeps_the_last_block_stats_of_each_operator(ray_local, monkeypatch):
    """A dataset made in the pipeline's context trims its operators' block statistics as it
    runs (``BoundedBlockStats``), and still yields every row and its stats summary. This also
    pins where Ray Data keeps them: if they move, nothing is dropped and this fails."""
    import ray

    from reslstm.distributed.extract import pipeline

    monkeypatch.setattr(pipeline.BoundedBlockStats, "keep", 3)
    plan = SimpleNamespace(block_bytes=2 ** 20, object_store_bytes=0)  # what the context reads
    with pipeline._pipeline_context(plan):
        ds = ray.data.from_items([{"i": i} for i in range(60)], override_num_blocks=60)
    assert pipeline.BoundedBlockStats not in ray.data.DataContext.get_current() \
        .custom_execution_callback_classes  # the caller's context is left as it was
    ds = ds.map_batches(lambda b: b.append_column("j", pc.multiply(b.column("i"), 2)),
                        batch_size=1, batch_format="pyarrow")
    before = pipeline.BoundedBlockStats.dropped
    rows = [r for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")
            for r in b.to_pylist()]
    assert sorted(r["i"] for r in rows) == list(range(60))
    assert all(r["j"] == 2 * r["i"] for r in rows)
    assert pipeline.BoundedBlockStats.dropped - before >= 60 - 2 * 3
    assert "MapBatches" in ds.stats()
