"""Batch prediction on Ray Data (reslstm.distributed.predict.batch.run_batch, jobs/predict.py
--manifest): one row per video with exactly the in-process probabilities, bad videos in the
failures table with extraction's typed errors, reruns that resume, another model's output
refused; and a model really trained by jobs/train.py's fit, referenced by its run directory."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from predict_fixture import CLASSES, payload, save_payload, write_videos
from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)
from jobs_loader import job as load_job
from reslstm.checkpoint import load_checkpoint
from reslstm.configs import PredictConfig
from reslstm.inference.chain import PredictError
from reslstm.inference.predictor import BATCH_SCHEMA, Predictor

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def manifest(files, tmp_path_factory):
    names = ["grow_then_shrink", "slide_up", "short", "truncated", "not_a_video"]
    rows = [{"video_id": n, "path": str(files[n])} for n in names]
    rows.append({"video_id": "missing", "path": str(files["empty"].parent / "nowhere.mp4")})
    path = tmp_path_factory.mktemp("manifest") / "videos.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def model_actors() -> set[str]:
    from ray.util.state import list_actors

    return {a.actor_id for a in list_actors(limit=10_000) if "ModelStage" in a.class_name}


def in_process(model_file, paths) -> dict:
    model, doc = load_checkpoint(model_file)
    predictor = Predictor(model, doc, PredictConfig(model=str(model_file)))
    return {p: predictor.predict(p) for p in paths}


def test_batch_rows_equal_in_process_predictions_and_reruns_resume(ray_local, tmp_path, files,
                                                                   manifest):
    from reslstm.distributed.predict.batch import run_batch

    model_file = save_payload(tmp_path / "model.pt", payload("late-product"))
    out = tmp_path / "out"
    cfg = PredictConfig(model=str(model_file), manifest=str(manifest), out=str(out), top_k=2,
                        chunk_videos=4)  # written twice: after 4 of the 6 videos, then the rest
    before = model_actors()
    summary = run_batch(cfg)
    assert len(model_actors() - before) == 1  # one model actor for the whole job, not per chunk
    assert len(list((out / "predictions").glob("*.parquet"))
               + list((out / "failures").glob("*.parquet"))) >= 2
    assert summary.predicted == 3
    assert summary.failed == {"VideoDecodeError:truncated": 1, "VideoDecodeError:not_a_video": 1,
                              "VideoDecodeError:missing": 1}
    table = pq.read_table(out / "predictions")
    assert table.schema.remove_metadata() == BATCH_SCHEMA
    assert json.loads(table.schema.metadata[b"labels"]) == CLASSES
    rows = {r["video_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["grow_then_shrink", "short", "slide_up"]
    expected = in_process(model_file, [str(files[v]) for v in rows])
    for vid, row in rows.items():
        pred = expected[row["path"]]
        for head in ("rgb", "flow", "fused"):
            np.testing.assert_array_equal(np.asarray(row[f"{head}_probs"], np.float32),
                                          pred.probs[head])
            assert row[f"{head}_top_labels"] == [n for _, n, _ in pred.top(head, 2)]
        assert row["num_frames"] == pred.num_frames and row["padded"] == pred.padded
    assert "shorter than one clip" in rows["short"]["notes"]
    failures = pq.read_table(out / "failures").to_pylist()
    assert {(f["video_id"], f["stream"], f["error_type"]) for f in failures} == {
        (v, s, e) for s in ("rgb", "flow") for v, e in (
            ("truncated", "VideoDecodeError:truncated"),
            ("not_a_video", "VideoDecodeError:not_a_video"),
            ("missing", "VideoDecodeError:missing"))}
    # A rerun does nothing; one with --retry-failed tries the three again, nothing twice.
    again = run_batch(cfg)
    assert (again.predicted, again.skipped_done, again.skipped_failed) == (0, 3, 3)
    retry = run_batch(PredictConfig(**{**cfg.__dict__, "retry_failed": True}))
    assert (retry.predicted, sum(retry.failed.values()), retry.skipped_done) == (0, 3, 3)
    assert pq.read_table(out / "predictions").num_rows == 3
    # In windows of 2 videos (one pipeline and one model actor each): the same rows.
    before = model_actors()
    windowed = run_batch(PredictConfig(**{**cfg.__dict__, "out": str(tmp_path / "windows"),
                                          "window_videos": 2}))
    assert len(model_actors() - before) == 3
    assert (windowed.predicted, windowed.failed) == (summary.predicted, summary.failed)
    key = [("video_id", "ascending")]
    assert (pq.read_table(tmp_path / "windows" / "predictions").sort_by(key)
            .equals(pq.read_table(out / "predictions").sort_by(key)))
    # Another model's predictions do not mix with these.
    other = save_payload(tmp_path / "other.pt", payload("late-product", seed=1))
    with pytest.raises(PredictError, match="holds predictions of another model"):
        run_batch(PredictConfig(**{**cfg.__dict__, "model": str(other)}))


def test_prepare_out_overwrites_only_when_asked(tmp_path):
    from reslstm import storage
    from reslstm.distributed.predict.batch import prepare_out

    out = storage.resolve(tmp_path / "out")
    prepare_out(out, {"model": "a", "fingerprint": "1"}, overwrite=False)
    (tmp_path / "out" / "predictions").mkdir()
    (tmp_path / "out" / "predictions" / "part-0.parquet").write_bytes(b"x")
    prepare_out(out, {"model": "a", "fingerprint": "1"}, overwrite=False)  # same model: resume
    assert (tmp_path / "out" / "predictions" / "part-0.parquet").exists()
    with pytest.raises(PredictError, match="--overwrite"):
        prepare_out(out, {"model": "b", "fingerprint": "2"}, overwrite=False)
    prepare_out(out, {"model": "b", "fingerprint": "2"}, overwrite=True)
    assert not (tmp_path / "out" / "predictions").exists()
    assert json.loads((tmp_path / "out" / "model.json").read_text())["model"] == "b"


@pytest.fixture(scope="module")
def trained_run(ray_local, tmp_path_factory) -> Path:
    """A late-product Res-LSTM trained for one epoch by fit, on a small store whose metadata
    says its features are tiny3d's (1 crop, DIS): what real videos give with that chain."""
    import dataclasses

    from featurestore_fixture import make_feature_store
    from predict_fixture import extract_config
    from reslstm import features as fs
    from reslstm.configs import TrainConfig
    from reslstm.distributed.train.trainer import fit
    from reslstm.extraction.settings import resolve_settings

    root = tmp_path_factory.mktemp("trained")
    make_feature_store(root / "store", feature_dim=512, split_sizes={"train": 3, "val": 1})
    _, settings = resolve_settings(extract_config())
    fs.write_metadata(root / "store", {s: dataclasses.replace(v) for s, v in settings.items()})
    fit(TrainConfig(features=str(root / "store"), out=str(root / "run"), fusion="late-product",
                    hidden=8, depth=2, T=4, input_proj="linear", epochs=1, batch_size=8,
                    workers=1))
    return root / "run"


def test_a_trained_run_classifies_a_folder_by_its_run_directory(trained_run, files, tmp_path,
                                                                capsys):
    """jobs/predict.py --manifest FOLDER --model RUN_DIR: the best checkpoint of a real run
    (weights-only load), the same probabilities as in this process."""
    folder = tmp_path / "clips"
    (folder / "a").mkdir(parents=True)
    for name, where in (("grow_then_shrink", "a/one.mp4"), ("slide_up", "two.mp4")):
        (folder / where).write_bytes(files[name].read_bytes())
    (folder / "readme.txt").write_text("not a video suffix: not listed")
    assert load_job("predict").main(["--manifest", str(folder), "--out", str(tmp_path / "out"),
                     "--model", str(trained_run)]) == 0
    assert "predicted: 2 videos" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "out" / "predictions")
    rows = {r["video_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["a/one", "two"]
    summary = json.loads((trained_run / "summary.json").read_text())
    expected = in_process(Path(summary["best_checkpoint"]) / "model.pt",
                          [rows["a/one"]["path"], rows["two"]["path"]])
    for row in rows.values():
        np.testing.assert_array_equal(np.asarray(row["fused_probs"], np.float32),
                                      expected[row["path"]].probs["fused"])


def test_a_folder_on_s3_is_classified_into_s3_with_credentials_only_in_the_uris(
        ray_local, s3_server, files, tmp_path, monkeypatch):
    """Videos in a bucket (a folder, listed into option-free URIs), predictions and failures
    written to the bucket: the decode tasks read the objects with the folder's endpoint and
    credentials; nothing needs AWS variables."""
    import pyarrow.fs as pafs

    from reslstm.distributed.predict.batch import run_batch

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3 = s3_server.filesystem()
    s3_server.bucket("predict-tests")
    for name in ("grow_then_shrink", "slide_up", "not_a_video"):
        pafs.copy_files(str(files[name]), f"predict-tests/videos/{files[name].name}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    model_file = save_payload(tmp_path / "model.pt", payload("late-product"))
    cfg = PredictConfig(model=str(model_file), manifest=s3_server.uri("predict-tests", "videos"),
                        out=s3_server.uri("predict-tests", "out"), top_k=2)
    summary = run_batch(cfg)
    assert summary.predicted == 2 and summary.failed == {"VideoDecodeError:not_a_video": 1}
    table = pq.read_table("predict-tests/out/predictions", filesystem=s3)
    rows = {r["video_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["grow_then_shrink", "slide_up"]
    assert rows["slide_up"]["path"] == f"s3://predict-tests/videos/{files['slide_up'].name}"
    expected = in_process(model_file, [str(files["slide_up"])])[str(files["slide_up"])]
    np.testing.assert_array_equal(np.asarray(rows["slide_up"]["fused_probs"], np.float32),
                                  expected.probs["fused"])
    assert s3_server.secret_key not in json.dumps(table.to_pylist())


def test_the_driver_holds_copies_of_the_rows_not_views_of_ray_blocks(tmp_path):
    """Rows wait in the driver until their chunk is written: as copies, so they do not keep
    Ray Data's whole deserialized blocks alive (a view would share its buffers)."""
    from reslstm import storage
    from reslstm.distributed.predict.batch import BatchSummary, _Rows

    summary = BatchSummary(out=str(tmp_path), predicted=0, failed={}, skipped_done=0,
                           skipped_failed=0, seconds=0.0)
    rows = _Rows(storage.resolve(tmp_path), {"label_names": CLASSES}, "run", summary, 2)
    block = pa.table({"video_id": ["a", "b", "a"], "x": [1.0, 2.0, 3.0]})
    rows.add(block)
    held = rows.parts[0]
    assert held.equals(block) and (rows.videos, rows.done, rows.seen) == (2, 2, {"a", "b"})
    for name in block.column_names:
        ours = {b.address for b in held.column(name).chunk(0).buffers() if b is not None}
        theirs = {b.address for b in block.column(name).chunk(0).buffers() if b is not None}
        assert not ours & theirs


def test_a_manifest_of_videos_reads_ids_and_paths_column_by_column(tmp_path, monkeypatch):
    """``read_videos`` of a manifest: relative paths beside it, ids from the column or from the
    path without its suffix (a chunk at a time), and a clear error for repeated or missing ids."""
    from reslstm.datasets import manifest as mf
    from reslstm.distributed.predict.batch import read_videos

    monkeypatch.setattr(mf, "CHUNK_ROWS", 2)
    monkeypatch.setattr("reslstm.distributed.predict.batch.CHUNK_ROWS", 2)
    m = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["a/x.mp4", "/v/y.avi", "z.mkv"]}), m)
    got = read_videos(str(m))
    assert got.column("video_id").to_pylist() == [f"{tmp_path}/a/x", "/v/y", f"{tmp_path}/z"]
    assert got.column("path").to_pylist() == [f"{tmp_path}/a/x.mp4", "/v/y.avi", f"{tmp_path}/z.mkv"]
    pq.write_table(pa.table({"video_id": [3, 4, 3], "path": ["a.mp4", "b.mp4", "c.mp4"]}), m)
    with pytest.raises(PredictError, match=r"video_id not unique \(e.g. \['3'\]\)"):
        read_videos(str(m))
    pq.write_table(pa.table({"video_id": ["p", None, "q"], "path": ["a.mp4", "b.mp4", "c.mp4"]}), m)
    with pytest.raises(PredictError, match="1 rows without a 'video_id'"):
        read_videos(str(m))
    pq.write_table(pa.table({"video_id": ["p", "q"], "path": ["a.mp4", None]}), m)
    with pytest.raises(PredictError, match="1 rows without a 'path'"):
        read_videos(str(m))
