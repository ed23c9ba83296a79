"""Training on GPUs (NCCL): runs only where CUDA is present, and says so when it is not.

One GPU: a worker trains on CUDA and learns; its checkpoint gives the same probabilities on the
GPU as on the CPU (TF32 off: fp32 on both sides). Two or more GPUs: two workers over NCCL keep
their weights equal, every epoch.
"""

import pytest
import torch

from featurestore_fixture import make_feature_store
from reslstm.checkpoint import load_checkpoint
from reslstm.configs import TrainConfig
from reslstm.distributed.train import trainer

pytestmark = [pytest.mark.gpu, pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device; none on this machine")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_feature_store(tmp_path_factory.mktemp("store"), seed=12)


def _cfg(store, out, workers):
    return TrainConfig(features=str(store.root), out=str(out), fusion="late-product", hidden=16,
                       depth=2, T=5, epochs=3, batch_size=8, lr=1e-2, workers=workers,
                       use_gpu="yes", cpus_per_worker=0.5)


def test_one_gpu_worker_trains_and_its_checkpoint_predicts_alike_on_cpu(ray_local, store, tmp_path):
    res = trainer.fit(_cfg(store, tmp_path / "one", 1))
    assert res.best_metrics["val_top1"] >= 0.5
    model, _ = load_checkpoint(res.best_checkpoint)
    x = {s: torch.randn(6, 5, store.feature_dim) for s in ("rgb", "flow")}
    allow = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            cpu = model.probabilities(model(x))
            gpu_model = model.cuda()
            gpu = gpu_model.probabilities(gpu_model({k: v.cuda() for k, v in x.items()})).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across workers needs 2 GPUs")
def test_two_gpu_workers_over_nccl_keep_equal_weights(ray_local, store, tmp_path):
    res = trainer.fit(_cfg(store, tmp_path / "two", 2))
    assert res.best_metrics["val_top1"] >= 0.5
    assert all(h["weights_spread"] == 0.0 for h in res.history)
