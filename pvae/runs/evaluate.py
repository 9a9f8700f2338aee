"""Evaluating and sampling a trained model: :func:`evaluate_model`, :func:`evaluate_run`,
:func:`sample_run`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pvae.infer.train import to_device
from pvae.runs.folder import load_run, write_json


def _cuda_devices(device: torch.device | str) -> list[int]:
    device = torch.device(device)
    return [device.index or 0] if device.type == "cuda" else []


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def whole_batch(data: Any) -> Any:
    """All of ``data`` as one batch, in order (a dynamic binarization is drawn with seed 0)."""
    batches = data.batches(len(data), shuffle=False, generator=torch.Generator().manual_seed(0))
    return next(iter(batches))


def evaluate_model(
    model: Any,
    data: Any,
    *,
    num_samples: int = 5000,
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
    distributed: Any = None,
    seeded_batches: bool | None = None,
) -> dict[str, Any]:
    """The importance-sampled NLL of ``data`` under ``model`` (``nll`` and ``nll_stderr``
    over data, nats) with K = ``num_samples``, and the model's own ``metrics(data)``.

    The importance samples are drawn from torch's generator seeded with ``seed`` (the
    caller's random state is restored), so an evaluation is repeatable. With
    ``seeded_batches`` each batch's samples are seeded from ``seed`` and the batch instead
    (``log_likelihood(..., seed=)``): the same numbers at any world size, though not those of
    the single stream. Under a process group (``distributed``, a
    :class:`~pvae.infer.distributed.DistributedContext`; ``seeded_batches`` is then implied)
    the data are shared among the ranks and every rank returns the whole result. The model is
    evaluated in evaluation mode (no dropout) and left in the mode it had."""
    _check_count("num_samples", num_samples)
    if seeded_batches is False and distributed is not None:
        raise ValueError("seeded_batches=False: ranks sharing the data need per-batch seeds")
    seeded = distributed is not None or bool(seeded_batches)
    mode = model.training
    model.eval()  # dropout and word dropout off: the model as it is evaluated
    try:
        return _evaluate_model(
            model, data, num_samples, device, progress, seed, distributed, seeded
        )
    finally:
        model.train(mode)


def _evaluate_model(model, data, num_samples, device, progress, seed, distributed, seeded):
    from pvae.evaluation import LogLikelihood, log_likelihood

    start = time.perf_counter()
    args = to_device(tuple(model.eval_args(whole_batch(data))), device)
    datum_size = model.eval_datum_size(args)
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(seed)
        values = log_likelihood(
            model.model,
            model.guide,
            *args,
            num_samples=num_samples,
            progress=progress,
            datum_size=datum_size,
            **({"seed": seed, "distributed": distributed} if seeded else {}),
        )
    estimate = LogLikelihood(values.cpu(), num_samples)
    result: dict[str, Any] = {
        "nll": -estimate.mean,
        # One datum (a dataset of one graph) has no standard error over data: None, not NaN.
        "nll_stderr": estimate.stderr if values.numel() > 1 else None,
        "eval_samples": int(num_samples),
        "eval_size": int(values.numel()),
    }
    with torch.no_grad():
        derived = model.likelihood_metrics(values.cpu(), data)
        result.update({key: float(value) for key, value in derived.items()})
        result.update({key: float(value) for key, value in model.metrics(data).items()})
    result["eval_wall_time"] = time.perf_counter() - start
    return result


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    num_samples: int | None = None,
    size: int | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
    progress: bool = True,
    seed: int | None = None,
    distributed: Any = None,
) -> dict[str, Any]:
    """Evaluates a run folder's model on a split of its dataset and writes
    ``evaluation_<split>_K<num_samples>[_n<size>][_seed<seed>].json`` there (one file per
    setting: evaluations of other sizes or seeds do not overwrite each other); returns what it
    wrote. ``seed`` (default: the run's, so that the test NLL of ``pvae train`` is reproduced
    exactly) seeds the importance samples.

    Under a process group (``distributed``, every rank calling with the same arguments) the
    data are shared among the ranks as in :func:`evaluate_model` (with ``seeded_batches``),
    each rank on its own device; rank 0 alone writes the file, and every rank returns it."""
    from pvae.infer.distributed import main_first
    from pvae.runs.train import load_split

    if distributed is not None and distributed.world_size == 1:
        distributed = None
    if distributed is not None:
        device = distributed.device
        progress = progress and distributed.is_main
    model, config = load_run(run_dir, checkpoint, device=device)
    if num_samples is None:
        num_samples = model.default_eval_samples
    _check_count("num_samples", num_samples)
    with main_first(distributed):  # rank 0 downloads what is missing, then the others read
        data = load_split(
            config["dataset"], split, size=size, progress=progress, **model.data_options()
        )
    result = {
        "split": split,
        "checkpoint": checkpoint,
        "seed": config["train"]["seed"] if seed is None else seed,
    }
    result.update(
        evaluate_model(
            model,
            data,
            num_samples=num_samples,
            device=device,
            progress=progress,
            seed=result["seed"],
            distributed=distributed,
        )
    )
    if distributed is not None:
        result["world_size"] = distributed.world_size
        if not distributed.is_main:
            return result
    name = f"evaluation_{split}_K{num_samples}"
    if size is not None:  # a subset: its own file, not the whole split's
        name += f"_n{result['eval_size']}"
    if seed is not None:
        name += f"_seed{seed}"
    write_json(Path(run_dir) / f"{name}.json", result)
    return result


def sample_run(
    run_dir: str | Path,
    *,
    num: int = 64,
    seed: int = 0,
    out: str | Path | None = None,
    checkpoint: str = "best",
) -> Path:
    """Draws ``num`` data from a run's prior (no encoder) into a PNG grid (images) or a text
    file, one sentence a line (text models, whose ``sample`` returns strings); returns its
    path (default ``samples_seed<seed>.png`` or ``.txt`` in the run folder)."""
    from pvae.figures import image_grid

    _check_count("num", num)
    model, _ = load_run(run_dir, checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = model.sample(num, generator=torch.Generator().manual_seed(seed))
    text = isinstance(samples, list)
    path = Path(out or Path(run_dir) / f"samples_seed{seed}.{'txt' if text else 'png'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    if text:
        path.write_text("".join(f"{line}\n" for line in samples), encoding="utf-8")
        return path
    if samples.dim() > 4:  # sets of images: one row a set
        samples = samples.reshape(-1, *samples.shape[-3:])
    image_grid(samples, path)
    return path
