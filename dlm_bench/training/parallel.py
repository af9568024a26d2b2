"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for full fine-tuning: parameters, gradients and AdamW
state sharded over the ranks, so a model whose optimizer state does not fit one device can train.

FSDP's collectives must run in the same order on every rank, while this loop's ranks do different
work (uneven shares of a batch; sampling that stops rows at end-of-text). So:
- rollouts run with every parameter gathered (`gathered`): their forward passes are local;
- every rank runs the same number of backward chunks per update (`distributed.lockstep`; the loop
  adds one-row chunks at weight 0 on the less busy ranks);
- FSDP averages gradients over ranks, the loop's chunk weights already sum over the global batch,
  so each loss is scaled by the world size (`loss_scale`);
- the gradient norm is computed over the full (sharded) gradients (`grad_norm_and_clip`).
Checkpoints are written whole by rank 0 (an ordinary model directory that evaluation loads) and the
optimizer state is gathered by parameter name, so a run resumes exactly on the same world size.
"""
from __future__ import annotations

import torch
from torch import nn

from dlm_bench.distributed import is_sharded


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the ModuleList holding most parameters (LLaDA, Dream, the tiny model)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return []
    best = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    return list(best)


def shard_model(dlm, world: int, device) -> None:
    """Shard the policy in place: each block, then the rest at the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (world,))
    for block in _blocks(dlm.model):
        fully_shard(block, mesh=mesh)
    fully_shard(dlm.model, mesh=mesh)


def _fsdp_modules(model):
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


class gathered:
    """All parameters gathered for the duration (rollouts, `prepare`), resharded after."""

    def __init__(self, model):
        self.mods = _fsdp_modules(model) if is_sharded(model) else []

    def __enter__(self):
        for m in self.mods:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        return self

    def __exit__(self, *exc):
        for m in self.mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)
        return False


def loss_scale(model, world: int) -> float:
    return float(world) if is_sharded(model) else 1.0


def set_gradient_sync(model, on: bool) -> None:
    if is_sharded(model):
        model.set_requires_gradient_sync(on)


def grad_norm_and_clip(params, max_norm: float | None) -> float:
    """The global gradient norm over sharded and plain parameters; clip in place like
    `clip_grad_norm_` (coefficient max_norm / (norm + 1e-6), at most 1)."""
    from torch.distributed.tensor import DTensor
    squares = []
    for p in params:
        if p.grad is None:
            continue
        s = torch.linalg.vector_norm(p.grad.float()) ** 2
        squares.append(s.full_tensor() if isinstance(s, DTensor) else s)
    if not squares:
        return 0.0
    total = float(torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt())
    if max_norm:
        coef = min(1.0, max_norm / (total + 1e-6))
        if coef < 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)
    return total


def plain_params(params) -> list:
    """Parameters FSDP does not reduce (the method's own heads)."""
    from torch.distributed.tensor import DTensor
    return [p for p in params if not isinstance(p, DTensor)]


def full_state(model) -> dict:
    """The whole model's state dict on every rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _owner(model, extra: nn.Module) -> nn.Module:
    # the optimizer also holds the method's heads: name every parameter under one module
    return nn.ModuleDict({"policy": model, "method": extra})


def full_optimizer_state(model, extra: nn.Module, opt) -> dict:
    """AdamW's state keyed by parameter name, whole, on every rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(_owner(model, extra), opt,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, extra: nn.Module, opt, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(_owner(model, extra), opt, state, options=StateDictOptions(full_state_dict=True))


class SavesState:
    """Stands in for the policy in `checkpoint.save`: writes the model directory from a full state dict."""

    def __init__(self, dlm, state: dict):
        self.dlm, self.state = dlm, state

    def __getattr__(self, name):          # device, model, ...: the policy's
        return getattr(self.dlm, name)

    def save(self, path: str) -> None:
        self.dlm.model.save_pretrained(path, state_dict=self.state)
        self.dlm.tokenizer.save_pretrained(path)
