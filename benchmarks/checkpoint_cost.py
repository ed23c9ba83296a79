"""The cost of fault tolerance: writing an epoch's checkpoint against training the epoch.

Every epoch, rank 0 writes a checkpoint (``distributed.train.checkpoints.report``): the model, the
optimizer state (what a restarted worker resumes from), config and history, saved with
``torch.save`` into a temporary folder that Ray Train then copies into the run's storage. This
times both halves of that write (save, then the copy into a storage folder) and one training
epoch of the same model, interleaved, and prints the ratio.

    python benchmarks/checkpoint_cost.py                      # paper size: h 1024, L 2, T 25
    python benchmarks/checkpoint_cost.py --videos 9537        # UCF-101 split 1's train size

One epoch here is ``--videos`` videos in batches of 32 on this machine's device; checkpoints
are the size they are whatever the data set, so the ratio shrinks as epochs grow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch

from reslstm.checkpoint import build_payload
from reslstm.model import ModelConfig, build_model
from reslstm.training import default_optimizer, train_one_epoch


def epoch_seconds(model, optimizer, batches, device) -> float:
    t = time.perf_counter()
    train_one_epoch(model, batches, optimizer, device, ("rgb",))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def checkpoint_seconds(model, optimizer, storage: str) -> tuple[float, int]:
    """(seconds, bytes) to save the payload and copy it into ``storage`` (as Ray Train does)."""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        labels = [f"class_{i}" for i in range(model.config.num_classes)]
        torch.save(build_payload(model, labels, optimizer.state_dict(), epoch=1),
                   os.path.join(tmp, "model.pt"))
        size = os.path.getsize(os.path.join(tmp, "model.pt"))
        target = os.path.join(storage, f"epoch_{time.time_ns()}")
        shutil.copytree(tmp, target)
    elapsed = time.perf_counter() - t
    shutil.rmtree(target)
    return elapsed, size


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--T", type=int, default=25)
    p.add_argument("--classes", type=int, default=101)
    p.add_argument("--videos", type=int, default=640, help="videos per epoch (default 640)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    model = build_model(ModelConfig(input_dim=a.hidden, num_classes=a.classes, hidden_size=a.hidden,
                                    num_layers=a.depth, input_proj="none", fusion="rgb")).to(device)
    optimizer = default_optimizer(model.parameters())
    g = torch.Generator().manual_seed(0)
    batches = [{"rgb": torch.randn(a.batch_size, a.T, a.hidden, generator=g),
                "label": torch.randint(0, a.classes, (a.batch_size,), generator=g)}
               for _ in range(max(1, a.videos // a.batch_size))]
    epoch_seconds(model, optimizer, batches[:2], device)  # warm-up (and optimizer state exists)
    epochs, saves, size = [], [], 0
    with tempfile.TemporaryDirectory() as storage:
        for _ in range(a.repeats):
            epochs.append(epoch_seconds(model, optimizer, batches, device))
            seconds, size = checkpoint_seconds(model, optimizer, storage)
            saves.append(seconds)
    e, c = statistics.median(epochs), statistics.median(saves)
    params = sum(p.numel() for p in model.parameters())
    print(f"ResLSTM h {a.hidden} L {a.depth} T {a.T}, {params / 1e6:.1f}M parameters, {device}")
    print(f"epoch of {len(batches) * a.batch_size} videos: {e:.2f} s (median of {a.repeats})")
    print(f"checkpoint (model + optimizer, {size / 2 ** 20:.0f} MiB, saved and copied): {c:.3f} s")
    print(f"checkpoint / epoch: {c / e:.3f} ({100 * c / (e + c):.1f} % of an epoch's wall time)")


if __name__ == "__main__":
    main()
