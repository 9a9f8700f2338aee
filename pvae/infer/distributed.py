"""Training and evaluation across processes: ``torch.distributed`` launched by ``torchrun``.

One process per rank runs the same program; :func:`from_env` reads what ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), initialises the
process group (``gloo`` on CPUs, ``nccl`` on GPUs) with a timeout on every collective, and
returns a :class:`DistributedContext`: this rank, the world size, whether it is the main rank
(rank 0, the one that writes files and prints) and its device. The context is passed
explicitly (``fit(..., distributed=ctx)``, ``log_likelihood(..., distributed=ctx)``); nothing
here is global beyond ``torch.distributed``'s own default group.

How :func:`pvae.infer.fit` trains under a process group (see its docstring for the contract):

- every rank draws the same permutation of each epoch (same data seed) and keeps its own
  contiguous shard of it (:func:`pvae.data.registry.shard_positions`); ``batch_size`` is the
  global batch, each rank's is ``batch_size / world_size``;
- gradients are averaged with :class:`GradientReducer`: one bucketed SUM all-reduce per step of
  every parameter's gradient (``PyroModule`` parameters and those of the private
  ``pyro.param`` store alike) weighted by the units of the rank's batch, divided by the units
  of the global batch. Each rank's loss is scaled by ``N / local units`` through the ``"data"``
  plate, so the result is exactly the one-process gradient of the union of the ranks' batches,
  also when the shares and last batches differ in size;
- ranks whose share is one batch shorter take a zero-weighted step (no forward pass, zero
  gradient, zero units) while the others finish: every rank makes the same number of
  collective calls, and the step's all-reduce carries whether any rank has another batch;
- each rank's sampling generators are seeded from the run's seed and its rank
  (:func:`rank_seed`); checkpoints hold every rank's states.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "DistributedError",
    "GradientReducer",
    "SHARD_CHUNKS",
    "SeededShards",
    "derive_seed",
    "env_world",
    "from_env",
    "init_distributed",
    "launched_by_torchrun",
    "rank_seed",
    "shutdown",
]

#: seconds a collective waits for the other ranks before failing (``PVAE_DIST_TIMEOUT``
#: overrides it in :func:`from_env`)
DEFAULT_TIMEOUT = 1800.0


class DistributedError(RuntimeError):
    """A collective failed: another rank died, or did not arrive before the timeout."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the process group.

    Attributes:
        rank: this process's rank, ``0 .. world_size - 1``.
        world_size: the number of processes.
        local_rank: its rank on this machine (its GPU's index).
        device: where this rank computes (``cpu``, or ``cuda:<local_rank>``).
        backend: ``"gloo"`` or ``"nccl"``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, the run folder and progress bars."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)``, what datasets' ``batches(..., shard=)`` take."""
        return (self.rank, self.world_size)

    # -- collectives (every rank must call each of them, in the same order) ---------------------
    def _comm_device(self) -> torch.device:
        """Where collectives' tensors live: the GPU under nccl, the host under gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over the ranks, in place; returns it."""
        with _collective("all_reduce", self):
            target = tensor.to(self._comm_device())
            dist.all_reduce(target)
            if target is not tensor:
                tensor.copy_(target)
        return tensor

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """The ranks' sums of ``values`` (float64)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        return self.all_reduce_(tensor).tolist()

    def barrier(self) -> None:
        with _collective("barrier", self):
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        with _collective("broadcast", self):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` on the others."""
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        with _collective("gather", self):
            dist.gather_object(obj, gathered, dst=0)
        return gathered

    def broadcast_tensors_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrites ``tensors`` with rank 0's values (one message per dtype and device)."""
        for group in _groups(list(tensors)):
            flat = _flatten_dense_tensors(group)
            comm = flat.to(self._comm_device())
            with _collective("broadcast", self):
                dist.broadcast(comm, src=0)
            for tensor, value in zip(
                group, _unflatten_dense_tensors(comm.to(flat.device), group), strict=True
            ):
                with torch.no_grad():
                    tensor.copy_(value)

    def all_gather_rows(self, local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """The ranks' ``local`` tensors (rank ``r`` holds ``counts[r]`` rows) concatenated in
        rank order, on every rank."""
        if len(counts) != self.world_size or local.shape[0] != counts[self.rank]:
            raise ValueError(f"rank {self.rank} holds {local.shape[0]} rows, not {counts}")
        width = max(counts)
        comm_device = self._comm_device()
        padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=comm_device)
        padded[: local.shape[0]] = local.to(comm_device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        with _collective("all_gather", self):
            dist.all_gather(parts, padded)
        rows = torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])
        return rows.to(local.device)


@contextmanager
def _collective(what: str, ctx: DistributedContext) -> Iterator[None]:
    """A failed collective as one clear :class:`DistributedError`."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size}: {what} failed ({first}); another rank "
            "probably died or timed out; the last checkpoint is kept (restart with --resume)"
        ) from error


def _groups(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return list(groups.values())


# -- the environment and the process group ------------------------------------------------------
def env_world(environ: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the variables ``torchrun`` sets, or ``None``
    outside ``torchrun`` (no ``WORLD_SIZE``/``RANK``)."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ or "RANK" not in environ:
        return None
    try:
        world_size, rank = int(environ["WORLD_SIZE"]), int(environ["RANK"])
        local_rank = int(environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them), got "
            f"{environ.get('RANK')!r}, {environ.get('WORLD_SIZE')!r}, "
            f"{environ.get('LOCAL_RANK')!r}"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"rank {rank} of world size {world_size} is not a valid process")
    return rank, world_size, local_rank


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """Whether this process is one of several that ``torchrun`` started."""
    world = env_world(environ)
    return world is not None and world[1] > 1


def restart_count(environ: dict[str, str] | None = None) -> int:
    """How many times ``torchrun`` (``--max-restarts``) has restarted this job's workers: its
    ``TORCHELASTIC_RESTART_COUNT``, 0 on the first attempt and outside ``torchrun``."""
    environ = os.environ if environ is None else environ
    try:
        return max(0, int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0))
    except ValueError:
        return 0


def _rank_device(device: str | torch.device, local_rank: int, world_size: int) -> torch.device:
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"distributed training runs on cpu or cuda, not {device.type}")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    if device.index is not None and world_size > 1:
        raise ValueError(
            f"--device {device}: under torchrun each rank uses cuda:<LOCAL_RANK>; pass --device cuda"
        )
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} on this machine): "
            "start at most one process per GPU"
        )
    return torch.device("cuda", local_rank)


def init_distributed(
    rank: int,
    world_size: int,
    *,
    local_rank: int | None = None,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    init_method: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DistributedContext:
    """Joins (creating if needed) the default process group and returns this rank's context.

    ``device`` is the run's (``"cpu"`` or ``"cuda"``): on CUDA, rank ``r`` computes on
    ``cuda:<local_rank>`` with ``nccl``; on CPU with ``gloo``. ``init_method`` defaults to
    ``env://`` (``MASTER_ADDR``/``MASTER_PORT``); ``timeout`` (seconds) bounds every
    collective, so a rank that died fails the others instead of hanging them.
    """
    local_rank = rank if local_rank is None else local_rank
    rank_device = _rank_device(device, local_rank, world_size)
    backend = backend or ("nccl" if rank_device.type == "cuda" else "gloo")
    if rank_device.type == "cuda":
        torch.cuda.set_device(rank_device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=init_method or "env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
    elif dist.get_rank() != rank or dist.get_world_size() != world_size:
        raise ValueError("a different process group is already initialised in this process")
    return DistributedContext(rank, world_size, local_rank, rank_device, backend)


def shutdown(ctx: DistributedContext | None) -> None:
    """Leaves the process group (a no-op without one)."""
    if ctx is not None and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def from_env(
    device: str | torch.device = "cpu", *, timeout: float | None = None
) -> Iterator[DistributedContext | None]:
    """The process group of a ``torchrun`` launch for the ``with`` block: its context, or
    ``None`` for a single process (outside ``torchrun``, or with one process), which then
    runs exactly as without ``torch.distributed``. ``timeout`` (seconds) defaults to
    ``PVAE_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`."""
    world = env_world()
    if world is None or world[1] == 1:
        yield None
        return
    if timeout is None:
        timeout = float(os.environ.get("PVAE_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    rank, world_size, local_rank = world
    ctx = init_distributed(rank, world_size, local_rank=local_rank, device=device, timeout=timeout)
    try:
        yield ctx
    finally:
        shutdown(ctx)


@contextmanager
def main_first(ctx: DistributedContext | None) -> Iterator[None]:
    """Rank 0 runs the block first (a download, a cache), then the others."""
    if ctx is None:
        yield
        return
    if not ctx.is_main:
        ctx.barrier()
    yield
    if ctx.is_main:
        ctx.barrier()


# -- seeds ----------------------------------------------------------------------------------------
def derive_seed(*keys: int) -> int:
    """A seed in ``[0, 2**32)`` (what numpy, ``random`` and torch all accept) derived from
    integer ``keys`` (negative ones too) by numpy's ``SeedSequence``: different keys give
    independent streams."""
    entropy = [int(key) % 2**64 for key in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def rank_seed(seed: int, rank: int, world_size: int) -> int:
    """The seed of rank ``rank``'s sampling generators: ``seed`` itself for one process (so
    a single process is unchanged), else derived from ``seed`` and ``rank``."""
    if world_size == 1:
        return seed
    return derive_seed(seed, rank, world_size)


# -- gradients ------------------------------------------------------------------------------------
#: the seeded chunks a sharded computation cuts its data into (SeededShards)
SHARD_CHUNKS = 8


class SeededShards:
    """Consecutive chunks of ``n`` data, each computed under its own seed, shared among the
    ranks (rank ``r`` takes a contiguous block of chunks) and gathered in order on rank 0.

    The data are cut into ``min(n, SHARD_CHUNKS)`` chunks whatever the number of ranks, and
    chunk ``i`` of call ``key`` draws from torch's generator seeded by
    ``derive_seed(seed, key, i)``: a sharded computation gives the same numbers at any number
    of ranks up to :data:`SHARD_CHUNKS` (one process: ``distributed=None``). Every rank must
    call :meth:`map` in the same order (it is a collective)."""

    def __init__(self, n: int, distributed: DistributedContext | None, seed: int) -> None:
        count = max(1, min(int(n), SHARD_CHUNKS))
        self.bounds = [(i * n // count, (i + 1) * n // count) for i in range(count)]
        self.distributed = distributed
        world, rank = (1, 0) if distributed is None else (distributed.world_size, distributed.rank)
        self.mine = range(rank * count // world, (rank + 1) * count // world)
        self.seed = int(seed)

    @property
    def is_main(self) -> bool:
        return self.distributed is None or self.distributed.is_main

    def map(self, key: int, fn: Callable[[int, int], Any]) -> list[Any] | None:
        """``[fn(lo, hi) for each chunk]`` in chunk order on rank 0 (``None`` on the others);
        chunk ``i`` runs with torch's generator seeded by ``derive_seed(seed, key, i)`` (the
        caller's state is restored). An error on any rank is raised on every rank."""
        local: list[tuple[int, Any]] = []
        error: BaseException | None = None
        for index in self.mine:
            lo, hi = self.bounds[index]
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(self.seed, key, index))
                    local.append((index, fn(lo, hi)))
            except Exception as caught:  # noqa: BLE001 - re-raised on every rank below
                error = caught
                break
        if self.distributed is None:
            if error is not None:
                raise error
            return [value for _, value in local]
        gathered = self.distributed.gather_objects((local, error))
        if self.distributed.is_main:
            errors = [e for _, e in gathered if e is not None]
            error = errors[0] if errors else None
        error = self.distributed.broadcast_object(error)
        if error is not None:
            raise error
        if not self.distributed.is_main:
            return None
        pairs = sorted((pair for part, _ in gathered for pair in part), key=lambda pair: pair[0])
        return [value for _, value in pairs]


class GradientReducer:
    """Averages ``params``' gradients over the ranks, weighted by each rank's units.

    One SUM all-reduce per bucket (buckets of at most ``bucket_bytes``, per dtype and device,
    launched together and then awaited) carries ``units * grad`` of every parameter, whether
    each parameter received a gradient on the rank, the rank's units and any extra
    ``flags``. Afterwards each gradient is ``sum_r units_r grad_r / sum_r units_r``; a
    parameter that no rank touched keeps ``grad = None`` (as one process would, so Adam skips
    it); a rank without a batch (units 0, no gradients) adds nothing.

    The buckets are allocated once; the gradients are copied in after ``backward`` and the
    averages copied back (no overlap with ``backward``: see ``benchmarks/distributed.py``).
    """

    def __init__(
        self, ctx: DistributedContext, params: Sequence[torch.Tensor], bucket_bytes: int = 2**25
    ) -> None:
        self.ctx = ctx
        self.params = list(params)
        self.buckets: list[list[int]] = []
        position = {id(p): i for i, p in enumerate(self.params)}
        for group in _groups(self.params):
            bucket: list[int] = []
            size = 0
            for p in group:
                nbytes = p.numel() * p.element_size()
                if bucket and size + nbytes > bucket_bytes:
                    self.buckets.append(bucket)
                    bucket, size = [], 0
                bucket.append(position[id(p)])
                size += nbytes
            if bucket:
                self.buckets.append(bucket)
        # The counts (units, flags, one presence flag per parameter) ride at the end of the
        # last bucket when its dtype holds them exactly; otherwise in a float64 message.
        last = self.params[self.buckets[-1][0]] if self.buckets else None
        self.meta_in_last = last is not None and last.dtype in (torch.float32, torch.float64)
        self.comm_device = ctx._comm_device()
        self._buffers: list[torch.Tensor] | None = None
        self._num_flags: int | None = None

    def _allocate(self, num_flags: int) -> list[torch.Tensor]:
        meta_len = 1 + num_flags + len(self.params)
        buffers = []
        for i, bucket in enumerate(self.buckets):
            numel = sum(self.params[j].numel() for j in bucket)
            if i == len(self.buckets) - 1 and self.meta_in_last:
                numel += meta_len
            first = self.params[bucket[0]]
            buffers.append(torch.empty(numel, dtype=first.dtype, device=self.comm_device))
        if not self.meta_in_last:
            buffers.append(torch.empty(meta_len, dtype=torch.float64, device=self.comm_device))
        return buffers

    def reduce(self, units: float, flags: Sequence[float] = ()) -> tuple[float, list[float]]:
        """All-reduces the gradients in place; returns the global units and summed flags."""
        if self._buffers is None or self._num_flags != len(flags):
            self._buffers, self._num_flags = self._allocate(len(flags)), len(flags)
        buffers = self._buffers
        meta = [
            float(units),
            *(float(f) for f in flags),
            *(0.0 if p.grad is None else 1.0 for p in self.params),
        ]
        for bucket, buffer in zip(self.buckets, buffers, strict=False):
            offset = 0
            for j in bucket:
                p = self.params[j]
                n = p.numel()
                if p.grad is None:
                    buffer[offset : offset + n].zero_()
                else:
                    buffer[offset : offset + n].copy_(p.grad.reshape(-1))
                offset += n
            if units != 1.0:
                buffer[:offset].mul_(units)
        buffers[-1][-len(meta) :].copy_(torch.tensor(meta, dtype=torch.float64))
        with _collective("gradient all_reduce", self.ctx):
            works = [dist.all_reduce(buffer, async_op=True) for buffer in buffers]
            for work in works:
                work.wait()
        reduced = buffers[-1][-len(meta) :].tolist()
        total_units, flag_sums = reduced[0], reduced[1 : 1 + len(flags)]
        present = reduced[1 + len(flags) :]
        for bucket, buffer in zip(self.buckets, buffers, strict=False):
            offset = 0
            for j in bucket:
                p = self.params[j]
                n = p.numel()
                if present[j] == 0:
                    p.grad = None
                else:
                    value = buffer[offset : offset + n].view_as(p)
                    if p.grad is None:
                        p.grad = torch.empty_like(p)
                    p.grad.copy_(value)
                    if total_units > 0:
                        p.grad.div_(total_units)
                offset += n
        return total_units, flag_sums
