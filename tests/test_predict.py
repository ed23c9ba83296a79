"""Prediction in one process (reslstm.inference.predictor, reslstm.checkpoint, jobs/predict.py on files): the
chain reproduces extraction exactly, late fusion scores both streams, weights are checked
against the model's record, bad videos get extraction's typed errors, every model reference
kind resolves. No Ray."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from predict_fixture import CLASSES, T, extract_config, payload, save_payload, write_videos
from jobs_loader import job as load_job
from reslstm import features as fs
from reslstm.checkpoint import ModelRefError, load_checkpoint, load_payload, payload_info
from reslstm.configs import PredictConfig
from reslstm.datasets.manifest import write_manifest
from reslstm.extraction.driver import run_local
from reslstm.extraction.segments import features_of
from reslstm.fusion import late_fuse
from reslstm.inference.chain import PredictError, chain_settings
from reslstm.inference.assembly import join_video
from reslstm.inference.predictor import (BATCH_SCHEMA, Prediction, Predictor, VideoFailed,
                                         prediction_rows)
from reslstm.sampling import sample_pair

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def store(videos, tmp_path_factory):
    """The two good videos extracted by extraction itself (run_local, tiny3d, 1 crop, DIS)."""
    root = tmp_path_factory.mktemp("store")
    rows = [{"video_id": name, "path": str(videos[name]), "label": i, "label_name": name,
             "split": "test"} for i, name in enumerate(CLASSES[:2])]
    write_manifest(pa.Table.from_pylist(rows), root / "manifest.parquet")
    run_local(extract_config(manifest=str(root / "manifest.parquet"), out=str(root / "store")))
    return root / "store"


@pytest.fixture(scope="module")
def late_model(tmp_path_factory):
    return save_payload(tmp_path_factory.mktemp("model") / "model.pt", payload("late-product"))


@pytest.fixture(scope="module")
def predictor(late_model):
    model, doc = load_checkpoint(late_model)
    return Predictor(model, doc, PredictConfig(model=str(late_model)))


@pytest.mark.chain
def test_the_chain_reproduces_the_stores_features_and_the_models_scores(store, videos, predictor):
    """Features of a new video equal what extraction stored for it, bit for bit, and the
    probabilities are the model's on the T clips training samples (sample_pair)."""
    recorded = fs.read_metadata(store)
    assert {s: v.weights_id for s, v in recorded.items()} == \
        {s: v.weights_id for s, v in predictor.settings.items()}
    name = CLASSES[0]
    joined, failures = join_video(predictor.segment_rows(str(videos[name]), name),
                                  ("rgb", "flow"), predictor.settings)
    assert not failures
    for stream in ("rgb", "flow"):
        table = fs.read_stream(store, stream)
        stored = dict(zip(table.column("video_id").to_pylist(),
                          fs.features_to_numpy(table.column("features"))))[name]
        np.testing.assert_array_equal(joined[stream].features, stored)
    pred = predictor.predict(videos[name], video_id=name)
    assert pred.video_id == name
    rgb, flow = sample_pair(joined["rgb"].features, joined["flow"].features, T)
    model = predictor.head.model
    with torch.no_grad():
        logits = model({"rgb": torch.tensor(rgb)[None], "flow": torch.tensor(flow)[None]})
    np.testing.assert_array_equal(pred.probs["rgb"], torch.softmax(logits["rgb"], -1)[0].numpy())
    np.testing.assert_array_equal(pred.probs["fused"], model.probabilities(logits)[0].numpy())


@pytest.mark.chain
def test_late_fusion_scores_both_streams_and_fuses_them_as_trained(videos, predictor):
    pred = predictor.predict(videos[CLASSES[1]])
    assert pred.video_id == pred.path == str(videos[CLASSES[1]])  # the path names it by default
    assert list(pred.probs) == ["rgb", "flow", "fused"]
    np.testing.assert_allclose(pred.probs["fused"],
                               late_fuse(pred.probs["rgb"], pred.probs["flow"], "product"),
                               rtol=1e-6)
    top = pred.top("fused", 5)
    assert len(top) == len(CLASSES)  # k is capped by the classes there are
    assert [p for _, _, p in top] == sorted((p for _, _, p in top), reverse=True)
    assert {name for _, name, _ in top} == set(CLASSES)
    doc = json.loads(json.dumps(pred.to_dict(top_k=2, probabilities=True)))
    assert set(doc["top"]) == {"rgb", "flow", "fused"} and len(doc["top"]["fused"]) == 2
    assert doc["top"]["fused"][0]["probability"] == float(pred.probs["fused"].max())
    assert doc["probabilities"]["flow"] == [float(x) for x in pred.probs["flow"]]
    assert doc["num_clips"] == {"rgb": pred.num_clips["rgb"], "flow": pred.num_clips["flow"]}
    text = pred.text(top_k=3)
    assert "fused (late-product)" in text and "rgb" in text and "flow" in text
    table = prediction_rows([pred], top_k=2)
    assert table.schema.remove_metadata() == BATCH_SCHEMA
    assert json.loads(table.schema.metadata[b"labels"]) == CLASSES
    row = table.to_pylist()[0]
    assert row["fused_top_labels"] == [name for _, name, _ in pred.top("fused", 2)]
    assert row["flow_probs"] == pytest.approx(pred.probs["flow"].tolist(), abs=0)


def test_join_video_orders_segments_ignores_duplicates_and_names_what_is_missing():
    from reslstm.extraction.segments import encode, failure_row, segment_row

    settings = {s: fs.StreamSettings("tiny3d", "random-init", 3, 16, 8, 1, 64, 72,
                                     flow_method="dis" if s == "flow" else None)
                for s in ("rgb", "flow")}

    def seg(stream, index, first, k, last=False):
        feats = np.arange(k * 3, dtype=np.float32).reshape(k, 3) + 100 * first
        row = segment_row({"video_id": "v", "stream": stream, "path": "v.mp4"}, seg_index=index,
                          first_clip=first, num_clips=k, is_last=last,
                          total_frames=64 if last else -1, **encode(feats))
        return row.to_pylist()[0], feats

    # 64 RGB frames: 7 RGB clips (segments of 3, 3, 1) and 63 flow frames: 6 flow clips.
    (r0, f0), (r1, f1) = seg("rgb", 0, 0, 3), seg("rgb", 1, 3, 3)
    r2, f2 = seg("rgb", 2, 6, 1, True)
    flow, ff = seg("flow", 0, 0, 6, True)
    joined, failures = join_video([r2, flow, r0, r0, r1, r2], ("rgb", "flow"), settings)
    assert not failures
    np.testing.assert_array_equal(joined["rgb"].features, np.concatenate([f0, f1, f2]))
    np.testing.assert_array_equal(joined["flow"].features, ff)
    bad = failure_row({"video_id": "v", "stream": "flow", "path": "v.mp4"}, "flow",
                      ValueError("no motion")).to_pylist()[0]
    joined, failures = join_video([r0, bad, r1, r2, flow], ("rgb", "flow"), settings)
    assert list(joined) == ["rgb"]
    assert [(f["stream"], f["stage"], f["error_type"]) for f in failures] == \
        [("flow", "flow", "ValueError")]
    _, failures = join_video([r0, r2], ("rgb", "flow"), settings)
    assert [(f["stream"], f["error_type"]) for f in failures] == \
        [("rgb", "IncompleteVideo"), ("flow", "IncompleteVideo")]
    assert "segments [0, 2] of 3" in failures[0]["message"]
    assert "no flow features came back" in failures[1]["message"]


def test_join_video_failure_rows_by_hand():
    """The exact failure rows: a joined stream of the wrong length, a failure after a partial
    stream (its segments are dropped, and rows after it still count), a stream that never
    came, one with a segment missing, and no rows at all."""
    from reslstm.extraction.segments import encode, failure_row, segment_row

    settings = {s: fs.StreamSettings("tiny3d", "random-init", 3, 16, 8, 1, 64, 72,
                                     flow_method="dis" if s == "flow" else None)
                for s in ("rgb", "flow")}
    streams = ("rgb", "flow")

    def seg(stream, index, k, last=False):
        feats = np.zeros((k, 3), dtype=np.float32)
        return segment_row({"video_id": "v", "stream": stream, "path": "v.mp4"}, seg_index=index,
                           first_clip=0, num_clips=k, is_last=last,
                           total_frames=64 if last else -1, **encode(feats)).to_pylist()[0]

    def failure(stream, stage, error_type, message):
        return {"video_id": "v", "stream": stream, "path": "v.mp4", "stage": stage,
                "error_type": error_type, "message": message}

    rgb, flow = seg("rgb", 0, 7, True), seg("flow", 0, 6, True)  # 64 frames: 7 and 6 clips
    assert join_video([], streams, settings) == ({}, [])
    joined, failures = join_video([seg("rgb", 0, 6, True), flow], streams, settings)
    assert list(joined) == ["flow"]
    assert failures == [failure("rgb", "assemble", "SegmentJoinError",
                                "v.mp4: joined (6, 3) features, expected (7, 3) for 64 frames")]
    bad = failure_row({"video_id": "v", "stream": "flow", "path": "v.mp4"}, "flow",
                      ValueError("no motion")).to_pylist()[0]
    joined, failures = join_video([seg("flow", 0, 3), bad, seg("flow", 0, 3), rgb], streams,
                                  settings)
    assert list(joined) == ["rgb"]
    assert failures == [failure("flow", "flow", "ValueError", "v.mp4: no motion")]
    joined, failures = join_video([rgb], streams, settings)
    assert failures == [failure("flow", "assemble", "IncompleteVideo",
                                "v.mp4: no flow features came back")]
    _, failures = join_video([seg("rgb", 0, 3), seg("rgb", 2, 1, True), flow], streams, settings)
    assert failures == [failure("rgb", "assemble", "IncompleteVideo",
                                "v.mp4: segments [0, 2] of 3 arrived")]


def mean_pool_model(fusion: str, weights: dict[str, list[float]]):
    """A 1-d mean-pool model with hand-set classifiers: logits = W (mean over t of x^0), no bias."""
    from reslstm.model import ModelConfig, build_model

    model = build_model(ModelConfig(input_dim=1, num_classes=2, hidden_size=1, arch="meanpool",
                                    input_proj="none", fusion=fusion))
    with torch.no_grad():
        for stream, w in weights.items():
            model.nets[stream].classifier.weight.copy_(torch.tensor(w)[:, None])  # (C, 1)
            model.nets[stream].classifier.bias.zero_()
    return model


def test_the_model_head_feeds_the_clips_at_sigma_t_not_the_first_T():
    """K_v = 5 clips, T = 3: sigma(t) - 1 = 0, 2, 4, so the mean of x^0 is (1 + 4 + 16) / 3 = 7
    (the first T clips would give 7 / 3, the last T 28 / 3)."""
    from reslstm.inference.predictor import ModelHead

    model = mean_pool_model("rgb", {"rgb": [1.0, 0.0]})
    head = ModelHead(model, {"label_names": ["a", "b"], "train_config": {"T": 3}})
    assert head.T == 3 and head.heads == ("fused",)
    clips = np.array([[1.0], [2.0], [4.0], [8.0], [16.0]], dtype=np.float32)  # (K_v, 1)
    probs = head.probabilities({"rgb": clips})
    assert list(probs) == ["fused"] and probs["fused"].dtype == np.float32
    np.testing.assert_allclose(probs["fused"], torch.softmax(torch.tensor([7.0, 0.0]), 0).numpy(),
                               rtol=1e-6)


def test_the_model_head_samples_both_streams_at_the_same_clips_of_the_shorter_one():
    """RGB has 6 clips, flow 5: both are cut to 5, then sampled at clips 0, 2, 4 (T = 3):
    RGB mean (1 + 4 + 16) / 3 = 7, flow mean (1 + 5 + 9) / 3 = 5. Sampling the 6 RGB clips
    (0, 2, 5) would give 37 / 3; the first T flow clips 3. Late sum: (p_rgb + p_flow) / 2."""
    from reslstm.inference.predictor import ModelHead

    model = mean_pool_model("late-sum", {"rgb": [1.0, 0.0], "flow": [0.0, 1.0]})
    head = ModelHead(model, {"label_names": ["a", "b"], "train_config": {"T": 3}})
    assert head.heads == ("rgb", "flow", "fused")
    rgb = np.array([[1.0], [2.0], [4.0], [8.0], [16.0], [32.0]], dtype=np.float32)  # (6, 1)
    flow = np.array([[1.0], [3.0], [5.0], [7.0], [9.0]], dtype=np.float32)  # (5, 1)
    probs = head.probabilities({"rgb": rgb, "flow": flow})
    p_rgb = torch.softmax(torch.tensor([7.0, 0.0]), 0).numpy()
    p_flow = torch.softmax(torch.tensor([0.0, 5.0]), 0).numpy()
    assert list(probs) == ["rgb", "flow", "fused"]
    np.testing.assert_allclose(probs["rgb"], p_rgb, rtol=1e-6)
    np.testing.assert_allclose(probs["flow"], p_flow, rtol=1e-6)
    np.testing.assert_allclose(probs["fused"], (p_rgb + p_flow) / 2, rtol=1e-6)


def test_the_model_head_prediction_carries_what_decoding_said():
    """A late model given the streams in any order: the prediction lists them in the model's
    order, takes frames and fps from the RGB stream, and notes padding and decoder warnings."""
    from reslstm.extraction.segments import JoinedVideo
    from reslstm.inference.predictor import ModelHead

    def joined(stream, clips, **last):
        last = {"total_frames": 9, "fps": None, "padded": False, **last}
        return JoinedVideo(("v", stream), {"video_id": "v", "path": "v.mp4"}, last,
                           np.array(clips, dtype=np.float32)[:, None])

    model = mean_pool_model("late-sum", {"rgb": [1.0, 0.0], "flow": [0.0, 1.0]})
    head = ModelHead(model, {"label_names": ["a", "b"], "train_config": {"T": 3}})
    pred = head.prediction("v", "v.mp4", {
        "flow": joined("flow", [2.0], padded=True),
        "rgb": joined("rgb", [4.0], padded=True, warning="2 frames could not be decoded")})
    assert (pred.video_id, pred.path, pred.fusion, pred.label_names) == \
        ("v", "v.mp4", "late-sum", ["a", "b"])
    assert (pred.num_frames, pred.fps, pred.num_clips, pred.padded) == \
        (9, 0.0, {"rgb": 1, "flow": 1}, True)
    assert pred.notes == [
        "rgb: shorter than one clip (9 frames): padded by repeating its last frame",
        "rgb: 2 frames could not be decoded",
        "flow: shorter than one clip (8 frames): padded by repeating its last frame"]
    np.testing.assert_allclose(pred.probs["rgb"], torch.softmax(torch.tensor([4.0, 0.0]), 0),
                               rtol=1e-6)
    np.testing.assert_allclose(pred.probs["flow"], torch.softmax(torch.tensor([0.0, 2.0]), 0),
                               rtol=1e-6)
    pred = head.prediction("v", "v.mp4", {"rgb": joined("rgb", [4.0], fps=25.0),
                                          "flow": joined("flow", [2.0])})
    assert (pred.fps, pred.padded, pred.notes) == (25.0, False, [])


def test_the_model_head_batches_videos_with_the_numbers_of_one_at_a_time(late_model):
    """ModelHead.predictions, the Serve app's batched model step: the same floats as one video
    at a time, in order (a stacked forward pass would not give them: see its docstring)."""
    from reslstm.checkpoint import load_checkpoint
    from reslstm.extraction.segments import JoinedVideo
    from reslstm.inference.predictor import ModelHead

    model, payload = load_checkpoint(late_model)
    head = ModelHead(model, payload)
    rng = np.random.default_rng(0)
    last = {"total_frames": 40, "fps": 25.0, "padded": False}
    videos = [(f"v{i}", f"v{i}.mp4", {s: JoinedVideo((f"v{i}", s), {"video_id": f"v{i}"}, last,
                                                     rng.normal(size=(k, 512)).astype(np.float32))
                                      for s in ("rgb", "flow")})
              for i, k in enumerate((3, 12, 7))]
    batched = head.predictions(videos)
    assert [p.video_id for p in batched] == ["v0", "v1", "v2"]
    for (vid, path, joined), pred in zip(videos, batched):
        alone = head.prediction(vid, path, joined)
        assert alone.probs.keys() == pred.probs.keys() == {"rgb", "flow", "fused"}
        for h in alone.probs:
            np.testing.assert_array_equal(pred.probs[h], alone.probs[h])
    assert not np.allclose(batched[0].probs["fused"], batched[1].probs["fused"])


@pytest.mark.chain
def test_segments_packed_across_videos_give_their_features_and_keep_failures_apart(videos):
    """FeatureStage.rows(pack=True), the GPU path of the Serve app run here on the CPU: every
    segment gets its own features (as unpacked, to float rounding); a failure row passes
    through; a segment the packed pass cannot take is extracted alone and fails alone."""
    from reslstm.extraction.stages import FeatureStage, decode_segments
    from reslstm.inference.chain import chain_settings

    stage, _ = chain_settings(payload("late-product"), PredictConfig(model="m"))
    features = FeatureStage(stage, ("rgb",))
    rows = []
    for name in ("grow_then_shrink", "slide_up", "not_a_video"):
        item = {"video_id": name, "stream": "rgb", "path": str(videos[name])}
        for seg in decode_segments(pa.Table.from_pylist([item]), stage):
            rows += seg.to_pylist()
    assert [r["kind"] for r in rows] == ["segment", "segment", "failure"]
    broken = dict(rows[1], num_clips=rows[1]["num_clips"] + 1)  # its features will not fit
    packed = features.rows([dict(r) for r in rows], pack=True)
    alone = features.rows([dict(r) for r in rows])
    for a, b in zip(packed[:2], alone[:2]):
        np.testing.assert_allclose(features_of(a), features_of(b), rtol=1e-5, atol=1e-5)
    assert packed[2] == alone[2] == rows[2]
    mixed = features.rows([dict(rows[0]), broken], pack=True)
    assert mixed[0]["kind"] == "segment" and mixed[1]["kind"] == "failure"
    np.testing.assert_array_equal(features_of(mixed[0]), features_of(alone[0]))
    assert "expected" in mixed[1]["message"]


# Seven classes; ties in the probabilities are listed by class index ("stable"), which NumPy's
# default argsort does not do for float32 (it gives 0, 2, 6, 4, 3 for the RGB head here).
NAMES7 = ["walk", "run", "jump", "swim", "ride", "brush_hair_very_slowly", "sit"]


def late_prediction(**kw) -> Prediction:
    probs = {"rgb": [0.2, 0.1, 0.2, 0.1, 0.2, 0.0, 0.2], "flow": [0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.5],
             "fused": [0.25, 0.0, 0.25, 0.0, 0.25, 0.0, 0.25]}
    doc = dict(video_id="v7", path="videos/v7.mp4", fusion="late-product", label_names=NAMES7,
               probs={h: np.array(p, np.float32) for h, p in probs.items()}, num_frames=64,
               fps=25.0, num_clips={"rgb": 7, "flow": 6}, padded=True,
               notes=["rgb: padded", "flow: odd"])
    return Prediction(**{**doc, **kw})


def test_a_prediction_lists_the_top_classes_with_ties_by_class_index():
    pred = late_prediction()
    top = pred.top()  # the fused head, k = 5
    assert [(i, name) for i, name, _ in top] == \
        [(0, "walk"), (2, "jump"), (4, "ride"), (6, "sit"), (1, "run")]
    assert [p for _, _, p in top] == [0.25, 0.25, 0.25, 0.25, 0.0]
    assert [i for i, _, _ in pred.top("rgb", 7)] == [0, 2, 4, 6, 1, 3, 5]
    assert [i for i, _, _ in pred.top("flow", 3)] == [6, 0, 1]


def test_a_prediction_as_json():
    pred = late_prediction()
    doc = pred.to_dict(top_k=2)
    assert doc == {
        "video_id": "v7", "path": "videos/v7.mp4", "fusion": "late-product", "num_frames": 64,
        "fps": 25.0, "num_clips": {"rgb": 7, "flow": 6}, "padded": True,
        "notes": ["rgb: padded", "flow: odd"],
        "top": {"rgb": [{"index": 0, "label": "walk", "probability": pytest.approx(0.2)},
                        {"index": 2, "label": "jump", "probability": pytest.approx(0.2)}],
                "flow": [{"index": 6, "label": "sit", "probability": 0.5},
                         {"index": 0, "label": "walk", "probability": pytest.approx(0.1)}],
                "fused": [{"index": 0, "label": "walk", "probability": 0.25},
                          {"index": 2, "label": "jump", "probability": 0.25}]}}
    assert [len(v) for v in pred.to_dict()["top"].values()] == [5, 5, 5]  # default top_k = 5
    assert "probabilities" not in pred.to_dict() and "labels" not in pred.to_dict()
    full = pred.to_dict(top_k=1, probabilities=True)
    assert full["labels"] == NAMES7
    assert full["probabilities"]["fused"] == [0.25, 0.0, 0.25, 0.0, 0.25, 0.0, 0.25]
    assert list(full["probabilities"]) == ["rgb", "flow", "fused"]


def test_a_prediction_as_text():
    """Columns as wide as their title or widest cell, trailing blanks stripped, 5 rows."""
    assert late_prediction().text() == "\n".join([
        "videos/v7.mp4: 64 frames at 25.0 fps, clips rgb 7, flow 6",
        "  #  rgb          flow         fused (late-product)",
        "  1  walk 0.2000  sit 0.5000   walk 0.2500",
        "  2  jump 0.2000  walk 0.1000  jump 0.2500",
        "  3  ride 0.2000  run 0.1000   ride 0.2500",
        "  4  sit 0.2000   jump 0.1000  sit 0.2500",
        "  5  run 0.1000   swim 0.1000  run 0.0000",
        "  note: rgb: padded",
        "  note: flow: odd",
    ])


def test_a_prediction_as_text_sizes_its_columns_for_any_number_of_rows():
    """top_k = 7 lists all seven classes: the 29-character cell "brush_hair_very_slowly 0.0000"
    widens every column, titles included; top_k = 1 gives one row, each column still as wide as
    the wider of its title and its one cell ("flow" 4 < "sit 0.5000" 10). A one-stream model's
    only column is titled "fused (rgb)" (11 characters), narrower than its 29-character cell, and
    the title line keeps no trailing blanks."""
    pred = late_prediction()
    assert pred.text(top_k=7).splitlines()[1:9] == [
        "  #  rgb                            flow                           fused (late-product)",
        "  1  walk 0.2000                    sit 0.5000                     walk 0.2500",
        "  2  jump 0.2000                    walk 0.1000                    jump 0.2500",
        "  3  ride 0.2000                    run 0.1000                     ride 0.2500",
        "  4  sit 0.2000                     jump 0.1000                    sit 0.2500",
        "  5  run 0.1000                     swim 0.1000                    run 0.0000",
        "  6  swim 0.1000                    ride 0.1000                    swim 0.0000",
        "  7  brush_hair_very_slowly 0.0000  brush_hair_very_slowly 0.0000  brush_hair_very_slowly 0.0000",
    ]
    assert pred.text(top_k=1).splitlines()[1:3] == [
        "  #  rgb          flow        fused (late-product)",
        "  1  walk 0.2000  sit 0.5000  walk 0.2500",
    ]
    single = late_prediction(fusion="rgb", num_clips={"rgb": 7}, notes=[],
                             probs={"fused": np.array([0.3, 0, 0, 0, 0, 0.7, 0], np.float32)})
    assert single.text(top_k=2) == "\n".join([
        "videos/v7.mp4: 64 frames at 25.0 fps, clips rgb 7",
        "  #  fused (rgb)",
        "  1  brush_hair_very_slowly 0.7000",
        "  2  walk 0.3000",
    ])


def test_prediction_rows_by_hand():
    rows = prediction_rows([late_prediction(),
                            late_prediction(video_id="v8", notes=[], fusion="rgb",
                                            probs={"fused": np.eye(7, dtype=np.float32)[3]})])
    assert rows.schema.remove_metadata() == BATCH_SCHEMA
    assert json.loads(rows.schema.metadata[b"labels"]) == NAMES7
    first, second = rows.to_pylist()
    assert {k: first[k] for k in ("video_id", "path", "fusion", "num_frames", "fps", "padded",
                                  "notes")} == \
        {"video_id": "v7", "path": "videos/v7.mp4", "fusion": "late-product", "num_frames": 64,
         "fps": 25.0, "padded": True, "notes": "rgb: padded; flow: odd"}
    assert first["rgb_top_labels"] == ["walk", "jump", "ride", "sit", "run"]  # default top_k 5
    assert first["rgb_top_probs"] == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.1])
    assert first["flow_top_labels"] == ["sit", "walk", "run", "jump", "swim"]
    assert first["fused_probs"] == [0.25, 0.0, 0.25, 0.0, 0.25, 0.0, 0.25]
    assert second["video_id"] == "v8" and second["notes"] is None  # no notes: null, not ""
    assert second["rgb_top_labels"] is None and second["flow_probs"] is None  # no such heads
    assert second["fused_top_labels"][0] == "swim" and second["fused_top_probs"][0] == 1.0
    assert prediction_rows([late_prediction()], top_k=1).column("fused_top_labels").to_pylist() \
        == [["walk"]]
    empty = prediction_rows([])
    assert empty.num_rows == 0 and empty.schema.metadata is None


def test_video_failed_reports_its_first_failure():
    failures = [{"video_id": "v", "stream": "rgb", "path": "v.mp4", "stage": "decode",
                 "error_type": "VideoDecodeError:truncated", "message": "v.mp4: moov atom"},
                {"video_id": "v", "stream": "flow", "path": "v.mp4", "stage": "flow",
                 "error_type": "ValueError", "message": "no motion"}]
    error = VideoFailed(failures)
    assert str(error) == "VideoDecodeError:truncated (decode): v.mp4: moov atom"
    assert error.error_type == "VideoDecodeError:truncated" and error.failures == failures
    assert error.exit_code == 1


@pytest.mark.chain
def test_a_single_stream_model_reads_one_stream(tmp_path, videos):
    doc = payload("flow")
    model, _ = load_checkpoint(save_payload(tmp_path / "model.pt", doc))
    pred = Predictor(model, doc, PredictConfig(model="m")).predict(videos[CLASSES[0]])
    assert list(pred.probs) == ["fused"] and list(pred.num_clips) == ["flow"]
    assert pred.probs["fused"].sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.chain
def test_a_short_video_is_padded_with_a_note_and_broken_ones_fail_with_typed_errors(videos,
                                                                                  predictor):
    pred = predictor.predict(videos["short"])
    assert pred.padded and pred.num_frames == 9 and pred.num_clips == {"rgb": 1, "flow": 1}
    assert any("shorter than one clip" in n and "padded" in n for n in pred.notes)
    expected = {"truncated": "VideoDecodeError:truncated", "not_a_video":
                "VideoDecodeError:not_a_video", "empty": "VideoDecodeError:empty"}
    for name, error_type in expected.items():
        with pytest.raises(VideoFailed) as info:
            predictor.predict(videos[name])
        assert info.value.error_type == error_type
        assert {f["stream"] for f in info.value.failures} == {"rgb", "flow"}
        assert {f["video_id"] for f in info.value.failures} == {str(videos[name])}
        assert all(f["stage"] == "decode" and str(videos[name]) in f["message"]
                   for f in info.value.failures)
    with pytest.raises(VideoFailed, match="VideoDecodeError:missing"):
        predictor.predict(videos["empty"].parent / "nowhere.mp4")


def test_weights_must_be_the_ones_the_features_were_extracted_with(tmp_path):
    """A model whose features came from a weights file: that file is required, and another
    one is refused with both ids named."""
    from reslstm.extractors import create_extractor
    from reslstm.extractors.base import file_sha256

    files = {}
    for seed in (1, 2):
        files[seed] = tmp_path / f"tiny3d_seed{seed}.pt"
        torch.save(create_extractor("tiny3d", "rgb", seed=seed).state_dict(), files[seed])
    doc = payload("rgb", extract=extract_config(streams=("rgb",), weights=str(files[1])))
    recorded = file_sha256(files[1])
    assert doc["features"]["rgb"]["weights_id"] == recorded
    with pytest.raises(PredictError, match=f"sha256 {recorded}; pass that file with --weights"):
        chain_settings(doc, PredictConfig(model="m"))
    other = file_sha256(files[2])
    with pytest.raises(PredictError) as info:
        chain_settings(doc, PredictConfig(model="m", weights=str(files[2])))
    assert other in str(info.value) and recorded in str(info.value)
    stage, _ = chain_settings(doc, PredictConfig(model="m", weights=str(files[1])))
    assert stage.weights == {"rgb": str(files[1])} and stage.weights_ids == {"rgb": recorded}


def test_recorded_weights_names_and_flow_methods_are_reproduced():
    """A torchvision weights name, random init and RAFT's recorded size and weights come back
    from the record without being passed (nothing is loaded here)."""
    doc = payload("late-product")
    doc["features"]["rgb"].update(extractor="r3d_18",
                                  weights_id="torchvision:R3D_18_Weights.KINETICS400_V1")
    doc["features"]["flow"].update(extractor="r3d_18", weights_id="random-init",
                                   flow_method="raft-small:random-init")
    stage, _ = chain_settings(doc, PredictConfig(model="m", allow_cpu_raft=True))
    assert stage.weights == {"rgb": "KINETICS400_V1", "flow": None}
    assert stage.flow_method == "raft"
    assert stage.flow_options == {"size": "small", "weights": None, "allow_cpu": True}
    doc["features"]["flow"]["flow_method"] = "raft-small:" + "ab" * 32
    with pytest.raises(PredictError, match="--raft-weights"):
        chain_settings(doc, PredictConfig(model="m"))
    from reslstm.flow.tvl1 import TVL1Params

    doc["features"]["flow"]["flow_method"] = "tvl1-torch"  # TV-L1 in torch: its parameters
    stage, _ = chain_settings(doc, PredictConfig(model="m"))
    assert (stage.flow_method, stage.flow_options) == ("tvl1-torch", {})
    doc["features"]["flow"]["flow_method"] = "tvl1-torch:nscales=3"
    stage, _ = chain_settings(doc, PredictConfig(model="m"))
    assert stage.flow_options == {"params": TVL1Params(nscales=3)}
    doc["features"].pop("flow")
    with pytest.raises(PredictError, match=r"no extraction settings for stream\(s\) \['flow'\]"):
        chain_settings(doc, PredictConfig(model="m"))


def test_every_model_reference_kind_resolves(tmp_path, late_model):
    """A model.pt, a checkpoint directory, a run directory (summary.json's best checkpoint),
    a file:// URI; clear errors otherwise."""
    from reslstm.distributed.predict.files import load_model

    ckpt = tmp_path / "run" / "ray_results" / "epoch_0002"
    ckpt.mkdir(parents=True)
    shutil.copy(late_model, ckpt / "model.pt")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"best_checkpoint": str(ckpt)}))
    want = load_payload(late_model)["model_state"]
    for ref in (late_model, ckpt, tmp_path / "run", f"file://{late_model}"):
        model, doc = load_model(str(ref))
        assert all(torch.equal(doc["model_state"][k], want[k]) for k in want)
        assert not model.training
    with pytest.raises(ModelRefError, match="no such file or directory"):
        load_model(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelRefError, match="without model.pt or summary.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelRefError, match="not a checkpoint payload"):
        load_model(str(tmp_path / "junk.pt"))


@pytest.mark.chain
def test_a_registered_model_predicts_as_its_checkpoint(tmp_path, videos, late_model, predictor):
    """models:/NAME@ALIAS through the MLflow registry (reslstm.distributed.tracking.models): the same
    payload (both built by reslstm.checkpoint.build_payload), hence the same probabilities as
    the checkpoint file."""
    from mlflow import MlflowClient

    from reslstm.distributed.predict.files import load_model
    from reslstm.distributed.tracking.models import register_model
    from reslstm.distributed.tracking.experiments import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(ensure_experiment(client, "predict-test"))  # artifacts in tmp_path
    register_model(uri, run.info.run_id, load_payload(late_model), "reslstm-test")
    model, doc = load_model("models:/reslstm-test@champion", mlflow_uri=uri)
    ckpt = load_payload(late_model)
    assert list(doc) == list(ckpt) and payload_info(doc) == payload_info(ckpt)
    assert all(torch.equal(doc["model_state"][k], v) for k, v in ckpt["model_state"].items())
    pred = Predictor(model, doc, PredictConfig(model="models:/reslstm-test@champion"))
    video = videos[CLASSES[0]]
    want = predictor.predict(video)
    for head, p in pred.predict(video).probs.items():
        np.testing.assert_array_equal(p, want.probs[head])
    with pytest.raises(PredictError, match="cannot load it from the MLflow registry"):
        load_model("models:/reslstm-test@nosuchalias", mlflow_uri=uri)


@pytest.mark.chain
def test_the_command_line_prints_tables_json_and_a_sheet(tmp_path, videos, late_model, capsys):
    job = load_job("predict")
    good = [str(videos[CLASSES[0]]), str(videos["short"])]
    assert job.main([*good, "--model", str(late_model), "--top-k", "2",
                     "--sheet", str(tmp_path / "sheet.png")]) == 0
    out = capsys.readouterr().out
    assert "fused (late-product)" in out and "note: rgb: shorter than one clip" in out
    assert (tmp_path / "sheet.png").stat().st_size > 10_000
    assert job.main([*good, "--model", str(late_model), "--json"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["path"] for d in docs] == good
    assert all(set(d["top"]) == {"rgb", "flow", "fused"} and len(d["top"]["fused"]) == 3
               for d in docs)


@pytest.mark.chain
def test_the_command_line_fails_clearly(tmp_path, videos, late_model, capsys):
    job = load_job("predict")
    code = job.main([str(videos[CLASSES[0]]), str(videos["truncated"]), "--model", str(late_model)])
    captured = capsys.readouterr()
    assert code == 1
    assert "fused (late-product)" in captured.out  # the good one is still printed
    assert "1 of 2 video(s) could not be classified" in captured.err
    assert f"{videos['truncated']}: VideoDecodeError:truncated (decode)" in captured.err
    assert "Traceback" not in captured.err
    assert job.main([str(videos["empty"]), "--model", str(tmp_path / "none")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert job.main(["--model", str(late_model)]) == 2
    assert "give video files, or --manifest" in capsys.readouterr().err


@pytest.mark.chain
def test_real_videos(shared_videos, predictor):
    from conftest import SHARED_VIDEO_FRAMES

    for name in ("kinetics_demo_340x256.mp4", "xvid_mp3_320x240.avi"):
        pred = predictor.predict(shared_videos / name)
        assert pred.num_frames == SHARED_VIDEO_FRAMES[name]
        assert pred.num_clips["rgb"] == (SHARED_VIDEO_FRAMES[name] - 16) // 8 + 1
        assert np.isfinite(pred.probs["fused"]).all()


def test_classifying_files_imports_no_ray():
    """reslstm/ never imports Ray, and jobs/predict.py on files does not need it either."""
    import subprocess
    import sys

    code = ("import sys, reslstm.inference.predictor, reslstm.checkpoint, reslstm.inference.sheet, "
            "reslstm.distributed.predict.batch; assert 'ray' not in sys.modules, 'Ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
