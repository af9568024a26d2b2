"""Data parallelism for training (torchrun, WORLD_SIZE > 1): ranks, shards and gradient sums.

Each rank takes a contiguous share of a rollout batch's micro-batches; gradients are summed across
ranks before every optimizer step, so 1 and N processes make the same update up to float summation
order (tests/test_train.py). gloo on CPU, nccl on GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed(device: str | None) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), dev


def shard(n: int, d: Dist) -> range:
    """Contiguous share of n items for this rank (the first n % world ranks get one more)."""
    base, rem = divmod(n, d.world)
    lo = d.rank * base + min(d.rank, rem)
    return range(lo, lo + base + (1 if d.rank < rem else 0))


def all_sum(values: list[float], d: Dist, device) -> list[float]:
    if d.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def sum_over_ranks(stats: dict[str, float], d: Dist) -> dict[str, float]:
    """Per-key sums of every rank's `stats` (keys missing on a rank count as 0)."""
    if d.world == 1:
        return dict(stats)
    gathered = [None] * d.world
    torch.distributed.all_gather_object(gathered, stats)
    keys = sorted({k for s in gathered for k in s})
    return {k: sum(s.get(k, 0.0) for s in gathered) for k in keys}


def broadcast_params(params, d: Dist) -> None:
    """Rank 0's values on every rank (an identical start whatever each rank's init did)."""
    if d.world > 1:
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, 0)


def sum_gradients(params, d: Dist, device) -> None:
    """Sum every parameter's gradient across ranks; a gradient missing on some rank counts as zero."""
    if d.world == 1:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MAX)
    for p, h in zip(params, has.tolist()):
        if h:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
