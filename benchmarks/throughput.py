"""Training steps per second: pvae's steps against hand-written PyTorch loops, and the K=5000
importance-sampled log-likelihood against a hand-written batched importance sampler.

The identical model (784-400-50 MLP encoder and decoder, Gaussian latent, Bernoulli
likelihood, batch 128, Adam) is trained with three objectives, each by

- ``torch``: a hand-written PyTorch loop of the same modules (the naive loop: torch's default
  Adam), the baseline of every ratio;
- ``torch+fused``: the same loop with torch's fused Adam (``fused=True``), for reference: what
  the optimizer alone buys a hand-written loop;
- ``pvae``: the step ``fit`` runs: pvae's objective on ``pvae.models.VAE``'s Pyro model/guide
  (the cached scoring plan after the first step), ``fit``'s optimizer
  (``pvae.infer.train.make_adam``: fused Adam where torch has it), the finiteness check of the
  loss and the bound summed on the device;
- ``pvae generic``: close to the step before issue 17: pvae's objective without its cached
  plan (``cache_structure=False``), the data range checked in the model and again in the
  guide, torch's default Adam (only the densities of ``pvae.infer.trace.log_prob`` are the
  new ones);
- ``pvae fit()``: for the ELBO, ``pvae.infer.fit`` itself, one epoch per block (its
  per-call set-up, first generic step and epoch end included);
- ``pyro``: Pyro's own ELBO on the same model/guide where Pyro has one
  (``TraceMeanField_ELBO``; ``RenyiELBO(alpha=0, num_particles=5)``, the IWAE bound).

The objectives: the ELBO (analytic KL), IWAE with K=5 [1] and DReG with K=5 [2] (the
hand-written DReG loop reweights the latent's gradient by the squared normalised weights with
a hook, as pvae does). Blocks of steps are interleaved (torch, pvae, ..., torch, ...) in one
process, so that all see the same machine state; the table reports the median over blocks and
the ratio to the hand-written loop. With one thread on a CPU the clock is the process's CPU
time, robust to other jobs on a shared machine; otherwise wall time.

``--eval-images N`` (default 1000; 0: skip) adds the evaluation row: ``log_likelihood`` with
K=5000 on N binarized-MNIST test images against a hand-written batched importance sampler of
the same modules (batches of 100 images, samples in chunks of the size pvae picks), interleaved
over ``--eval-rounds`` rounds. Usage::

    python benchmarks/throughput.py --threads 1 --blocks 7 --steps 40 --device cpu

``--model sentence_vae`` measures text instead (``results/throughput_text.md``): the sentence
VAE (LSTM encoder and decoder, Gaussian latent, 10k-word PTB vocabulary) on the same
length-bucketed PTB batches, in tokens per second, against a hand-written PyTorch loop of the
same modules (teacher-forced decoder, masked cross-entropy, closed-form KL).

References:
    [1] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
        arXiv:1509.00519
    [2] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for Monte
        Carlo Objectives. ICLR 2019. arXiv:1810.04152
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import RenyiELBO, TraceMeanField_ELBO
from torch.nn import functional as F

from pvae.infer.objectives import ELBO, IWAE, PyroObjective
from pvae.infer.train import TrainConfig, fit, make_adam
from pvae.models import VAE

RESULTS = Path(__file__).parent / "results" / "throughput.md"
TEXT_RESULTS = Path(__file__).parent / "results" / "throughput_text.md"
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def plain_step_fn(vae: VAE, optimizer):
    """The same network, trained without Pyro: -ELBO with the closed-form Gaussian KL."""
    encoder, decoder = vae.encoder, vae.decoder

    def step(x, scale):
        loc, sd = encoder(x.reshape(x.shape[0], -1))
        z = loc + sd * torch.randn_like(loc)
        logits = decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(
            logits, x.reshape(x.shape[0], -1), reduction="sum"
        )
        kl = 0.5 * (loc.pow(2) + sd.pow(2) - 1).sum() - sd.log().sum()
        loss = -scale * (log_lik - kl)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def plain_log_weights(encoder, decoder, x, k: int, dreg: bool = False):
    """``log p(x, z_k) - log q(z_k | x)`` of ``k`` samples per datum, ``(k, B)``, and the
    samples; with ``dreg`` log q is taken at stopped parameters (the pathwise term only)."""
    flat = x.reshape(x.shape[0], -1)
    loc, sd = encoder(flat)
    eps = torch.randn(k, *loc.shape, dtype=loc.dtype, device=loc.device)
    z = loc + sd * eps
    logits = decoder(z)
    log_px = -F.binary_cross_entropy_with_logits(
        logits, flat.expand(k, *flat.shape), reduction="none"
    ).sum(-1)
    log_pz = (-0.5 * z.pow(2) - HALF_LOG_2PI).sum(-1)
    if dreg:
        q_loc, q_sd = loc.detach(), sd.detach()
        log_qz = (-0.5 * ((z - q_loc) / q_sd).pow(2) - q_sd.log() - HALF_LOG_2PI).sum(-1)
    else:
        log_qz = (-0.5 * eps.pow(2) - sd.log() - HALF_LOG_2PI).sum(-1)
    return log_px + log_pz - log_qz, z


def plain_iwae_step_fn(vae: VAE, optimizer, k: int = 5, dreg: bool = False):
    """IWAE (or, with ``dreg``, its DReG gradient) of the same modules, written by hand."""
    encoder, decoder = vae.encoder, vae.decoder

    def step(x, scale):
        log_w, z = plain_log_weights(encoder, decoder, x, k, dreg)
        if dreg:
            w = torch.softmax(log_w.detach(), dim=0)
            # The encoder's gradient through z weighted by w^2, the decoder's by w.
            z.register_hook(lambda grad: grad * w.unsqueeze(-1))
            loss = -scale * (w * log_w).sum()
        else:
            loss = -scale * (torch.logsumexp(log_w, dim=0) - math.log(k)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def pvae_step_fn(vae: VAE, optimizer, objective):
    """The step of ``fit``'s loop (pvae/infer/train.py, ``_run_epoch``)."""
    total = torch.zeros((), dtype=torch.float64)

    def step(x, scale):
        nonlocal total
        value = objective(vae.model, vae.guide, x, scale=scale)
        if not torch.isfinite(value.loss):
            raise RuntimeError("diverged")
        optimizer.zero_grad(set_to_none=True)
        value.loss.backward()
        optimizer.step()
        total += value.bound

    return step


def checked_twice(vae: VAE, step):
    """``step`` with the data range checked in the guide and again in the model, as before
    issue 17 (the model forgets the tensor it checked)."""
    from pvae.models.image import _LastChecked

    model = vae.model

    def forgetful_model(x):
        vae._range_checked = _LastChecked()
        return model(x)

    def checked(x, scale):
        vae.model = forgetful_model
        try:
            step(x, scale)
        finally:
            del vae.model

    return checked


def pyro_step_fn(vae: VAE, optimizer, objective: str):
    """Pyro's own ELBO on the same model/guide: ``TraceMeanField_ELBO`` for the ELBO,
    ``RenyiELBO(alpha=0)`` (the IWAE bound, which has no ``differentiable_loss``: its
    ``loss_and_grads``) for IWAE; None where Pyro has none (DReG)."""
    from pvae.infer.trace import data_scale

    if objective == "elbo":
        elbo = PyroObjective(TraceMeanField_ELBO())
        return pvae_step_fn(vae, optimizer, elbo)
    if objective != "iwae":
        return None
    renyi = RenyiELBO(alpha=0, num_particles=5, max_plate_nesting=1)

    def step(x, scale):
        def model(x):
            with data_scale(scale):
                vae.model(x)

        def guide(x):
            with data_scale(scale):
                vae.guide(x)

        optimizer.zero_grad(set_to_none=True)
        renyi.loss_and_grads(model, guide, x)
        optimizer.step()

    return step


def fit_block_fn(vae: VAE, objective: str, batch_size: int, steps: int):
    """``fit`` itself: one epoch of ``steps`` batches per call."""

    def block(data):
        fit(
            vae.model,
            vae.guide,
            data,
            objective=objective,
            config=TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3),
            progress=False,
        )

    return block


def build_runners(objective: str, device: torch.device):
    """The loops compared for one objective: name -> step(x, scale)."""
    names = ["torch", "torch+fused", "pvae", "pvae generic"]
    if objective in ("elbo", "iwae"):
        names.append("pyro")
    runners = {}
    for name in names:
        torch.manual_seed(0)
        vae = VAE(latent_dim=50, hidden=(400,)).to(device)
        params = list(vae.parameters())
        default_adam = torch.optim.Adam(params, lr=1e-3)
        fused_adam = make_adam(params, TrainConfig(lr=1e-3))
        if name.startswith("torch"):
            adam = fused_adam if name == "torch+fused" else default_adam
            if objective == "elbo":
                runners[name] = plain_step_fn(vae, adam)
            else:
                runners[name] = plain_iwae_step_fn(vae, adam, dreg=objective == "dreg")
            continue
        generic = name == "pvae generic"
        if name == "pyro":
            runners[name] = pyro_step_fn(vae, default_adam, objective)
            continue
        if objective == "elbo":
            pvae_objective = ELBO(cache_structure=not generic)
        else:
            pvae_objective = IWAE(5, estimator="dreg" if objective == "dreg" else "standard")
        step = pvae_step_fn(vae, default_adam if generic else fused_adam, pvae_objective)
        runners[name] = checked_twice(vae, step) if generic else step
    return runners


def time_blocks(runners, batches, scale, blocks: int, steps: int, clock, sync, fit_blocks=None):
    """Median seconds per step of each runner over interleaved blocks."""
    for step in runners.values():  # warm-up
        for i in range(5):
            step(batches[i % len(batches)], scale)
    times: dict[str, list[float]] = {name: [] for name in [*runners, *(fit_blocks or {})]}
    for _ in range(blocks):
        for name, step in runners.items():
            sync()
            start = clock()
            for i in range(steps):
                step(batches[i % len(batches)], scale)
            sync()
            times[name].append((clock() - start) / steps)
        for name, block in (fit_blocks or {}).items():
            data = batches[:steps].reshape(-1, *batches.shape[2:])
            sync()
            start = clock()
            block(data)
            sync()
            times[name].append((clock() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def plain_log_likelihood(vae: VAE, x, num_samples: int, batch_size: int, chunk: int):
    """A hand-written batched importance sampler of ``log p(x)``: the encoder once per batch,
    the samples in chunks with a running log-sum-exp."""
    encoder, decoder = vae.encoder, vae.decoder
    out = []
    for start in range(0, x.shape[0], batch_size):
        flat = x[start : start + batch_size].reshape(-1, x[0].numel())
        loc, sd = encoder(flat)
        running = None
        for first in range(0, num_samples, chunk):
            k = min(chunk, num_samples - first)
            eps = torch.randn(k, *loc.shape, dtype=loc.dtype, device=loc.device)
            z = loc + sd * eps
            logits = decoder(z)
            log_px = -F.binary_cross_entropy_with_logits(
                logits, flat.expand(k, *flat.shape), reduction="none"
            ).sum(-1)
            log_w = log_px + (-0.5 * z.pow(2)).sum(-1) - (-0.5 * eps.pow(2) - sd.log()).sum(-1)
            part = torch.logsumexp(log_w, dim=0)
            running = part if running is None else torch.logaddexp(running, part)
        out.append(running - math.log(num_samples))
    return torch.cat(out)


def time_evaluation(args, device, clock, sync) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of the K=5000 evaluation, hand-written and pvae's, and their means."""
    from pvae.data import load_dataset
    from pvae.evaluation.importance import log_likelihood

    test = load_dataset(
        "binarized_mnist", "test", size=args.eval_images, size_seed=0, progress=False
    )
    x = next(iter(test.batches(args.eval_images, shuffle=False)))[0].to(device)
    torch.manual_seed(0)
    vae = VAE(latent_dim=50, hidden=(400,)).to(device).eval()
    k, batch = args.eval_samples, 100
    chunk = max(1, min(k, 20_000_000 // (batch * x[0].numel())))  # log_likelihood's default
    runs = {
        "torch": lambda: plain_log_likelihood(vae, x, k, batch, chunk),
        "pvae": lambda: log_likelihood(vae.model, vae.guide, x, num_samples=k, batch_size=batch),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    means: dict[str, float] = {}
    for _ in range(args.eval_rounds):
        for name, run in runs.items():
            sync()
            start = clock()
            values = run()
            sync()
            times[name].append(clock() - start)
            means[name] = float(values.mean())
    return {name: statistics.median(v) for name, v in times.items()}, means


def vae_main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    pyro.enable_validation(False)  # Pyro's advice for speed, as fit's users can
    # On a CPU shared with other jobs, wall time measures the neighbours as much as the step:
    # the CPU time of this (single-threaded) process is the robust measure there.
    clock = time.process_time if device.type == "cpu" and args.threads == 1 else time.perf_counter

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    generator = torch.Generator().manual_seed(0)
    batches = torch.bernoulli(
        torch.rand(max(16, args.steps), args.batch_size, 1, 28, 28, generator=generator) * 0.3
    ).to(device)
    scale = 50000 / args.batch_size
    rows = []
    for objective in args.objectives:
        runners = build_runners(objective, device)
        fit_blocks = None
        if objective == "elbo":
            torch.manual_seed(0)
            vae = VAE(latent_dim=50, hidden=(400,)).to(device)
            fit_blocks = {"pvae fit()": fit_block_fn(vae, "elbo", args.batch_size, args.steps)}
        medians = time_blocks(
            runners, batches, scale, args.blocks, args.steps, clock, sync, fit_blocks
        )
        label = {"elbo": "ELBO", "iwae": "IWAE-5", "dreg": "DReG-5"}[objective]
        for name, seconds in medians.items():
            rows.append((label, name, seconds * 1e3, seconds / medians["torch"]))
        print(
            f"{label}: " + ", ".join(f"{n} {s * 1e3:.2f} ms" for n, s in medians.items()),
            flush=True,
        )
    if args.eval_images:
        seconds, means = time_evaluation(args, device, clock, sync)
        label = f"log p(x), K={args.eval_samples}, {args.eval_images} images"
        for name, value in seconds.items():
            rows.append((label, name, value * 1e3, value / seconds["torch"]))
        print(f"{label}: {seconds} (mean log p(x): {means})", flush=True)
    unit = "CPU ms" if clock is time.process_time else "ms"
    lines = [
        f"| objective | loop | {unit} / step (median of blocks) | ratio to the hand-written loop |",
        "|---|---|---|---|",
    ]
    for label, name, ms, ratio in rows:
        shown = f"{ms / 1e3:.1f} s (whole run)" if label.startswith("log p(x)") else f"{ms:.2f}"
        lines.append(f"| {label} | {name} | {shown} | {ratio:.3f} |")
    table = "\n".join(lines)
    print(table)
    command = (
        f"python benchmarks/throughput.py --threads {args.threads} --blocks {args.blocks} "
        f"--steps {args.steps} --batch-size {args.batch_size} --device {args.device} "
        f"--objectives {' '.join(args.objectives)} --eval-images {args.eval_images} "
        f"--eval-samples {args.eval_samples} --eval-rounds {args.eval_rounds}"
    )
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s), torch {torch.__version__}, pyro {pyro.__version__}"
    )
    timing = (
        "the process's CPU time (one thread; robust to other jobs on the machine)"
        if clock is time.process_time
        else "wall time"
    )
    text = (
        "# Throughput: pvae's steps vs hand-written PyTorch loops\n\n"
        f"Model: VAE 784-400-50 (MLP, ReLU), Bernoulli likelihood, batch {args.batch_size}, "
        f"Adam (lr 1e-3); device {args.device}; {machine}. Timed with {timing}; load average "
        f"(1 / 5 / 15 min) at the end of the run: {load}. Rows: see the docstring of "
        "`benchmarks/throughput.py` (`torch`: the hand-written loop with torch's default Adam, "
        "the baseline of each ratio; `pvae`: the step `fit` runs).\n\n"
        f"Command: `{command}`\n\n{table}\n"
    )
    out = Path(args.out or RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


def svi_step_fn(model, optimizer, objective):
    """The text benchmark's pvae step: the objective, backward, the optimizer."""

    def step(x, scale):
        loss = objective(model.model, model.guide, x, scale=scale).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def validated(step):
    """``step`` with distribution argument validation on (it is off globally here)."""

    def checked_step(x, scale):
        with pyro.validation_enabled(True):
            step(x, scale)

    return checked_step


def plain_text_step_fn(svae, optimizer):
    """The sentence VAE's networks trained without Pyro: -ELBO with a masked cross-entropy and
    the closed-form Gaussian KL."""
    from pvae.nets.recurrent import OUTPUT_OFFSET, PAD_ID

    def step(x, scale):
        loc, sd = svae.posterior_head(svae.encoder(x))
        z = loc + sd * torch.randn_like(loc)
        logits = svae.decoder(x, z)
        targets = (x - OUTPUT_OFFSET).clamp_min(0)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        )
        log_lik = -(nll * (x != PAD_ID).reshape(-1)).sum()
        kl = 0.5 * (loc.pow(2) + sd.pow(2) - 1).sum() - sd.log().sum()
        loss = -scale * (log_lik - kl)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def text_main(args: argparse.Namespace) -> None:
    """Tokens per second of ``sentence_vae`` training: pvae's step against plain PyTorch."""
    from pvae.data import load_dataset
    from pvae.models.registry import build_model

    device = torch.device(args.device)
    train = load_dataset("ptb", "train")
    generator = torch.Generator().manual_seed(0)
    batches = [x.to(device) for x, _ in train.batches(args.batch_size, generator=generator)][:32]
    tokens = [int((x != 0).sum()) for x in batches]
    scale = len(train) / args.batch_size
    runners = {}
    for name in ("torch", "pvae", "pvae+validate"):
        torch.manual_seed(0)
        svae = build_model(
            "sentence_vae",
            vocabulary=train.model_options()["vocabulary"],
            embed_dim=args.embed,
            hidden_dim=args.hidden,
            latent_dim=32,
        ).to(device)
        optimizer = torch.optim.Adam(svae.parameters(), lr=1e-3)
        if name == "torch":
            runners[name] = plain_text_step_fn(svae, optimizer)
        elif name == "pvae":
            runners[name] = svi_step_fn(svae, optimizer, ELBO())
        else:
            runners[name] = validated(svi_step_fn(svae, optimizer, ELBO()))
    for step in runners.values():  # warm-up
        for i in range(3):
            step(batches[i], scale)
    # On a CPU shared with other jobs, wall time measures the neighbours as much as the step:
    # the CPU time of this (single-threaded) process is the robust measure there.
    clock = time.perf_counter if device.type == "cuda" or args.threads > 1 else time.process_time
    times: dict[str, list[float]] = {name: [] for name in runners}
    for block in range(args.blocks):
        for name, step in runners.items():
            chosen = [(block * args.steps + i) % len(batches) for i in range(args.steps)]
            start = clock()
            for i in chosen:
                step(batches[i], scale)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(sum(tokens[i] for i in chosen) / (clock() - start))
    base = statistics.median(times["torch"])
    unit = "CPU s" if clock is time.process_time else "s"
    lines = [
        f"| loop | tokens / {unit} (median of blocks) | ratio of time to plain PyTorch |",
        "|---|---|---|",
    ]
    for name, values in times.items():
        rate = statistics.median(values)
        lines.append(f"| {name} | {rate:.0f} | {base / rate:.3f} |")
    padding = sum(x.numel() for x in batches) / sum(tokens)
    table = "\n".join(lines)
    print(table)
    command = (
        f"python benchmarks/throughput.py --model sentence_vae --threads {args.threads} "
        f"--blocks {args.blocks} --steps {args.steps} --batch-size {args.batch_size} "
        f"--embed {args.embed} --hidden {args.hidden} --device {args.device}"
    )
    machine = f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, pyro {pyro.__version__}"
    text = (
        "# Throughput (text): pvae's SVI step vs plain PyTorch on PTB\n\n"
        f"Model: sentence_vae, embeddings {args.embed}, LSTM {args.hidden} units, latent 32, "
        f"10,002-token vocabulary, batch {args.batch_size} PTB sentences from pvae's "
        f"length-bucketed batches (padded tokens / real tokens = {padding:.3f}), Adam; device "
        f"{args.device}; {machine}. Timed with "
        f"{'the process CPU time (one thread; robust to other jobs on the machine)' if unit == 'CPU s' else 'wall time'}"
        f".\n\nCommand: `{command}`\n\n{table}\n"
    )
    out = Path(args.out or TEXT_RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("vae", "sentence_vae"), default="vae")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--objectives",
        nargs="+",
        choices=("elbo", "iwae", "dreg"),
        default=["elbo", "iwae", "dreg"],
    )
    parser.add_argument("--eval-images", type=int, default=1000, help="0: no evaluation row")
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--eval-rounds", type=int, default=3)
    parser.add_argument("--embed", type=int, default=128, help="text: embedding size")
    parser.add_argument("--hidden", type=int, default=256, help="text: LSTM units")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    if args.model == "sentence_vae":
        pyro.enable_validation(False)
        text_main(args)
        return
    vae_main(args)


if __name__ == "__main__":
    main()
