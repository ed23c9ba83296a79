"""Clip-feature throughput of each extractor at its standard input, with FLOPs and device usage.

For each model (random-init weights: speed does not depend on their values) at its declared
input (clip_len x input_size^2, RGB), batches of ``--batch`` clips:

- forward: normalised float clips through the model under inference_mode, fp32; on CUDA also
  bf16 autocast, with the bf16 / fp32 speed-up (the baseline measured in the same run);
- pipeline: ``clip_features`` on uint8 frames decoded at resize_short (clips cut, centre-cropped
  and normalised on the device), as a ratio to the bare forward at the same precision;
- GFLOP per clip from torch.utils.flop_counter.FlopCounterMode (run on the meta device), the
  achieved TFLOP/s and its share of the device's dense bf16 peak where known (CPU: n/a).

    python benchmarks/extractors.py                              # every model, CUDA if present
    python benchmarks/extractors.py --models tiny3d,r3d_18,i3d --device cpu --iters 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import device_name, median_seconds
from torch.utils.flop_counter import FlopCounterMode

from reslstm.extractors import available_extractors, clip_features, create_extractor
from reslstm.extractors.runner import autocast_for

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets), matched on the device name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in name:
            return peak
    return None


def flops_per_clip(name: str, clip_len: int, size: int) -> float:
    """FLOPs of one RGB clip, counted on the meta device (no compute, no memory)."""
    with torch.device("meta"):
        model = create_extractor(name, "rgb")
        x = torch.empty(1, 3, clip_len, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())


def bench_model(name: str, device: torch.device, batch: int, iters: int, warmup: int) -> dict:
    ext = create_extractor(name, "rgb").to(device)
    s, size = ext.clip_len, ext.input_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    clips = torch.randint(0, 256, (batch, s, size, size, 3), dtype=torch.uint8, generator=gen).to(device)
    x = ext.normalize(clips)  # (B, 3, s, size, size)
    # Frames for exactly `batch` clips at stride s // 2, decoded at the model's resize_short.
    n = s + (batch - 1) * (s // 2)
    frames = np.random.default_rng(0).integers(0, 256, (n, ext.resize_short, ext.resize_short * 4 // 3, 3), dtype=np.uint8)

    def forward(amp: bool):
        with torch.inference_mode(), autocast_for(device, amp):
            ext(x)

    row = {"name": name, "input": f"{s}x{size}x{size}", "gflop": flops_per_clip(name, s, size) / 1e9}
    row["fp32"] = batch / median_seconds(lambda: forward(False), device, iters, warmup)
    best_amp = False
    if device.type == "cuda":
        row["bf16"] = batch / median_seconds(lambda: forward(True), device, iters, warmup)
        best_amp = row["bf16"] > row["fp32"]
    best = row["bf16"] if best_amp else row["fp32"]
    pipe = median_seconds(lambda: clip_features(ext, frames, s, s // 2, 1, batch, device, amp=best_amp), device, iters, warmup)
    row["pipeline"] = batch / pipe
    row["pipe_ratio"] = row["pipeline"] / best
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(available_extractors()), help="comma-separated extractor names")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    parser.add_argument("--batch", type=int, default=8, help="clips per forward pass")
    parser.add_argument("--iters", type=int, default=None, help="timed runs (default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs (default 3 on CUDA, 1 on CPU)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    iters = args.iters or (20 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(available_extractors()))
    if unknown:
        parser.error(f"unknown models {unknown}; available: {', '.join(available_extractors())}")
    peak = peak_tflops(device)

    print(f"device: {device_name(device)}; batch {args.batch} clips; {iters} timed runs after {warmup} warm-up; "
          "random-init weights (speed only)")
    print(f"peak dense bf16: {f'{peak:.0f} TFLOP/s' if peak else 'n/a'}")
    head = f"{'model':<12} {'input':<11} {'GFLOP/clip':>10} {'fp32 clip/s':>11} {'fp32 TFLOP/s':>12}"
    if on_gpu:
        head += f" {'bf16 clip/s':>11} {'bf16 TFLOP/s':>12} {'bf16/fp32':>9}"
    head += f" {'of peak':>8} {'pipeline clip/s':>15} {'pipe/fwd':>8}"
    print(head)
    for name in names:
        row = bench_model(name, device, args.batch, iters, warmup)
        tf32 = row["fp32"] * row["gflop"] / 1e3
        line = f"{name:<12} {row['input']:<11} {row['gflop']:>10.2f} {row['fp32']:>11.1f} {tf32:>12.4f}"
        achieved = tf32
        if on_gpu:
            tbf = row["bf16"] * row["gflop"] / 1e3
            achieved = max(tf32, tbf)
            line += f" {row['bf16']:>11.1f} {tbf:>12.2f} {row['bf16'] / row['fp32']:>8.2f}x"
        share = f"{100 * achieved / peak:.1f}%" if peak else "n/a"
        line += f" {share:>8} {row['pipeline']:>15.1f} {row['pipe_ratio']:>7.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
