"""Every registered model on a GPU (issue #16). These tests need CUDA and skip cleanly
without it; ``benchmarks/gpu.sh`` runs them with the GPU benchmarks on a machine that has one.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch

from pvae.infer.train import TrainConfig, fit, to_device
from pvae.models.registry import available_models, smoke_config, smoke_dataset
from pvae.runs import TrainSpec, load_run, train_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("name", available_models())
def test_every_model_trains_and_evaluates_on_cuda(name, tmp_path):
    """Two steps, the evaluation and the checkpoint of each model's smoke run on ``cuda``:
    finite numbers, and every parameter and buffer of the trained model on the GPU."""
    spec = TrainSpec(
        model=name,
        dataset=smoke_dataset(name),
        model_options=smoke_config(name),
        train=TrainConfig(epochs=1, batch_size=32, seed=0, device="cuda"),
        train_size=64,
        eval_samples=5,
        eval_size=20,
        num_labels=20,
        out=tmp_path / "run",
        progress=False,
    )
    with pyro.settings.context(module_local_params=True):
        metrics = train_run(spec)
    assert math.isfinite(metrics["history"][0]["train_bound"])
    assert math.isfinite(metrics["test_nll"])
    model, _ = load_run(tmp_path / "run", "best", device="cuda")
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.device.type == "cuda" for t in tensors)


def test_batches_reach_the_gpu_from_pinned_memory():
    batch = (torch.rand(4, 3), torch.arange(4))
    moved = to_device(batch, "cuda")
    assert all(t.device.type == "cuda" for t in moved)
    assert torch.equal(moved[0].cpu(), batch[0]) and torch.equal(moved[1].cpu(), batch[1])


def test_training_steps_on_cuda_count_their_host_synchronisations():
    """The default VAE's step under CUDA's sync-debug mode: each synchronisation the step
    makes is a warning; the step makes a bounded number (the loss's finiteness check, and the
    progress bar's occasional read), not one per site or per parameter."""
    from pvae.data import load_dataset
    from pvae.models import build_model

    data = load_dataset("binarized_mnist", "train", size=256, size_seed=0, progress=False)
    vae = build_model("vae", input_shape=(1, 28, 28)).cuda()
    config = TrainConfig(epochs=1, batch_size=64, device="cuda")
    fit(vae.model, vae.guide, data, config=config, progress=False)  # warm-up: kernels, caches
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(vae.model, vae.guide, data, config=config, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    steps = 256 // 64
    print(f"{len(syncs)} synchronisations in {steps} steps and the epoch's end")
    assert len(syncs) <= 4 * steps + 20
