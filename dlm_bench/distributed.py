"""Data parallelism for training (torchrun, WORLD_SIZE > 1): ranks, shards and gradient sums.

Each rank takes a contiguous share of a rollout batch's micro-batches. The policy is wrapped in
torch's DistributedDataParallel (`replicate`), which overlaps the gradient all-reduce with the last
backward of each update (`accumulating` keeps the other backward chunks local); its communication
hook sums instead of averaging, because every chunk's loss is already weighted by its share of the
global batch. The method's own modules (a log Z head, a value head) are summed by `sum_gradients`.
So 1 and N processes make the same update up to float summation order (tests/test_train.py).
gloo on CPU, nccl on GPU.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel


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


class Replicated(DistributedDataParallel):
    """DDP that still answers like the model it wraps (config, save_pretrained, disable_adapter, ...),
    so the rest of the harness never needs to know it is there."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def _sum_hook(state, bucket):
    fut = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def replicate(dlm, d: Dist, device) -> None:
    """Wrap the policy's model in DDP (summing gradients over ranks) when there is more than one rank."""
    if d.world == 1:
        return
    ids = [device.index] if device.type == "cuda" else None
    dlm.model = Replicated(dlm.model, device_ids=ids, broadcast_buffers=False)
    dlm.model.register_comm_hook(None, _sum_hook)


def accumulating(model, last: bool):
    """Context for one backward chunk: local accumulation unless it is the update's last chunk."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    if is_sharded(model):
        model.set_requires_gradient_sync(last)
    return nullcontext()


def not_replicated(params, model) -> list:
    """The parameters whose gradients DDP does not sum (the method's own modules)."""
    if not isinstance(model, DistributedDataParallel):
        return list(params)
    inside = {id(p) for p in model.parameters()}
    return [p for p in params if id(p) not in inside]


def lockstep(n_chunks: int, d: Dist, device) -> int:
    """How many chunks this rank must add to match the busiest rank's backward count."""
    n = torch.tensor([n_chunks], device=device)
    torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MAX)
    return int(n) - n_chunks


def is_sharded(model) -> bool:
    """Whether `model` is sharded by FSDP2 (`training.parallel.shard_model`)."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)
