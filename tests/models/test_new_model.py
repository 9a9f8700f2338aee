"""Adding a model of a new modality means one model class and one dataset class: here a
factor-analysis VAE on real vectors, defined in this file and nowhere else, trains, evaluates,
reports and is diagnosed through the runner without any change to the command line, the
runner, the report or the evaluators."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pvae.data import DatasetSpec, register_dataset
from pvae.data.download import Resource, sha256_file
from pvae.data.registry import DATASETS, shard_positions
from pvae.evaluation import log_likelihood
from pvae.infer.train import TrainConfig
from pvae.models.base import Model, ModelConfig, option
from pvae.models.registry import _REGISTRY, _SMOKE, register_model, smoke_config
from pvae.runs import TrainSpec, diagnose_run, evaluate_run, load_run, train_run


class Vectors:
    """Real vectors ``(N, D)``: the whole modality."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values

    def __len__(self) -> int:
        return self.values.shape[0]

    def batches(self, batch_size, *, shuffle=True, generator=None, shard=(0, 1)):
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        share = order[shard_positions(n, shard)]
        for start in range(0, len(share), batch_size):
            yield self.values[share[start : start + batch_size]]

    def model_options(self) -> dict:
        return {"data_dim": self.values.shape[1]}

    def subset(self, n, *, seed=None):
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        index = torch.randperm(len(self), generator=g)[:n] if g is not None else torch.arange(n)
        return Vectors(self.values[index])

    def to(self, device):
        return Vectors(self.values.to(device))


def read_vectors(path: Path, split: str) -> Vectors:
    with np.load(path) as arrays:
        return Vectors(torch.from_numpy(arrays[split]))


@dataclass(frozen=True)
class FactorAnalysisConfig(ModelConfig):
    data_dim: int = option(4, "D, set by the dataset", convert=int)
    latent_dim: int = option(2, "latent dimensions", convert=int)


class FactorAnalysisVAE(Model):
    """z ~ N(0, I); x ~ N(W z + b, diag s^2); q(z | x) = N(A x + c, diag t^2)."""

    Config = FactorAnalysisConfig
    data_keys = ("data_dim",)

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        d, k = self.config.data_dim, self.config.latent_dim
        self.decoder = nn.Linear(k, d)
        self.log_noise = nn.Parameter(torch.zeros(d))
        self.encoder = nn.Linear(d, 2 * k)

    def model(self, x: torch.Tensor) -> None:
        k = self.config.latent_dim
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(k), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), self.log_noise.exp()).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    def batch_args(self, batch):
        return (batch,)


@pytest.fixture
def vectors_and_model(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 2, generator=g)
    values = {
        split: (torch.randn(n, 2, generator=g) @ w.T + 0.3 * torch.randn(n, 4, generator=g))
        .float()
        .numpy()
        for split, n in (("train", 256), ("valid", 64), ("test", 64))
    }
    path = tmp_path / "vectors.npz"
    np.savez(path, **values)
    monkeypatch.setenv("PVAE_DATA_DIR", str(tmp_path))
    register_dataset(
        DatasetSpec(
            name="toy_vectors",
            resource=Resource("vectors.npz", sha256=(sha256_file(path),), sources=()),
            splits=("train", "valid", "test"),
            build=read_vectors,
        )
    )
    register_model("toy_fa", smoke={"latent_dim": 2})(FactorAnalysisVAE)
    yield
    del DATASETS["toy_vectors"]
    del _REGISTRY["toy_fa"], _SMOKE["toy_fa"]


@pytest.mark.statistical
def test_a_new_model_and_modality_run_through_the_runner(vectors_and_model, tmp_path, seed):
    spec = TrainSpec(
        model="toy_fa",
        dataset="toy_vectors",
        model_options=smoke_config("toy_fa"),
        train=TrainConfig(epochs=100, batch_size=64, lr=2e-2, seed=seed),
        eval_samples=50,
        out=tmp_path / "run",
        progress=False,
    )
    with pyro.settings.context(module_local_params=True):
        metrics = train_run(spec)
    first, last = metrics["history"][0], metrics["history"][-1]
    assert last["train_bound"] > first["train_bound"]
    # The data are correlated (rank 2 plus noise): the trained model must beat independent
    # Gaussians fitted to the training data by many standard errors of the paired difference.
    from pvae.data import load_dataset

    train = load_dataset("toy_vectors", "train").values
    test = load_dataset("toy_vectors", "test").values
    independent = dist.Normal(train.mean(0), train.std(0)).log_prob(test).sum(-1)
    model, _ = load_run(spec.run_dir)
    ours = log_likelihood(model.model, model.guide, test, num_samples=200)
    gain = ours - independent
    assert float(gain.mean()) > 5 * float(gain.std()) / math.sqrt(len(gain)), gain
    assert float(ours.mean()) == pytest.approx(-metrics["test_nll"], abs=0.05)
    result = evaluate_run(spec.run_dir, num_samples=50, progress=False)
    assert result["nll"] == pytest.approx(metrics["test_nll"], abs=5 * metrics["test_nll_stderr"])
    diagnostics = diagnose_run(
        spec.run_dir,
        num_data=10,
        num_samples=60,
        ais_steps=10,
        ais_chains=2,
        bdmc_data=2,
        progress=False,
    )
    assert math.isfinite(diagnostics["ais"]["mean"])
    assert (spec.run_dir / "report.md").read_text().count("## Diagnostics") == 1
