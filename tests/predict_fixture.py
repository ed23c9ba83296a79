"""Small models and videos for the prediction tests: real synthetic MP4s, broken files, and
checkpoint payloads whose extraction settings are tiny3d's (1 crop, DIS flow), built directly
(``build_payload`` of an untrained ``build_model`` and the settings ``resolve_settings`` gives)
instead of trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from reslstm.checkpoint import build_payload
from reslstm.configs import ExtractConfig
from reslstm.datasets.synthetic import synthesize_video, write_mp4
from reslstm.extraction.settings import resolve_settings
from reslstm.model import ModelConfig, build_model

CLASSES = ["grow_then_shrink", "slide_up", "rotate_cw_then_ccw"]
T = 4


def extract_config(**kw) -> ExtractConfig:
    """The extraction the test models' features come from (tiny3d, centre crop, DIS flow)."""
    return ExtractConfig(**{"manifest": "unused", "out": "unused", "extractor": "tiny3d",
                            "crops": 1, "flow": "dis", **kw})


def write_videos(root: Path) -> dict[str, Path]:
    """Good, short and broken videos: name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(CLASSES[:2]):
        out[name] = root / f"{name}.mp4"
        write_mp4(synthesize_video(name, i, seed=3, height=72, width=96), out[name])
    out["short"] = root / "short_9f.mp4"  # shorter than one 16-frame clip: padded
    write_mp4(synthesize_video("slide_up", 5, seed=3, height=72, width=96)[:9], out["short"])
    data = out[CLASSES[0]].read_bytes()
    out["truncated"] = root / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["not_a_video"] = root / "notes.mp4"
    out["not_a_video"].write_text("these are not the frames you are looking for\n")
    out["empty"] = root / "empty.mp4"
    out["empty"].write_bytes(b"")
    return out


def payload(fusion: str = "late-product", seed: int = 0, extract: ExtractConfig | None = None,
            T: int = T) -> dict:
    """A checkpoint payload of an untrained model (h 8, 2 layers) with tiny3d's settings."""
    _, settings = resolve_settings(extract or extract_config())
    cfg = ModelConfig(input_dim=512, num_classes=len(CLASSES), hidden_size=8, num_layers=2,
                      input_proj="linear", fusion=fusion)
    torch.manual_seed(seed)
    model = build_model(cfg)
    return build_payload(model, CLASSES,
                         features={s: dataclasses.asdict(settings[s]) for s in cfg.streams},
                         store="features/test", train_config={"T": T, "fusion": fusion}, epoch=1,
                         metrics={"val_top1": 0.5})


def save_payload(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(doc, path)
    return path
