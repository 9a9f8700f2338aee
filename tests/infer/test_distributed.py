"""Training and evaluation across processes (gloo on CPU, two forked ranks on 127.0.0.1)."""

import math
import multiprocessing
import os
import shutil
import socket
import traceback

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pvae.evaluation import log_likelihood
from pvae.infer.checkpoint import load_checkpoint
from pvae.infer.distributed import (
    DistributedContext,
    DistributedError,
    GradientReducer,
    derive_seed,
    env_world,
    init_distributed,
    rank_seed,
    shutdown,
)
from pvae.infer.train import LAST, fit

DIM, LATENT = 4, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(fn, world_size, tmp_path, *, timeout=60.0, expect_failure=()):
    """Runs ``fn(ctx)`` on ``world_size`` forked ranks; returns what each returned (rank
    order). Fails the test if a rank raises (unless its rank is in ``expect_failure``) or if
    the ranks are not done within ``timeout`` seconds (a hang)."""
    port = free_port()
    context = multiprocessing.get_context("fork")

    def worker(rank):
        torch.set_num_threads(1)
        out = tmp_path / f"rank{rank}.pt"
        try:
            ctx = init_distributed(
                rank, world_size, init_method=f"tcp://127.0.0.1:{port}", timeout=20.0
            )
            try:
                torch.save({"ok": fn(ctx)}, out)
            finally:
                shutdown(ctx)
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            torch.save(
                {"error": f"{type(error).__name__}: {error}", "tb": traceback.format_exc()}, out
            )
            os._exit(1)

    processes = [context.Process(target=worker, args=(rank,)) for rank in range(world_size)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert not hung, f"ranks {hung} hung"
    results = []
    for rank in range(world_size):
        path = tmp_path / f"rank{rank}.pt"
        payload = torch.load(path, weights_only=False) if path.exists() else {"error": "no result"}
        if "error" in payload:
            if rank in expect_failure:
                results.append(payload)
                continue
            pytest.fail(f"rank {rank}: {payload['error']}\n{payload.get('tb', '')}")
        results.append(payload.get("ok"))
        path.unlink()
    return results


class Tiny(nn.Module):
    """A linear-Gaussian VAE; with ``stochastic=False`` its guide is a point mass, so its ELBO
    and gradients are deterministic (no sampling noise to differ between runs)."""

    def __init__(self, stochastic: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(DIM, 2 * LATENT)
        self.decoder = nn.Linear(LATENT, DIM)
        self.stochastic = stochastic

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        loc, log_scale = self.encoder(x).chunk(2, dim=-1)
        with pyro.plate("data", x.shape[0]):
            if self.stochastic:
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
            else:
                pyro.sample("z", dist.Delta(loc).to_event(1))


def tiny_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g) @ torch.randn(DIM, DIM, generator=g) + 1.0


class UnionBatches:
    """One process's view of a two-rank run: step i's batch is the ranks' step-i batches
    together (the ranks' contiguous shards of each epoch's permutation)."""

    def __init__(self, x, batch_size, world_size, epochs, seed):
        self.dataset = x
        generator = torch.Generator().manual_seed(seed)
        n, local = len(x), batch_size // world_size
        self.epochs = []
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            shares = [
                order[r * n // world_size : (r + 1) * n // world_size] for r in range(world_size)
            ]
            steps = max(math.ceil(len(share) / local) for share in shares)
            self.epochs.append(
                [
                    x[torch.cat([share[i * local : (i + 1) * local] for share in shares])]
                    for i in range(steps)
                ]
            )
        self.calls = 0

    def __len__(self):
        return len(self.dataset)

    def __iter__(self):
        # The first call is fit's probe (any batch will do), then one call per epoch.
        epoch = max(0, self.calls - 1)
        self.calls += 1
        return iter(self.epochs[epoch])


def params_of(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# 13 units over 2 ranks: shares of 6 and 7, local batches of 2: rank 0 takes 3 steps and one
# zero-weighted step while rank 1 takes its 4th (a batch of 1).
N, BATCH, EPOCHS, SEED = 13, 4, 2, 5


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
    x, valid = tiny_data(N), tiny_data(7, seed=1)
    common = dict(epochs=EPOCHS, batch_size=BATCH, seed=SEED, lr=0.05, progress=False)

    def train(ctx):
        tiny = Tiny()
        result = fit(
            tiny.model,
            tiny.guide,
            x,
            valid_data=valid,
            checkpoint_dir=tmp_path / "run",
            distributed=ctx,
            **common,
        )
        return params_of(tiny), result.history

    (params0, history0), (params1, history1) = launch(train, 2, tmp_path)
    one = Tiny()
    single = fit(
        one.model, one.guide, UnionBatches(x, BATCH, 2, EPOCHS, SEED), valid_data=valid, **common
    )
    for key, value in params_of(one).items():
        assert torch.equal(params0[key], params1[key])  # the ranks agree exactly
        assert torch.allclose(params0[key], value, atol=1e-5, rtol=1e-5), key
    assert history0 == history1
    for distributed, alone in zip(history0, single.history, strict=True):
        for key in ("train_bound", "valid_elbo", "valid_bound"):
            assert distributed[key] == pytest.approx(alone[key], rel=1e-5), key
    saved = load_checkpoint(tmp_path / "run" / LAST)
    assert saved["world_size"] == 2 and len(saved["rank_rng"]) == 2
    assert saved["epoch"] == EPOCHS and saved["step"] == 0


def test_a_plain_function_model_trains_under_two_processes(tmp_path):
    # Parameters in pvae's private pyro.param store; a point-mass guide keeps the gradients
    # deterministic, so two processes must match one.
    x = torch.randn(N, 3) + 2.0

    def model(x_):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", x_.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1), obs=x_)

    def guide(x_):
        w = pyro.param("w", torch.zeros(3, 1))
        b = pyro.param("b", torch.zeros(1))
        with pyro.plate("data", x_.shape[0]):
            pyro.sample("z", dist.Delta(x_ @ w + b).to_event(1))

    common = dict(epochs=6, batch_size=BATCH, lr=0.05, seed=SEED, progress=False)

    def train(ctx):
        result = fit(model, guide, x, distributed=ctx, **common)
        return {k: v.detach().clone() for k, v in result.param_state["params"].items()}

    first, second = launch(train, 2, tmp_path)
    alone = fit(model, guide, UnionBatches(x, BATCH, 2, 6, SEED), **common).param_state["params"]
    assert set(first) == {"loc", "w", "b"}
    for name, value in alone.items():
        assert torch.equal(first[name], second[name])
        assert torch.allclose(first[name], value.detach(), atol=1e-5, rtol=1e-5), name
    assert first["loc"].abs().min() > 0.1  # trained (from 0 towards the data's mean, 2)


def test_distributed_log_likelihood_equals_one_process(tmp_path):
    tiny = Tiny(stochastic=True)
    x = tiny_data(11)
    options = dict(num_samples=7, batch_size=3, seed=4)

    def evaluate(ctx):
        return log_likelihood(tiny.model, tiny.guide, x, distributed=ctx, **options)

    first, second = launch(evaluate, 2, tmp_path)
    alone = log_likelihood(tiny.model, tiny.guide, x, **options)
    assert first.shape == (11,) and torch.equal(first, second)
    assert torch.allclose(first, alone, atol=1e-6)
    # The seed fixes the estimate; without it, the draws come from torch's generator.
    assert not torch.allclose(
        alone, log_likelihood(tiny.model, tiny.guide, x, num_samples=7, batch_size=3, seed=5)
    )


def test_a_killed_rank_fails_the_others_and_resume_continues_bit_for_bit(tmp_path):
    x = tiny_data(N)
    common = dict(epochs=3, batch_size=BATCH, seed=SEED, lr=0.05, progress=False)

    def run(folder, crash_at=None):
        def train(ctx):
            tiny = Tiny(stochastic=True, seed=ctx.rank + 10)  # rank 0's initialisation wins
            calls = {"n": 0}

            def model(x_):
                if torch.is_grad_enabled():
                    calls["n"] += 1
                    if ctx.rank == 1 and calls["n"] == crash_at:
                        os._exit(3)  # killed mid-epoch, without a word to the others
                return tiny.model(x_)

            result = fit(
                model,
                tiny.guide,
                x,
                checkpoint_dir=tmp_path / folder,
                checkpoint_every=1,
                resume=True,
                distributed=ctx,
                **common,
            )
            return params_of(tiny), result.history

        return train

    uninterrupted = launch(run("full"), 2, tmp_path)
    # Rank 1 dies in its 6th step (epoch 2, of 4 steps each): rank 0 fails in that step's
    # all-reduce instead of hanging.
    failed = launch(run("part", crash_at=6), 2, tmp_path, expect_failure=(0, 1))
    assert "DistributedError" in failed[0]["error"] and "--resume" in failed[0]["error"]
    assert load_checkpoint(tmp_path / "part" / LAST)["epoch"] == 1
    shutil.copytree(tmp_path / "part", tmp_path / "alone")
    resumed = launch(run("part"), 2, tmp_path)
    for (params, history), (full_params, full_history) in zip(resumed, uninterrupted, strict=True):
        assert [h["epoch"] for h in history] == [1, 2, 3]
        assert [h["train_bound"] for h in history] == [h["train_bound"] for h in full_history]
        for key, value in full_params.items():
            assert torch.equal(params[key], value), key
    # One process resumes the two's mid-epoch checkpoint: its epoch restarts, nothing is lost.
    tiny = Tiny(stochastic=True)
    with pytest.warns(UserWarning, match="restarts from its first step"):
        alone = fit(
            tiny.model, tiny.guide, x, checkpoint_dir=tmp_path / "alone", resume=True, **common
        )
    assert [h["epoch"] for h in alone.history] == [1, 2, 3]
    first = uninterrupted[0][1][0]
    assert alone.history[0]["train_bound"] == first["train_bound"]  # from the checkpoint


def test_units_weighted_gradients_and_seeds(tmp_path):
    # A rank without a batch adds nothing; a parameter no rank touched keeps no gradient.
    def reduce(ctx):
        a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
        if ctx.rank == 0:
            a.grad = torch.tensor([1.0, 2.0, 3.0])
            units = 3
        else:
            units = 0
        total, (flag,) = GradientReducer(ctx, [a, b]).reduce(units, (ctx.rank == 1,))
        return a.grad.clone(), b.grad, total, flag

    results = launch(reduce, 2, tmp_path)
    for grad, missing, total, flag in results:
        assert torch.equal(grad, torch.tensor([1.0, 2.0, 3.0])) and missing is None
        assert total == 3 and flag == 1
    assert rank_seed(7, 0, 1) == 7  # one process: the run's seed itself
    assert len({rank_seed(7, r, 2) for r in range(2)} | {7}) == 3
    assert derive_seed(-1, 2) == derive_seed(-1, 2) < 2**32


def test_environment_and_batch_checks(monkeypatch):
    assert env_world({}) is None
    assert env_world({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(ValueError, match="not a valid process"):
        env_world({"RANK": "2", "WORLD_SIZE": "2"})
    ctx = DistributedContext(0, 2, 0, torch.device("cpu"))
    tiny = Tiny()
    with pytest.raises(ValueError, match="multiple of the world size"):
        fit(tiny.model, tiny.guide, tiny_data(8), batch_size=3, distributed=ctx, progress=False)
    assert issubclass(DistributedError, RuntimeError)


def test_pvae_train_nproc_runs_torchrun_and_rank_0_alone_writes(tmp_path, data_dir):
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "pvae.cli", "train", "--nproc", "2", "--dataset", "binarized_mnist",
        "--train-size", "60", "--epochs", "1", "--batch-size", "20", "--hidden", "16",
        "--latent-dim", "2", "--eval-samples", "4", "--eval-size", "20", "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PVAE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test NLL") == 1  # rank 0 prints, rank 1 does not
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and "--nproc" not in config["command"]
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    saved = load_checkpoint(out / "checkpoints" / LAST)
    assert saved["world_size"] == 2 and saved["config"]["batch_size"] == 20


def test_nproc_is_removed_from_the_command_torchrun_repeats():
    from pvae.cli import _without_nproc

    argv = ["train", "--nproc", "2", "--epochs", "1", "--nproc=3", "--npr", "4", "--no-progress"]
    assert _without_nproc(argv) == ["train", "--epochs", "1", "--no-progress"]


def test_a_dataloader_is_shared_by_batches(tmp_path):
    # A re-iterable of batches: each rank takes every other batch (5 batches: 3 and 2 steps).
    x = tiny_data(10)
    loader = torch.utils.data.DataLoader(x, batch_size=2)

    def train(ctx):
        tiny = Tiny()
        result = fit(tiny.model, tiny.guide, loader, epochs=1, progress=False, distributed=ctx)
        return params_of(tiny), result.history[0]["train_bound"]

    (params0, bound0), (params1, bound1) = launch(train, 2, tmp_path)
    assert bound0 == bound1 and all(torch.equal(params0[k], params1[k]) for k in params0)


def test_pvae_evaluate_nproc_shares_the_data_and_matches_seeded_batches(tmp_path, data_dir):
    """``pvae evaluate --nproc 2`` prints once, writes one file, and gives exactly the numbers
    of one process with per-batch seeds (``evaluate_model(..., seeded_batches=True)``)."""
    import json
    import subprocess
    import sys

    from pvae.runs import load_run
    from pvae.runs.evaluate import evaluate_model
    from pvae.runs.train import load_split

    out = tmp_path / "run"
    env = {**os.environ, "PVAE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    train = [
        sys.executable, "-m", "pvae.cli", "train", "--dataset", "binarized_mnist",
        "--train-size", "60", "--epochs", "1", "--batch-size", "20", "--hidden", "16",
        "--latent-dim", "2", "--eval-samples", "4", "--eval-size", "20", "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(train, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    evaluate = [
        sys.executable, "-m", "pvae.cli", "evaluate", str(out), "--nproc", "2",
        "--eval-samples", "6", "--eval-size", "30", "--seed", "3", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test NLL") == 1  # rank 0 prints, rank 1 does not
    written = json.loads((out / "evaluation_test_K6_n30_seed3.json").read_text())
    assert written["world_size"] == 2 and written["eval_size"] == 30

    model, config = load_run(out, "best")
    data = load_split(config["dataset"], "test", size=30, progress=False)
    alone = evaluate_model(model, data, num_samples=6, seed=3, seeded_batches=True, progress=False)
    assert math.isclose(written["nll"], alone["nll"], rel_tol=0, abs_tol=1e-6)
    single_stream = evaluate_model(model, data, num_samples=6, seed=3, progress=False)
    assert single_stream["nll"] != alone["nll"]  # the other seeding: another estimate
    with pytest.raises(ValueError, match="per-batch seeds"):
        evaluate_model(model, data, num_samples=6, distributed=object(), seeded_batches=False)
