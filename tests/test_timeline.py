"""The running prediction (reslstm.inference.timeline, ActionModel.step_logits, jobs/predict.py
--timeline): step t is what the model answers for the first t sampled clips, with the seconds of
its clip. No Ray."""

import csv
import json

import numpy as np
import pytest
import torch

from jobs_loader import job as load_job
from predict_fixture import CLASSES, T, payload, save_payload, write_videos
from reslstm.checkpoint import model_from_payload
from reslstm.configs import PredictConfig
from reslstm.errors import ConfigError
from reslstm.extraction.segments import JoinedVideo
from reslstm.inference.predictor import ModelHead
from reslstm.model import ModelConfig, build_model
from reslstm.sampling import temporal_sample


@pytest.mark.parametrize("fusion,residual,arch", [
    ("rgb", True, "reslstm"), ("mid-sum", True, "reslstm"), ("late-product", False, "reslstm"),
    ("late-weighted", True, "reslstm"), ("flow", True, "meanpool")])
def test_step_t_is_the_models_answer_for_the_first_t_clips(fusion, residual, arch):
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=6, num_classes=4, hidden_size=5, num_layers=2, fusion=fusion,
                      residual=residual, arch=arch)
    model = build_model(cfg).eval()
    x = {s: torch.randn(2, 7, 6) for s in cfg.streams}
    with torch.no_grad():
        steps = model.step_logits(x)
        for t in range(1, 8):
            prefix = model({s: v[:, :t] for s, v in x.items()})
            for head in model.heads:
                assert torch.allclose(steps[head][:, t - 1], prefix[head], atol=1e-6), (head, t)
        # Probabilities (with late fusion) apply per step to (B, T, C) as to (B, C).
        fused = model.probabilities(steps)
        assert torch.allclose(fused[:, -1], model.probabilities(model(x)), atol=1e-6)


def joined(stream, k, spans=True):
    rng = np.random.default_rng(len(stream) + k)
    feats = rng.standard_normal((k, 512)).astype(np.float32)
    extra = 1 if stream == "flow" else 0
    sp = {"first_frame": np.arange(k) * 8, "last_frame": np.arange(k) * 8 + 15 + extra,
          "start_s": np.arange(k) * 0.32, "end_s": np.arange(k) * 0.32 + 0.64 + 0.04 * extra}
    last = {"total_frames": 8 * k + 8, "padded": False, "fps": 25.0, "warning": None}
    return JoinedVideo((("v", stream)), {"path": "v.mp4"}, last, feats, sp if spans else None)


def test_the_model_head_timeline_by_hand():
    doc = payload("late-product")
    head = ModelHead(model_from_payload(doc), doc)
    # 9 rgb clips, 8 flow clips: both streams at the same 8 clips, sigma(t) over those
    video = {"rgb": joined("rgb", 9), "flow": joined("flow", 8)}
    tl = head.timeline("v", "v.mp4", video)
    clips = temporal_sample(8, T)
    assert tl.clips.tolist() == clips.tolist() == [0, 2, 4, 7]
    assert tl.start_s.tolist() == pytest.approx((clips * 0.32).tolist())
    assert tl.end_s.tolist() == pytest.approx((clips * 0.32 + 0.68).tolist())  # the flow clip's end
    assert set(tl.probs) == {"rgb", "flow", "fused"}
    assert all(p.shape == (T, len(CLASSES)) for p in tl.probs.values())
    pred = head.prediction("v", "v.mp4", video)
    for h in tl.probs:  # the last step is the prediction
        assert np.allclose(tl.probs[h][-1], pred.probs[h], atol=1e-6)
    assert not np.allclose(tl.probs["fused"][0], tl.probs["fused"][-1])
    rows = tl.rows()
    assert len(rows) == T * 3 and rows[0]["step"] == 1 and rows[-1]["step"] == T
    assert rows[0]["top_probability"] == pytest.approx(max(rows[0][c] for c in CLASSES))
    with pytest.raises(Exception, match="carry no times"):
        head.timeline("v", "v.mp4", {"rgb": joined("rgb", 9, spans=False), "flow": joined("flow", 8)})


def test_timeline_needs_video_files_not_a_manifest():
    with pytest.raises(ConfigError, match="timeline"):
        PredictConfig(model="m.pt", manifest="m.parquet", out="o", timeline="tl")


@pytest.mark.chain
def test_the_command_line_writes_csv_json_and_a_plot(tmp_path, capsys):
    videos = write_videos(tmp_path / "videos")
    model = save_payload(tmp_path / "model.pt", payload("late-product"))
    good = videos[CLASSES[0]]
    assert load_job("predict").main([str(good), "--model", str(model), "--timeline",
                                     str(tmp_path / "tl")]) == 0
    assert "timeline: " in capsys.readouterr().out
    name = good.stem
    doc = json.loads((tmp_path / "tl" / f"{name}.timeline.json").read_text())
    assert doc["labels"] == CLASSES and len(doc["steps"]) == T
    starts = [s["start_s"] for s in doc["steps"]]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert all(s["end_s"] > s["start_s"] for s in doc["steps"])
    with open(tmp_path / "tl" / f"{name}.timeline.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == T * 3 and {r["head"] for r in rows} == {"rgb", "flow", "fused"}
    last = [r for r in rows if r["step"] == str(T) and r["head"] == "fused"][0]
    # The last step's fused probabilities are the prediction the job prints in --json.
    assert load_job("predict").main([str(good), "--model", str(model), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out.splitlines()[-1])
    top = pred["top"]["fused"][0]
    assert last["top_label"] == top["label"]
    assert float(last["top_probability"]) == pytest.approx(top["probability"], abs=1e-6)
    assert (tmp_path / "tl" / f"{name}.timeline.png").stat().st_size > 10_000
