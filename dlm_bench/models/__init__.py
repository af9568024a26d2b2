"""Model backends behind one small interface: `DLM` (logits, hidden states, tokenizer, mask id, save).

`load_model(path)` opens any local Hugging Face directory of a masked or block diffusion LM: the built-in
tiny model (`dlm_bench.models.tiny`), LLaDA, Dream, SDAR/TraDo and LLaDA2 layouts (remote code),
optionally with LoRA. What differs between families is in `models/families.py`.

`DLM`, `load_model` and `LoraSpec` load torch on first use, so the light modules of this package
(`families`) can be read by commands that never touch a model.
"""
from __future__ import annotations

import importlib

_HEAVY = {"DLM": "dlm_bench.models.dlm", "load_model": "dlm_bench.models.hf", "LoraSpec": "dlm_bench.models.hf"}
__all__ = list(_HEAVY)


def __getattr__(name: str):
    if name not in _HEAVY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HEAVY[name]), name)
    globals()[name] = value         # later look-ups skip this function
    return value
