"""train_one_epoch / evaluate on a tiny separable problem, plain and inside DistributedDataParallel."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from reslstm.model import ModelConfig, build_model
from reslstm.training import EvalResult, default_optimizer, evaluate, train_one_epoch, unwrap


def separable_batches(streams, n_batches=6, batch=8, T=3, d=4, seed=0):
    """Class 0 has features around +1 in dim 0, class 1 around -1 (all streams alike)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, 2, (batch,), generator=g)
        sign = (1 - 2 * labels).float()[:, None, None]  # +1 for class 0, -1 for class 1
        b = {"label": labels}
        for s in streams:
            x = 0.3 * torch.randn(batch, T, d, generator=g)
            x[..., 0] += sign[..., 0]
            b[s] = x
        out.append(b)
    return out


def tiny_model(fusion="rgb", seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(input_dim=4, num_classes=2, hidden_size=8, num_layers=2, fusion=fusion))


def test_default_optimizer_is_rmsprop():
    opt = default_optimizer(tiny_model().parameters())
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.defaults["lr"] == 1e-3
    assert default_optimizer(tiny_model().parameters(), momentum=0.5).defaults["momentum"] == 0.5


@pytest.mark.parametrize("fusion", ["rgb", "mid-sum", "late-product"])
def test_training_lowers_the_loss_and_separates(fusion):
    model = tiny_model(fusion)
    streams = model.config.streams
    train, val = separable_batches(streams, seed=0), separable_batches(streams, n_batches=2, seed=1)
    opt = default_optimizer(model.parameters(), lr=1e-2)
    before = evaluate(model, val, "cpu", streams)
    losses = [train_one_epoch(model, train, opt, "cpu", streams) for _ in range(8)]
    after = evaluate(model, val, "cpu", streams)
    assert losses[-1] < losses[0]
    assert after.loss < before.loss
    assert after.top1 == 1.0


def check_consistent(result: EvalResult, batches, heads):
    labels = np.concatenate([b["label"].numpy() for b in batches])
    np.testing.assert_array_equal(result.labels, labels)  # batch order kept
    assert result.probs.shape == (len(labels), 2)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, rtol=1e-5)
    assert result.top1 == pytest.approx(np.mean(result.probs.argmax(axis=1) == labels))
    np.testing.assert_array_equal(result.predictions, result.probs.argmax(axis=1))
    assert result.top5 == 1.0  # k capped at 2 classes
    pred = result.probs.argmax(axis=1)  # mean over the classes present of their recall
    recalls = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
    assert result.mean_class_acc == pytest.approx(np.mean(recalls))
    assert sorted(result.head_top1) == sorted(heads)
    assert result.loss > 0


@pytest.mark.parametrize("fusion", ["flow", "mid-product", "late-weighted"])
def test_evaluate_is_consistent(fusion):
    model = tiny_model(fusion)
    batches = separable_batches(model.config.streams, n_batches=3)
    result = evaluate(model, batches, "cpu", model.config.streams)
    check_consistent(result, batches, model.config.heads)
    if len(model.config.heads) == 1:
        assert result.head_top1[model.config.heads[0]] == pytest.approx(result.top1)
    # the loss is the sum over heads of the mean cross-entropy, weighted by batch size
    with torch.no_grad():
        expected = np.mean([
            sum(torch.nn.functional.cross_entropy(v, b["label"]).item()
                for v in model({s: b[s] for s in model.config.streams}).values())
            for b in batches
        ])
    assert result.loss == pytest.approx(expected, rel=1e-5)


def test_train_one_epoch_returns_the_sample_weighted_mean_loss():
    """At lr 0 the model stays as it is, so the epoch's loss is the mean over samples of each
    batch's loss (the sum over heads of its mean cross-entropy): batches of 8 and 2 weigh 8 : 2."""
    model = tiny_model("late-sum")
    streams = model.config.streams
    batches = separable_batches(streams, n_batches=2)
    batches[1] = {k: v[:2] for k, v in batches[1].items()}
    with torch.no_grad():
        per_batch = [sum(torch.nn.functional.cross_entropy(v, b["label"]).item()
                         for v in model({s: b[s] for s in streams}).values()) for b in batches]
    loss = train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.0), "cpu",
                           streams)
    assert loss == pytest.approx((8 * per_batch[0] + 2 * per_batch[1]) / 10, rel=1e-6)


def test_grad_clip_bounds_the_global_gradient_norm():
    """SGD at lr 1 moves the parameters by minus the gradient: clipped, the step's global norm
    is the clip value (clip_grad_norm_ scales by clip / (norm + 1e-6)); unclipped it is larger."""
    batches = separable_batches(("rgb",), n_batches=1)

    def step_norm(grad_clip):
        model = tiny_model()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=1.0), "cpu",
                        ("rgb",), grad_clip=grad_clip)
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())

    assert step_norm(None) > 0.1
    assert step_norm(0.01) == pytest.approx(0.01, rel=1e-4)


def test_batches_of_float64_features_and_int32_labels_are_converted():
    """Batches as a data loader may give them (NumPy float64, int32 labels) train and score as
    float32 features with int64 labels do."""
    model = tiny_model("late-sum")
    streams = model.config.streams
    batches = separable_batches(streams, n_batches=2)
    loose = [{k: v.double() if k != "label" else v.int() for k, v in b.items()} for b in batches]
    plain, converted = evaluate(model, batches, "cpu", streams), evaluate(model, loose, "cpu", streams)
    np.testing.assert_array_equal(converted.probs, plain.probs)
    assert converted.loss == plain.loss
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    assert train_one_epoch(model, loose, opt, "cpu", streams) == pytest.approx(plain.loss, rel=1e-6)


def test_missing_stream_and_empty_input_are_clear_errors():
    """A batch lacking a stream or the label is refused up front with a KeyError that names
    what is missing, what the batch has and the streams asked for; no batches at all is a
    ValueError naming the function and the likely cause."""
    model = tiny_model("late-sum")
    batches = separable_batches(("rgb",), n_batches=1)
    with pytest.raises(KeyError, match=r"batch lacks \['flow'\]; it has \['label', 'rgb'\] "
                                       r"\(streams: \['rgb', 'flow'\]\)"):
        evaluate(model, batches, "cpu", ("rgb", "flow"))
    unlabelled = [{"rgb": batches[0]["rgb"]}]
    with pytest.raises(KeyError, match=r"batch lacks \['label'\]"):
        train_one_epoch(tiny_model(), unlabelled, default_optimizer(model.parameters()), "cpu",
                        ("rgb",))
    with pytest.raises(ValueError, match=r"^train_one_epoch got no batches "
                                         r"\(is the training split empty\?\)$"):
        train_one_epoch(model, [], default_optimizer(model.parameters()), "cpu", ("rgb", "flow"))
    with pytest.raises(ValueError, match=r"^evaluate got no batches "
                                         r"\(is the evaluation split empty\?\)$"):
        evaluate(model, [], "cpu", ("rgb", "flow"))


def test_evaluate_reaches_probabilities_through_a_data_parallel_wrapper():
    """Forward goes through a DataParallel wrapper, ``probabilities`` is taken from the model it
    wraps (the wrapper has none): the result is the plain model's."""
    model = tiny_model("late-product")
    streams = model.config.streams
    wrapped = torch.nn.DataParallel(model)
    assert unwrap(wrapped) is model and unwrap(model) is model
    batches = separable_batches(streams, n_batches=2)
    through, plain = evaluate(wrapped, batches, "cpu", streams), evaluate(model, batches, "cpu", streams)
    np.testing.assert_allclose(through.probs, plain.probs)
    assert through.loss == pytest.approx(plain.loss)


class DeviceProbe(torch.nn.Module):
    """Records the device of each input stream and answers zero logits on that device."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, inputs):
        self.seen.append({s: x.device.type for s, x in inputs.items()})
        x = inputs["rgb"]
        return {"rgb": torch.zeros(x.shape[0], 2, device=x.device)}

    def probabilities(self, logits):
        return logits["rgb"].softmax(dim=1)


class LossReached(Exception):
    pass


@pytest.mark.parametrize("run", ["train", "evaluate"])
def test_features_and_labels_are_moved_to_the_given_device(run, monkeypatch):
    """Both the model's inputs and the labels the loss compares them with are put on ``device``
    (here the data-less "meta" device, so the pass stops at the loss)."""
    seen_by_loss = []

    def cross_entropy(logits, labels):
        seen_by_loss.append((logits.device.type, labels.device.type, labels.dtype))
        raise LossReached

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    model = DeviceProbe()
    batches = separable_batches(("rgb",), n_batches=1)
    with pytest.raises(LossReached):
        if run == "train":
            train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), "meta",
                            ("rgb",))
        else:
            evaluate(model, batches, "meta", ("rgb",))
    assert model.seen == [{"rgb": "meta"}]
    assert seen_by_loss == [("meta", "meta", torch.int64)]


def test_parameters_without_a_gradient_are_left_out_of_the_step():
    """Gradients are cleared to None before each backward pass, so a parameter frozen after an
    epoch (no gradient any more) is skipped by the optimiser: weight decay does not move it."""
    model = tiny_model()
    batches = separable_batches(("rgb",), n_batches=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    train_one_epoch(model, batches, opt, "cpu", ("rgb",))
    frozen = next(model.parameters())
    assert frozen.grad is not None
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    train_one_epoch(model, batches, opt, "cpu", ("rgb",))
    torch.testing.assert_close(frozen.detach(), before, rtol=0, atol=0)
    assert frozen.grad is None


@pytest.mark.processes
def test_works_inside_distributed_data_parallel(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = tiny_model("late-product")
        streams = model.config.streams
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        train = separable_batches(streams)
        opt = default_optimizer(ddp.parameters(), lr=1e-2)
        first = train_one_epoch(ddp, train, opt, "cpu", streams)
        for _ in range(5):
            last = train_one_epoch(ddp, train, opt, "cpu", streams)
        assert last < first
        val = separable_batches(streams, n_batches=2, seed=1)
        wrapped = evaluate(ddp, val, "cpu", streams)
        plain = evaluate(model, val, "cpu", streams)
        check_consistent(wrapped, val, ("rgb", "flow"))
        np.testing.assert_allclose(wrapped.probs, plain.probs)
        assert wrapped.top1 == plain.top1 == 1.0
    finally:
        dist.destroy_process_group()
