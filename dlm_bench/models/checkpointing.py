"""Gradient (activation) checkpointing for training: keep each transformer block's input, recompute
the block in the backward pass. The update is the same with and without (torch's checkpoint replays
the RNG state, so dropout draws the same masks in the recompute).

Each model's own switch is used where its code has one (its family's `checkpointing`, `models/families.py`;
`detect` tries them in this order):
- `llada`: LLaDA remote code, `LLaDAModel.set_activation_checkpointing(whole_layer)`;
- `transformers`: transformers models that support it (Dream, the built-in tiny model):
  `activation_checkpointing_enable` (5.x) / `gradient_checkpointing_enable` (4.x), non-reentrant;
- `blocks`: anything else: every block of the model's largest list of identical blocks is
  checkpointed (`wrap_blocks`), only while training with gradients enabled.
Non-reentrant checkpointing needs no input that requires grad, so it works under LoRA (only adapter
weights train) and costs nothing for the frozen reference, which runs under no_grad.
"""
from __future__ import annotations

import functools
import sys

import torch
from torch.utils.checkpoint import checkpoint


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def enable(model, how: str = "detect") -> str:
    """Switch checkpointing on for `model` (a transformers model, possibly under peft) the way `how`
    says (a family's switch; `detect`: the first that the model has); returns how."""
    base = _base(model)
    inner = getattr(base, "model", None)
    strategy = getattr(sys.modules.get(type(inner).__module__), "ActivationCheckpointingStrategy", None)
    llada = strategy is not None and hasattr(inner, "set_activation_checkpointing")
    if how == "llada" or (how == "detect" and llada):
        inner.set_activation_checkpointing(strategy.whole_layer)
        # LLaDA replays the RNG only when the model's own dropouts are all 0; LoRA dropout lives inside
        # its blocks too, so always replay it (the recompute must draw the same masks).
        inner._activation_checkpoint_fn = functools.partial(checkpoint, preserve_rng_state=True, use_reentrant=False)
        return "llada"
    if how == "transformers" or (how == "detect" and getattr(base, "supports_gradient_checkpointing", False)):
        switch = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
        switch({"use_reentrant": False})
        return "transformers"
    wrap_blocks(base)
    return "blocks"


def disable(model) -> None:
    base = _base(model)
    inner = getattr(base, "model", None)
    if hasattr(inner, "set_activation_checkpointing"):
        inner.set_activation_checkpointing(None)
    elif getattr(base, "supports_gradient_checkpointing", False):
        switch = getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable
        switch()
    for m in base.modules():
        if getattr(type(m), "_dlm_bench_checkpointed", False):
            m.__class__ = type(m).__bases__[0]


def _blocks(model) -> torch.nn.ModuleList:
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)
             and len({type(b) for b in m}) == 1]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no list of transformer blocks to checkpoint")
    return max(lists, key=len)


def wrap_blocks(model) -> int:
    """Checkpoint each block of the model's largest ModuleList of identical blocks. The block's class is
    swapped for a subclass (not its forward patched), so deep copies (the frozen reference) and
    state_dict keys stay as they were. Returns the number of blocks wrapped."""
    blocks = _blocks(model)
    for b in blocks:
        if not getattr(type(b), "_dlm_bench_checkpointed", False):
            b.__class__ = _checkpointed(type(b))
    return len(blocks)


@functools.lru_cache(maxsize=None)
def _checkpointed(cls):
    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return checkpoint(super(sub, self).forward, *args, use_reentrant=False, **kwargs)
        return super(sub, self).forward(*args, **kwargs)

    sub = type(cls.__name__, (cls,), {"forward": forward, "_dlm_bench_checkpointed": True})
    return sub
