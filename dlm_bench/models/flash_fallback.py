"""A plain-torch stand-in for the parts of `flash_attn` that remote model code imports.

SDAR/TraDo's modelling file imports `flash_attn.ops.triton.layer_norm.rms_norm_fn` at the top (every
RMSNorm calls it) and `flash_attn.flash_attn_func` (single-token decoding with a cache). Where the
real package is not installed (any CPU machine; it needs CUDA to build), `standing_in(path)` puts this
module's functions in its place while the remote module is imported, then removes them again, so no
other code sees a `flash_attn` that is not there. Nothing is written to the user's files.

`used_by(module)` names the stand-ins a loaded remote module holds; the loader says so once on stderr
and records it (`DLM.extra["fallbacks"]`, the sweep's model.json, `dlm-bench info`).
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

PACKAGE = "flash_attn"


def rms_norm_fn(x, weight, bias=None, residual=None, eps=1e-6, dropout_p=0.0, prenorm=False,
                residual_in_fp32=False, **_):
    """flash-attn's fused RMSNorm, as its Triton kernel computes it: normalise and scale in float32,
    return the input's dtype. Only the plain form (no residual, dropout or prenorm) is provided."""
    if residual is not None or prenorm or dropout_p:
        raise NotImplementedError("the plain-torch rms_norm_fn has no residual, prenorm or dropout")
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """flash-attn's attention on [batch, length, heads, dim] tensors, through SDPA. Grouped keys are
    repeated to the query heads; a causal mask is aligned bottom-right, as flash-attn aligns it when
    there are more keys than queries (query i sees keys up to i + keys - queries)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    mask = None
    if causal:
        nq, nk = q.shape[-2], k.shape[-2]
        mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=softmax_scale)
    return out.transpose(1, 2)


def flash_attn_varlen_func(*_, **__):
    raise NotImplementedError("flash_attn is not installed; the plain-torch stand-in has no varlen attention")


def _modules() -> dict[str, types.ModuleType]:
    names = (PACKAGE, f"{PACKAGE}.ops", f"{PACKAGE}.ops.triton", f"{PACKAGE}.ops.triton.layer_norm")
    mods = {n: types.ModuleType(n, "dlm-bench plain-torch stand-in (flash_attn is not installed)") for n in names}
    for n, mod in mods.items():
        # A spec, so transformers' availability checks (find_spec) work; no version and no file, so
        # they report flash_attn as not installed while the stand-in is in place.
        mod.__spec__ = importlib.machinery.ModuleSpec(n, None, is_package=n != names[-1])
    for parent, child in zip(names, names[1:]):
        mods[parent].__path__ = []                          # a package, so its submodules import
        setattr(mods[parent], child.rsplit(".", 1)[1], mods[child])
    mods[PACKAGE].flash_attn_func = flash_attn_func
    mods[PACKAGE].flash_attn_varlen_func = flash_attn_varlen_func
    mods[names[-1]].rms_norm_fn = rms_norm_fn
    return mods


def needed(path: str | Path) -> bool:
    """Does a model folder's remote code import flash_attn, which is not installed here?"""
    code = "".join(f.read_text(errors="replace") for f in Path(path).glob("*.py"))
    return PACKAGE in code and importlib.util.find_spec(PACKAGE) is None


@contextlib.contextmanager
def standing_in(path: str | Path):
    """While the block runs, `import flash_attn...` finds the stand-ins (only where `needed`)."""
    if not needed(path):
        yield
        return
    mods = _modules()
    saved = {n: sys.modules[n] for n in mods if n in sys.modules}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n in mods:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def used_by(module) -> list[str]:
    """The stand-in functions a loaded module holds, by name ("rms_norm_fn", "flash_attn_func")."""
    ours = (rms_norm_fn, flash_attn_func)
    return sorted({f.__name__ for v in vars(module).values() for f in ours if v is f})
