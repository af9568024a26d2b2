"""The model split at its output head, so scores can apply the head at the masked positions only.

`DLM.hidden` gives the head's input (the last hidden states, after the final norm) without computing
the head, and `head(dlm)` the head as a function of those states. `likelihood.masked_token_logprobs`
then never builds `[rows, length, vocab]` logits: it gathers the masked positions, applies the head in
chunks of positions and recomputes each chunk in the backward pass (at vocab 126k the full fp32
logits and their log-softmax are the largest tensors of an update).

Known layouts: the built-in tiny model (`TinyDLMForMaskedLM.head`) and the families whose record says
`head_swappable` (`models/families.py`: LLaDA's `ff_out`, no weight tying or logit scaling; Dream's
`lm_head`). `probe` checks at load time that head(hidden) reproduces the model's logits; a model it
does not know, or that fails the probe, keeps the full-logits path.
"""
from __future__ import annotations

import contextlib

import torch


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def swappable(dlm) -> bool:
    """Can the head be swapped out for an identity (LLaDA, Dream), so a forward returns hidden states?"""
    if not dlm.family.head_swappable:
        return False
    cfg = getattr(_base(dlm.model), "config", None)
    return not (getattr(cfg, "weight_tying", False) or getattr(cfg, "scale_logits", False))


def sharded(model) -> bool:
    """Is the model wrapped by FSDP2 (its root parameters are shards outside its forward)?"""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def head(dlm):
    """hidden [..., H] -> logits [..., V], or None where the split is unknown or the head is adapted
    (a LoRA head would need the adapter switched off for the reference; the full path handles it)."""
    base = _base(dlm.model)
    if hasattr(base, "head") and dlm.extra.get("model_type") == getattr(base.config, "model_type", None):
        fn = base.head                          # the tiny model: lm_head + its banned tokens
        mod = base.get_output_embeddings()
    elif swappable(dlm):
        fn = mod = base.get_output_embeddings()
    else:
        return None
    if any(hasattr(m, "lora_A") for m in mod.modules()):
        return None
    return fn


def _slot(model, module):
    for name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if child is module:
                return parent, child_name
    raise ValueError("output head not found among the model's modules")


@contextlib.contextmanager
def without_head(model):
    """The model with its output head replaced by an identity: its `logits` are the head's input."""
    parent, name = _slot(model, _base(model).get_output_embeddings())
    original = getattr(parent, name)
    setattr(parent, name, torch.nn.Identity())
    try:
        yield
    finally:
        setattr(parent, name, original)


@torch.no_grad()
def probe(dlm) -> bool:
    """Does head(hidden) give the model's logits (to dtype tolerance) on a short input?"""
    fn = head(dlm)
    if fn is None:
        return False
    ids = dlm.tokenizer("output head probe 123", add_special_tokens=False)["input_ids"][:6]
    x = torch.tensor([ids + [dlm.mask_id] * 3], device=dlm.device)
    full = dlm._forward(x).float()
    split = fn(dlm.hidden(x)).float()
    tol = 1e-4 if next(dlm.model.parameters()).dtype in (torch.float32, torch.float64) else 5e-2
    return bool((full - split).abs().max() <= tol * max(1.0, float(full.abs().max())))
