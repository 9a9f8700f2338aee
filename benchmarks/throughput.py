"""Training steps per second: pvae's SVI step against a hand-written PyTorch loop.

The identical model (784-400-50 MLP encoder and decoder, Gaussian latent, Bernoulli
likelihood, batch 128, Adam) is trained by

- ``torch``: a plain PyTorch loop computing the negative ELBO with the analytic KL by hand;
- ``pvae``: ``pvae.infer.objectives.ELBO`` on ``pvae.models.VAE``'s Pyro model/guide;
- ``pyro``: Pyro's own ``TraceMeanField_ELBO`` on the same model/guide, for reference;
- ``pvae+validate``: the ``pvae`` loop with torch's distribution argument validation on, as
  ``fit`` runs under Pyro's default; the other loops run with it off
  (``pyro.enable_validation(False)``).

Blocks of steps are interleaved (torch, pvae, pyro, torch, ...) in one process so that all
see the same machine state; the table reports the median step time over blocks and the ratio
to the plain-PyTorch loop. Usage::

    python benchmarks/throughput.py [--threads 2] [--blocks 7] [--steps 50] [--device cpu]

``--model sentence_vae`` measures text instead (``results/throughput_text.md``): the sentence
VAE (LSTM encoder and decoder, Gaussian latent, 10k-word PTB vocabulary) on the same
length-bucketed PTB batches, in tokens per second, against a hand-written PyTorch loop of the
same modules (teacher-forced decoder, masked cross-entropy, closed-form KL).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.nn import functional as F

from pvae.infer.objectives import ELBO
from pvae.models import VAE

RESULTS = Path(__file__).parent / "results" / "throughput.md"
TEXT_RESULTS = Path(__file__).parent / "results" / "throughput_text.md"


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


def svi_step_fn(vae: VAE, optimizer, objective):
    def step(x, scale):
        loss = objective(vae.model, vae.guide, x, scale=scale).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def pyro_step_fn(vae: VAE, optimizer):
    elbo = TraceMeanField_ELBO()

    def model(x):
        with pyro.poutine.scale(scale=scale_holder[0]):
            vae.model(x)

    def guide(x):
        with pyro.poutine.scale(scale=scale_holder[0]):
            vae.guide(x)

    scale_holder = [1.0]

    def step(x, scale):
        scale_holder[0] = scale
        loss = elbo.differentiable_loss(model, guide, x)
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embed", type=int, default=128, help="text: embedding size")
    parser.add_argument("--hidden", type=int, default=256, help="text: LSTM units")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "sentence_vae":
        pyro.set_rng_seed(0)
        pyro.enable_validation(False)
        text_main(args)
        return
    args.out = args.out or str(RESULTS)
    pyro.set_rng_seed(0)
    device = torch.device(args.device)
    pyro.enable_validation(False)  # Pyro's advice for speed; the pvae+validate row turns it on

    batches = torch.bernoulli(torch.rand(16, args.batch_size, 1, 28, 28) * 0.3).to(device)
    scale = 50000 / args.batch_size
    runners = {}
    for name in ("torch", "pvae", "pyro", "pvae+validate"):
        torch.manual_seed(0)
        vae = VAE(latent_dim=50, hidden=(400,)).to(device)
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
        if name == "torch":
            runners[name] = plain_step_fn(vae, optimizer)
        elif name == "pvae":
            runners[name] = svi_step_fn(vae, optimizer, ELBO())
        elif name == "pvae+validate":
            runners[name] = validated(svi_step_fn(vae, optimizer, ELBO()))
        else:
            runners[name] = pyro_step_fn(vae, optimizer)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in runners.values():  # warm-up
        for i in range(10):
            step(batches[i % len(batches)], scale)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.blocks):
        for name, step in runners.items():
            sync()
            start = time.perf_counter()
            for i in range(args.steps):
                step(batches[i % len(batches)], scale)
            sync()
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["torch"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append((name, median * 1e3, 1 / median, median / base))
    header = "| loop | ms / step (median of blocks) | steps / s | ratio to plain PyTorch |"
    lines = [header, "|---|---|---|---|"]
    lines += [f"| {n} | {ms:.2f} | {sps:.0f} | {ratio:.3f} |" for n, ms, sps, ratio in rows]
    table = "\n".join(lines)
    print(table)
    command = (
        f"python benchmarks/throughput.py --threads {args.threads} --blocks {args.blocks} "
        f"--steps {args.steps} --batch-size {args.batch_size} --device {args.device}"
    )
    machine = f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, pyro {pyro.__version__}"
    text = (
        "# Throughput: pvae's SVI step vs plain PyTorch\n\n"
        f"Model: VAE 784-400-50 (MLP, ReLU), Bernoulli likelihood, batch {args.batch_size}, Adam; "
        f"device {args.device}; {machine}.\n\nCommand: `{command}`\n\n{table}\n"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
