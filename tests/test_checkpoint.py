"""reslstm.checkpoint: one function builds a payload, one reads it back, one makes its model."""

import contextlib

import pytest
import torch

from reslstm.checkpoint import (PAYLOAD_KEYS, PAYLOAD_PARTS, build_payload, load_checkpoint,
                                load_payload, model_from_payload, payload_info)
from reslstm.model import ModelConfig, build_model
from reslstm.training import default_optimizer, train_one_epoch

LABELS = ("a", "b", "c")


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig(input_dim=6, num_classes=3, hidden_size=4, num_layers=2,
                                   input_proj="linear", fusion="late-sum"))


def _trained():
    """A model after one step, with the optimizer state a training checkpoint carries."""
    model = _model()
    optimizer = default_optimizer(model.parameters())
    batch = {"rgb": torch.randn(4, 5, 6), "flow": torch.randn(4, 5, 6),
             "label": torch.tensor([0, 1, 2, 0])}
    train_one_epoch(model, [batch], optimizer, torch.device("cpu"), ("rgb", "flow"))
    return model.eval(), optimizer


def test_a_payload_goes_build_save_load_model_and_back(tmp_path):
    model, optimizer = _trained()
    parts = {"features": {"rgb": {"extractor": "tiny3d", "crops": 1}}, "store": "features/x",
             "train_config": {"T": 5, "fusion": "late-sum"}, "epoch": 3,
             "metrics": {"val_top1": 0.5}}
    payload = build_payload(model, list(LABELS), optimizer.state_dict(), **parts)
    # The layout every checkpoint has: weights, optimizer, what describes the model, its parts.
    assert list(payload) == [PAYLOAD_KEYS[0], "optimizer_state", *PAYLOAD_KEYS[1:], *PAYLOAD_PARTS]
    assert all(not v.requires_grad and v.device.type == "cpu"
               for v in payload["model_state"].values())
    torch.save(payload, tmp_path / "model.pt")

    loaded = load_payload(tmp_path)  # a checkpoint directory
    assert list(loaded) == list(payload)
    assert payload_info(loaded) == {"model_config": model.config.to_dict(),
                                    "label_names": list(LABELS), **parts}
    rebuilt = model_from_payload(loaded)
    assert not rebuilt.training
    x = {s: torch.randn(2, 5, 6) for s in ("rgb", "flow")}
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    # ... and the payload of the rebuilt model is the one it came from (less the optimizer).
    again = build_payload(rebuilt, loaded["label_names"], **{k: loaded[k] for k in PAYLOAD_PARTS})
    assert payload_info(again) == payload_info(loaded)
    assert all(torch.equal(again["model_state"][k], v) for k, v in loaded["model_state"].items())


def test_a_ray_checkpoint_is_read_through_its_directory(tmp_path):
    """Anything with ``as_directory()`` (a ``ray.train.Checkpoint``) reads as its folder."""
    torch.save(build_payload(_model(), LABELS), tmp_path / "model.pt")

    class Checkpoint:
        @contextlib.contextmanager
        def as_directory(self):
            yield str(tmp_path)

    model, payload = load_checkpoint(Checkpoint())
    assert payload["label_names"] == list(LABELS) and not model.training


def test_parts_given_as_none_are_left_out_and_unknown_parts_refused():
    payload = build_payload(_model(), LABELS, store=None, epoch=1)
    assert list(payload) == [*PAYLOAD_KEYS, "epoch"]
    assert "model_state" not in payload_info(payload)
    with pytest.raises(TypeError, match="no payload part"):
        build_payload(_model(), LABELS, epochs=1)
