"""The counting context of a measurement: fake tensors (nothing allocated) or real ones, with what a
GPU run would do where a CPU run differs.

`counting(fake=True)` enters `FakeTensorMode` (on the fake `cpu` device: torch's CPU-only builds abort
on a fake `cuda` scaled-dot-product attention; CPU flash attention keeps the same O(rows x length) side
state as the CUDA flash / memory-efficient kernels), `Shadows` for the values Python reads, and a
`LiveBytes` that counts the fake storages. With `fake=False` the same code runs on real tensors under
the same `LiveBytes` (the tracer's own check, tests/test_memory_tool.py).

Two torch behaviours are adjusted for the duration, in both modes:
- AdamW takes its `foreach` implementation, which is torch's default on CUDA (on CPU it defaults to
  the per-tensor loop); its step holds one temporary as large as the second moments.
- `torch.utils.swap_tensors` (what `Module.to` uses on fake parameters) refuses tensors with weak
  references, and the fake mode's conversion memo holds one to every fake parameter; the memo entries
  of the two tensors being swapped are dropped first (a cache: nothing reads them back).
"""
from __future__ import annotations

import contextlib

import torch

from dlm_bench.memory.shadows import Shadows
from dlm_bench.memory.tracker import LiveBytes


@contextlib.contextmanager
def _foreach_adam():
    import torch.optim.adam as adam
    original = adam._default_to_fused_or_foreach

    def as_on_cuda(params, differentiable, use_fused=False):
        return (False, False) if differentiable else (False, True)

    adam._default_to_fused_or_foreach = as_on_cuda
    try:
        yield
    finally:
        adam._default_to_fused_or_foreach = original


@contextlib.contextmanager
def _swappable(fake_mode):
    original = torch.utils.swap_tensors

    def swap_tensors(t1, t2):
        memo = fake_mode.fake_tensor_converter.tensor_memo
        for k in [k for k, v in memo.items() if v is t1 or v is t2]:
            del memo[k]
        return original(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


@contextlib.contextmanager
def counting(fake: bool = True, kinds=None):
    """Yields (LiveBytes, Shadows or None): everything run inside is counted."""
    tracker = LiveBytes(kinds)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_foreach_adam())
        shadows = None
        if fake:
            from torch._subclasses.fake_tensor import FakeTensorMode
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            stack.enter_context(_swappable(mode))
            stack.enter_context(mode)
            shadows = stack.enter_context(Shadows(mode))
        stack.enter_context(tracker)
        yield tracker, shadows
