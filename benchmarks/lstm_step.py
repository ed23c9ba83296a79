"""Training-step throughput of ResLSTM against one fused multi-layer nn.LSTM.

ResLSTM runs its L layers as L single-layer nn.LSTM calls with the residual added in between;
the baseline is one nn.LSTM(h, h, num_layers=L) with the same linear head on the last step's
output. Both take h-dimensional inputs (ResLSTM with input_proj="none"), so the only difference
is the per-layer split and the skip additions. One step = forward, cross-entropy, backward,
RMSProp step. Steps of the two models are interleaved (alternating which goes first) so that
clock or load drift hits both alike.

    python benchmarks/lstm_step.py              # CUDA when available, else CPU with fewer steps
    python benchmarks/lstm_step.py --steps 50 --device cuda

Prints steps/s of both and the ratio ResLSTM / fused (target: >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from timing import device_name, sync

from reslstm.model import ResLSTM
from reslstm.training import default_optimizer


class FusedLSTM(nn.Module):
    """The baseline: one cuDNN-fused L-layer LSTM, no residual, W_y on the last step's output."""

    def __init__(self, hidden_size: int, num_layers: int, num_classes: int):
        super().__init__()
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.classifier = nn.Linear(hidden_size, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, _ = self.lstm(x)  # (B, T, h)
        return self.classifier(m[:, -1])  # (B, C)


def timed_step(model, optimizer, x, y, device) -> float:
    """Seconds for one forward/backward/RMSProp step, measured between device syncs."""
    sync(device)
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync(device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 30 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 5 on CUDA, 1 on CPU)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--T", type=int, default=25)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=101)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    steps = args.steps if args.steps is not None else (30 if on_gpu else 5)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)

    torch.manual_seed(0)
    res = ResLSTM(args.hidden, args.hidden, args.layers, args.classes, input_proj="none").to(device)
    fused = FusedLSTM(args.hidden, args.layers, args.classes).to(device)
    opts = {"reslstm": default_optimizer(res.parameters()), "fused": default_optimizer(fused.parameters())}
    models = {"reslstm": res, "fused": fused}
    x = torch.randn(args.batch, args.T, args.hidden, device=device)  # (B, T, h)
    y = torch.randint(0, args.classes, (args.batch,), device=device)

    for _ in range(warmup):
        for name in models:
            timed_step(models[name], opts[name], x, y, device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(steps):
        order = ("reslstm", "fused") if i % 2 == 0 else ("fused", "reslstm")
        for name in order:
            times[name].append(timed_step(models[name], opts[name], x, y, device))

    print(f"device: {device_name(device)}; torch {torch.__version__}")
    print(f"B={args.batch} T={args.T} h={args.hidden} L={args.layers} C={args.classes}; "
          f"{warmup} warm-up + {steps} timed steps each, interleaved")
    rate = {}
    for name, ts in times.items():
        rate[name] = len(ts) / sum(ts)
        print(f"  {name:8s} {rate[name]:8.3f} steps/s   (median {1e3 * statistics.median(ts):8.1f} ms/step)")
    # Paired ratio: step i of each model ran back to back, so a load spike from another process
    # usually hits one pair; its median is the figure to trust on a shared machine.
    paired = statistics.median(f / r for r, f in zip(times["reslstm"], times["fused"]))
    print(f"ratio reslstm/fused: {rate['reslstm'] / rate['fused']:.3f}x from total time, "
          f"{paired:.3f}x median of paired steps  (target >= 0.9x)")


if __name__ == "__main__":
    main()
