"""The block-diffusion families' own reference samplers, imported at test time from the hub snapshots in
../shared/models (never copied into the repository; see its MANIFEST.md):

- TraDo/SDAR: `trado-8b-instruct/reference/dllm-rl_generate.py::block_diffusion_generate`
  (Gen-Verse/dLLM-RL @ 10b4fd1c), called as TraDo's README calls it;
- LLaDA2: the hub's `LLaDA2MoeModelLM.generate` (in the modelling file the model runs), and
  `llada2-mini/reference/dllm_llada2_sampler.py` (ZHZisZZ/dllm @ d8cc1190), whose three base classes
  come from the `dllm` package: plain stand-ins with the fields that file uses are registered here.

Glue, not algorithm: LLaDA2's references build their block mask in bfloat16 (`.log().to(bfloat16)`),
which SDPA refuses next to a float32 model (the tiny test models are float32); `float_masks` casts that
mask to float32 on its way into the model. 0 and -inf are exact in both dtypes.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch


def load(path, name: str):
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trado_generate(snapshot):
    return load(snapshot / "reference" / "dllm-rl_generate.py", "dllm_rl_generate").block_diffusion_generate


@dataclass
class _BaseSampler:
    model: Any
    tokenizer: Any


@dataclass
class _SamplerConfig:
    return_dict: bool = False


@dataclass
class _SamplerOutput:
    sequences: Any
    histories: Any = None


def dllm_llada2_sampler(snapshot):
    """dllm's LLaDA2Sampler module, with `dllm.core.samplers.base` stood in while it is imported."""
    base = types.ModuleType("dllm.core.samplers.base")
    base.BaseSampler, base.SamplerConfig, base.SamplerOutput = _BaseSampler, _SamplerConfig, _SamplerOutput
    names = ("dllm", "dllm.core", "dllm.core.samplers", "dllm.core.samplers.base")
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update({**{n: types.ModuleType(n) for n in names[:-1]}, names[-1]: base})
    try:
        return load(snapshot / "reference" / "dllm_llada2_sampler.py", "dllm_llada2_sampler")
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


@contextlib.contextmanager
def float_masks(model):
    """The model's forward with a bfloat16 additive mask cast to float32 (see the module docstring)."""
    original = model.forward

    def forward(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dtype == torch.bfloat16:
            attention_mask = attention_mask.to(torch.float32)
        return original(*args, attention_mask=attention_mask, **kwargs)

    model.forward = forward
    try:
        yield model
    finally:
        del model.forward
