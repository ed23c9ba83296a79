"""The residual stacked LSTM of Lakhal et al. (2018), its input projection and the two-stream model.

Eq. (1), for l = 1..L:  (c_t^l, m_t^l) = LSTM_l(c_{t-1}^l, m_{t-1}^l, x_t^{l-1});
                        x_t^l = m_t^l + x_t^{l-1}        (x_t^l = m_t^l without the residual).
Eq. (2):                y = softmax(W_y^T m_T^L), from the LAST layer's LSTM output at the LAST
                        step (not x_T^L, which includes the skip).

The skip needs dim(x^0) = h, so the clip features (d_f) are first projected to h by PCA fitted
on the training features (the paper's choice), a learned linear map, or nothing when d_f = h.
Each layer is its own single-layer ``nn.LSTM`` so that it runs the fused (cuDNN) kernel over
the whole sequence; the residual is added between layers.

``ActionModel`` is the one model the trainer builds from a ``ModelConfig``: one stream, mid
fusion (per-stream projections, fused x^0, one shared stack) or late fusion (two independent
networks whose softmax outputs are fused).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn

from reslstm.errors import ConfigError
from reslstm.fusion import ARCHS, FUSION_NAMES, PROJECTIONS, is_late, is_mid, make_fusion, streams_of
from reslstm.pca import PCABasis, pca_basis


# ---------------------------------------------------------------------------------------------
# Input projection d_f -> h
# ---------------------------------------------------------------------------------------------

class InputProjection(nn.Module):
    """Maps clip features (B, T, d_f) to x^0 (B, T, h).

    kind "pca": (x - mean) @ components.T with ``mean`` (d_f,) and ``components`` (h, d_f)
    registered buffers (so checkpoints carry them), set by ``fit_pca`` on training features;
    kind "linear": a learned ``nn.Linear(d_f, h)``; kind "none": identity, needs d_f == h.
    """

    def __init__(self, input_dim: int, hidden_size: int, kind: str = "linear"):
        super().__init__()
        if kind not in PROJECTIONS:
            raise ConfigError(f"unknown input projection {kind!r}; valid: {', '.join(PROJECTIONS)}")
        self.input_dim, self.hidden_size, self.kind = int(input_dim), int(hidden_size), kind
        self.linear = None
        if kind == "none" and input_dim != hidden_size:
            raise ConfigError(
                f"input_proj='none' needs input_dim == hidden_size, got {input_dim} != "
                f"{hidden_size}; use input_proj='linear' or 'pca' to reduce the features"
            )
        if kind == "pca":
            if hidden_size > input_dim:
                raise ConfigError(
                    f"PCA cannot project {input_dim}-d features up to hidden_size={hidden_size}; "
                    "use hidden_size <= input_dim or input_proj='linear'"
                )
            self.register_buffer("mean", torch.zeros(input_dim))
            self.register_buffer("components", torch.zeros(hidden_size, input_dim))
            # uint8, not bool: every collective backend broadcasts it (DDP syncs buffers), and
            # model.to(dtype) leaves integer buffers alone.
            self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))
            self._ready = False  # Python mirror of `fitted`, so forward needs no device sync
            self.register_load_state_dict_post_hook(InputProjection._after_load)
        elif kind == "linear":
            self.linear = nn.Linear(input_dim, hidden_size)

    @staticmethod
    def _after_load(module: "InputProjection", incompatible_keys) -> None:
        module._ready = bool(module.fitted.item())

    @property
    def is_fitted(self) -> bool:
        """Whether forward can run (always true except for an unfitted PCA)."""
        return self.kind != "pca" or self._ready

    @torch.no_grad()
    def fit_pca(self, features: np.ndarray) -> "InputProjection":
        """Fit mean and the top-h principal directions on training features (N, d_f).

        Needs N > h samples (N centred samples span at most N - 1 directions). Signs are fixed
        so that each component's largest-magnitude coefficient is positive (reproducible).
        """
        if self.kind != "pca":
            raise RuntimeError(f"fit_pca called on an input projection of kind {self.kind!r}")
        return self.set_pca(pca_basis(features, self.input_dim))

    @torch.no_grad()
    def set_pca(self, basis: "PCABasis") -> "InputProjection":
        """Take the top-h directions of a basis fitted once (``pca_basis``): the same buffers
        as ``fit_pca`` on the basis's samples, for any h (a sweep fits once per stream)."""
        if self.kind != "pca":
            raise RuntimeError(f"set_pca called on an input projection of kind {self.kind!r}")
        if basis.samples <= self.hidden_size:
            raise ConfigError(
                f"PCA to {self.hidden_size} dims needs more than {self.hidden_size} training "
                f"feature vectors, got {basis.samples}; use more clips or input_proj='linear'"
            )
        mean, comps = basis.mean, basis.components[: self.hidden_size]
        self.mean.copy_(torch.from_numpy(mean))
        self.components.copy_(torch.from_numpy(comps))
        self.fitted.fill_(1)
        self._ready = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_f) -> (B, T, h)."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"expected features of dim {self.input_dim}, got shape {tuple(x.shape)}")
        if self.kind == "none":
            return x
        if self.kind == "linear":
            return self.linear(x)
        if not self._ready:
            raise RuntimeError(
                "PCA input projection used before fitting: call fit_pca(train_features) "
                "(ActionModel.input_projections() gives one per stream) or load a checkpoint"
            )
        return (x - self.mean) @ self.components.T  # (B, T, h)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------

class ResLSTM(nn.Module):
    """Residual stacked LSTM, eq. (1)-(2): features (B, T, input_dim) -> logits (B, num_classes).

    ``residual=False`` gives the plain stacked LSTM (x^l = m^l) for ablations. Dropout (p =
    ``dropout``; 0 is the identity) is applied to x^0 before the stack and to m_T^L before the
    classifier, never inside the residual path.
    """

    def __init__(self, input_dim: int, hidden_size: int, num_layers: int, num_classes: int,
                 residual: bool = True, input_proj: str = "linear", dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.residual = bool(residual)
        self.proj = InputProjection(input_dim, hidden_size, input_proj)
        self.layers = nn.ModuleList(
            nn.LSTM(hidden_size, hidden_size, batch_first=True) for _ in range(num_layers)
        )
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_classes, bias=False)  # W_y of eq. (2)

    def stack(self, x0: torch.Tensor) -> torch.Tensor:
        """x^0 (B, T, h) -> m^L (B, T, h), the last layer's LSTM outputs (without the skip)."""
        x = x0
        for i, lstm in enumerate(self.layers):
            m, _ = lstm(x)  # (B, T, h)
            if i == len(self.layers) - 1:
                return m
            x = m + x if self.residual else m
        raise AssertionError("unreachable: num_layers >= 1")

    def forward_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """x^0 (B, T, h) -> logits (B, C) = W_y^T m_T^L."""
        m_last = self.stack(self.drop(x0))[:, -1]  # m_T^L: (B, h)
        return self.classifier(self.drop(m_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, input_dim) -> logits (B, num_classes)."""
        return self.forward_x0(self.proj(x))

    def step_logits_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """x^0 (B, T, h) -> logits after every step (B, T, C) = W_y^T m_t^L, t = 1..T: what the
        model would answer had the video ended at step t (the last step is ``forward_x0``)."""
        return self.classifier(self.drop(self.stack(self.drop(x0))))


class TemporalMeanPool(nn.Module):
    """Baseline without recurrence: mean of x^0 over t, then a linear classifier.

    (B, T, input_dim) -> logits (B, num_classes). Dropout as in ResLSTM (on the pooled x^0).
    """

    def __init__(self, input_dim: int, num_classes: int, hidden_size: int,
                 input_proj: str = "linear", dropout: float = 0.0):
        super().__init__()
        self.proj = InputProjection(input_dim, hidden_size, input_proj)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """x^0 (B, T, h) -> logits (B, C)."""
        return self.classifier(self.drop(x0.mean(dim=1)))  # (B, h) -> (B, C)

    def step_logits_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """x^0 (B, T, h) -> logits of the running mean after every step (B, T, C)."""
        steps = torch.arange(1, x0.shape[1] + 1, dtype=x0.dtype, device=x0.device)
        return self.classifier(self.drop(x0.cumsum(dim=1) / steps[:, None]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, input_dim) -> logits (B, num_classes)."""
        return self.forward_x0(self.proj(x))


# ---------------------------------------------------------------------------------------------
# Config and the two-stream model
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; checkpoints store ``dataclasses.asdict`` of it."""

    input_dim: int
    num_classes: int
    hidden_size: int = 1024
    num_layers: int = 2
    residual: bool = True
    input_proj: str = "linear"  # "pca" | "linear" | "none"
    dropout: float = 0.0
    arch: str = "reslstm"  # "reslstm" | "meanpool"
    fusion: str = "rgb"  # "rgb" | "flow" | "mid-sum" | "mid-product" | "late-{product,sum,weighted}"

    def __post_init__(self):
        for name in ("input_dim", "num_classes", "hidden_size", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.input_proj not in PROJECTIONS:
            raise ConfigError(f"ModelConfig.input_proj {self.input_proj!r} unknown; valid: {PROJECTIONS}")
        if self.arch not in ARCHS:
            raise ConfigError(f"ModelConfig.arch {self.arch!r} unknown; valid: {ARCHS}")
        if self.fusion not in FUSION_NAMES:
            raise ConfigError(f"ModelConfig.fusion {self.fusion!r} unknown; valid: {FUSION_NAMES}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def streams(self) -> tuple[str, ...]:
        """The input streams the model reads: ("rgb",), ("flow",) or ("rgb", "flow")."""
        return streams_of(self.fusion)

    @property
    def heads(self) -> tuple[str, ...]:
        """The keys of ActionModel.forward's output (one cross-entropy loss per head)."""
        if is_mid(self.fusion):
            return ("mid",)
        return self.streams

    @classmethod
    def from_dict(cls, config: Mapping) -> "ModelConfig":
        """Inverse of ``dataclasses.asdict``; unknown keys are an error (not silently dropped)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(config))

    def to_dict(self) -> dict:
        return asdict(self)


def _network(cfg: ModelConfig, input_dim: int, input_proj: str) -> nn.Module:
    if cfg.arch == "reslstm":
        return ResLSTM(input_dim, cfg.hidden_size, cfg.num_layers, cfg.num_classes,
                       residual=cfg.residual, input_proj=input_proj, dropout=cfg.dropout)
    return TemporalMeanPool(input_dim, cfg.num_classes, cfg.hidden_size, input_proj, cfg.dropout)


class ActionModel(nn.Module):
    """The model the trainer builds: one stream, mid fusion or late fusion (see ModelConfig).

    - "rgb" / "flow": one network on that stream; heads {stream}.
    - "mid-sum" / "mid-product": per-stream input projections to h, x^0 fused element-wise,
      one shared stack and classifier; head {"mid"}.
    - "late-*": two independent networks, one loss each; heads {"rgb", "flow"}; their softmax
      outputs are fused by ``probabilities``.
    """

    def __init__(self, config: ModelConfig | Mapping):
        super().__init__()
        if not isinstance(config, ModelConfig):
            config = ModelConfig.from_dict(config)
        self.config = config
        if is_mid(config.fusion):
            self.projections = nn.ModuleDict(
                {s: InputProjection(config.input_dim, config.hidden_size, config.input_proj)
                 for s in config.streams}
            )
            # The shared stack reads the fused x^0, already of size h.
            self.core = _network(config, config.hidden_size, "none")
            self.mid = make_fusion(config.fusion)
        else:
            self.nets = nn.ModuleDict(
                {s: _network(config, config.input_dim, config.input_proj) for s in config.streams}
            )
        self.late = make_fusion(config.fusion) if is_late(config.fusion) else None

    @property
    def streams(self) -> tuple[str, ...]:
        return self.config.streams

    @property
    def heads(self) -> tuple[str, ...]:
        return self.config.heads

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """inputs: {stream: (B, T, d_f)} -> {head: logits (B, C)}."""
        missing = [s for s in self.streams if s not in inputs]
        if missing:
            raise KeyError(
                f"fusion {self.config.fusion!r} needs streams {list(self.streams)}, "
                f"missing {missing} (got {sorted(inputs)})"
            )
        if is_mid(self.config.fusion):
            x0 = self.mid(self.projections["rgb"](inputs["rgb"]),
                          self.projections["flow"](inputs["flow"]))  # (B, T, h)
            return {"mid": self.core.forward_x0(x0)}
        return {s: self.nets[s](inputs[s]) for s in self.streams}

    def step_logits(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """inputs: {stream: (B, T, d_f)} -> {head: logits after every step (B, T, C)}; step T
        is ``forward``'s answer (up to float rounding)."""
        if is_mid(self.config.fusion):
            x0 = self.mid(self.projections["rgb"](inputs["rgb"]),
                          self.projections["flow"](inputs["flow"]))
            return {"mid": self.core.step_logits_x0(x0)}
        return {s: self.nets[s].step_logits_x0(self.nets[s].proj(inputs[s])) for s in self.streams}

    def probabilities(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{head: logits (B, C)} -> class probabilities (B, C): a softmax, or the late fusion
        of the two streams' softmaxes (any leading shape, e.g. (B, T, C) per step)."""
        if self.late is not None:
            return self.late(torch.softmax(logits["rgb"], dim=-1),
                             torch.softmax(logits["flow"], dim=-1))
        (head,) = self.heads
        return torch.softmax(logits[head], dim=-1)

    def input_projections(self) -> dict[str, InputProjection]:
        """{stream: its InputProjection}, e.g. to fit PCA on each stream's training features."""
        if is_mid(self.config.fusion):
            return dict(self.projections.items())
        return {s: net.proj for s, net in self.nets.items()}


def build_model(config: ModelConfig | Mapping) -> ActionModel:
    """The ActionModel for ``config`` (a ModelConfig or its ``asdict`` form)."""
    return ActionModel(config)
