"""One training epoch and one evaluation pass, in plain PyTorch.

Batches are dicts holding one float tensor (B, T, d_f) per stream name and "label" (B,) int64.
The loss is the sum over the model's heads of the cross-entropy (late fusion trains its two
networks with one loss each; their sum has the same gradients). Both functions take their
inputs explicitly and work on an ``ActionModel`` or on one wrapped in DistributedDataParallel:
forward goes through the wrapper (so gradients synchronise), ``probabilities`` is reached on
the wrapped module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reslstm.metrics import score


def default_optimizer(params, lr: float = 1e-3, **options) -> torch.optim.RMSprop:
    """RMSProp with lr 1e-3, the paper's optimiser; ``options`` go to torch.optim.RMSprop."""
    return torch.optim.RMSprop(params, lr=lr, **options)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel/DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _move(batch: Mapping, device, streams: Sequence[str]) -> tuple[dict, torch.Tensor]:
    missing = [s for s in (*streams, "label") if s not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; it has {sorted(batch)} (streams: {list(streams)})")
    inputs = {s: batch[s].to(device, dtype=torch.float32, non_blocking=True) for s in streams}
    labels = batch["label"].to(device, dtype=torch.long, non_blocking=True)  # (B,)
    return inputs, labels


def _loss(logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy of the batch."""
    return sum(F.cross_entropy(head_logits, labels) for head_logits in logits.values())


def train_one_epoch(model: nn.Module, batches: Iterable[Mapping], optimizer: torch.optim.Optimizer,
                    device, streams: Sequence[str], grad_clip: float | None = None) -> float:
    """One pass over ``batches``; returns the sample-weighted mean loss.

    ``grad_clip`` optionally clips the global gradient norm (off by default, as in the paper).
    """
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        inputs, labels = _move(batch, device, streams)
        logits = model(inputs)  # {head: (B, C)}
        loss = _loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
    if count == 0:
        raise ValueError("train_one_epoch got no batches (is the training split empty?)")
    return total / count


@dataclass
class EvalResult:
    """Mean loss, top-1/top-5/mean class accuracy of the (fused) probabilities, the
    probabilities (N, C) and labels (N,) in batch order, and the top-1 of each head alone."""

    loss: float
    top1: float
    top5: float
    probs: np.ndarray
    labels: np.ndarray
    head_top1: dict[str, float] = field(default_factory=dict)
    mean_class_acc: float = float("nan")

    @property
    def predictions(self) -> np.ndarray:
        """(N,) argmax class of ``probs``."""
        return self.probs.argmax(axis=1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Mapping], device,
             streams: Sequence[str]) -> EvalResult:
    """Loss, accuracies and probabilities of ``model`` on ``batches`` (in eval mode)."""
    model.eval()
    inner = unwrap(model)
    total, count = 0.0, 0
    probs, labels_all = [], []
    head_correct: dict[str, int] = {}
    for batch in batches:
        inputs, labels = _move(batch, device, streams)
        logits = model(inputs)  # {head: (B, C)}
        total += float(_loss(logits, labels)) * len(labels)
        count += len(labels)
        for head, head_logits in logits.items():
            hits = int((head_logits.argmax(dim=1) == labels).sum())
            head_correct[head] = head_correct.get(head, 0) + hits
        probs.append(inner.probabilities(logits).float().cpu().numpy())  # (B, C)
        labels_all.append(labels.cpu().numpy())
    if count == 0:
        raise ValueError("evaluate got no batches (is the evaluation split empty?)")
    p, y = np.concatenate(probs), np.concatenate(labels_all)
    return EvalResult(loss=total / count, probs=p, labels=y,
                      head_top1={h: n / count for h, n in head_correct.items()}, **score(p, y))
