"""Real values beside fake tensors, for the values the project's Python control flow reads.

Under `FakeTensorMode` a tensor has a shape and no values, but the code under measurement reads some:
`bool(mask.all())`, `.item()`, `.tolist()`, `mask.nonzero()`, boolean indexing. `Shadows` keeps a real
CPU copy (a "shadow") of every small fake tensor whose inputs all have one: token ids, masks, step
maps, indices, counters, the draws of seeded generators. Such an op runs twice: fake (for the
measured tensor) and real on the shadows (for its values); an op whose output shape depends on values
(`nonzero`, boolean indexing) takes its fake output from the real one. Large tensors (weights,
activations, logits: above `max_numel` elements) never get a shadow, so the real side stays small.

A value read of a tensor without a shadow (one computed from model outputs: a loss, a gradient norm,
a sampled token) is answered with zeros standing in for its values, and counted by op in
`placeholders`; these are the statistics a step logs, whose values no tensor shape depends on.

Shadows are kept per storage (a view's shadow is the same view of its storage's shadow), so in-place
writes through any view stay consistent; a write the real side cannot follow drops the shadow.
"""
from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException, FakeTensor,
                                           unset_fake_temporarily)
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

MAX_NUMEL = 1 << 22         # 4 M elements: ids, masks and indices of a whole 8B step are far below
MAX_FLOAT_NUMEL = 1 << 16   # floats: mask draws, rewards, counters; not LoRA matrices or their AdamW state


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class Shadows(TorchDispatchMode):
    """Enter it above a `FakeTensorMode` (and below a `LiveBytes`, which then counts fake storages)."""

    def __init__(self, fake_mode, max_numel: int = MAX_NUMEL, max_float_numel: int = MAX_FLOAT_NUMEL):
        super().__init__()
        self.fake_mode = fake_mode
        self.max_numel, self.max_float_numel = max_numel, max_float_numel
        self._real: dict[int, torch.UntypedStorage] = {}     # fake storage -> its real storage
        self._real_keys: set[int] = set()
        self.placeholders: Counter = Counter()              # op -> value reads answered with zeros

    # ------------------------------------------------------------------ shadows of tensors

    def shadow(self, t, make: bool = False, op: str = ""):
        """The real tensor with t's values (t itself if it is real), None if unknown. With `make`,
        an unknown small tensor gets zeros as its values (counted under `op`)."""
        if is_traceable_wrapper_subclass(t):         # a DTensor: its values live in its shards
            return None
        if not isinstance(t, FakeTensor):
            return t
        st = self._real.get(_key(t))
        if st is None:
            if not make or not self._small(t):
                return None
            self.placeholders[op] += 1
            with unset_fake_temporarily():
                st = torch.UntypedStorage(t.untyped_storage().nbytes())
                st.fill_(0)
            self._keep(t, st)
        with unset_fake_temporarily():
            return torch.empty(0, dtype=t.dtype).set_(st, t.storage_offset(), t.shape, t.stride())

    def _keep(self, fake: torch.Tensor, real: torch.UntypedStorage) -> None:
        k, fst = _key(fake), fake.untyped_storage()
        self._real[k] = real
        self._real_keys.add(real._cdata)
        weakref.finalize(fst, self._drop, k, real._cdata)

    def _drop(self, k: int, rk: int) -> None:
        self._real.pop(k, None)
        self._real_keys.discard(rk)

    def _adopt(self, fake_out, real_out) -> None:
        """Register the real outputs as the shadows of the fake outputs that have new storages."""
        for f, r in zip(tree_leaves(fake_out), tree_leaves(real_out)):
            if not isinstance(f, FakeTensor) or not isinstance(r, torch.Tensor) or _key(f) in self._real:
                continue            # a view or an in-place result: its storage's shadow already moved
            with unset_fake_temporarily():
                same = (r.shape == f.shape and r.stride() == f.stride() and r.dtype == f.dtype
                        and r.storage_offset() == f.storage_offset() and r.untyped_storage()._cdata not in self._real_keys)
                if same:
                    st = r.untyped_storage()
                else:       # lay the values out as the fake tensor is laid out
                    st = torch.UntypedStorage(f.untyped_storage().nbytes())
                    torch.empty(0, dtype=f.dtype).set_(st, f.storage_offset(), f.shape, f.stride()).copy_(r)
            self._keep(f, st)

    # ------------------------------------------------------------------ the mode

    def _small(self, out) -> bool:
        """Worth a real copy: small tensors, smaller still for floating point ones."""
        n = nf = 0
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                n += t.numel()
                nf += t.numel() if t.is_floating_point() else 0
        return n <= self.max_numel and nf <= self.max_float_numel

    def _run_real(self, func, args, kwargs, make: bool):
        """The op on the shadows, or None when an input has none (and `make` is off)."""
        leaves, spec = tree_flatten((args, kwargs))
        real = []
        for x in leaves:
            if isinstance(x, torch.Tensor):
                x = self.shadow(x, make, func.overloadpacket.__name__)
                if x is None:
                    return None
            real.append(x)
        a, k = tree_unflatten(real, spec)
        with unset_fake_temporarily():
            return (func(*a, **k),)

    def _forget_writes(self, func, args, kwargs) -> None:
        """A write the real side did not follow: the written storages' values are now unknown."""
        schema = func._schema
        if not schema.is_mutable:
            return
        for arg, value in zip(schema.arguments, list(args) + [kwargs.get(a.name) for a in schema.arguments[len(args):]]):
            if arg.alias_info is not None and arg.alias_info.is_write:
                for t in tree_leaves(value):
                    if isinstance(t, FakeTensor):
                        self._real.pop(_key(t), None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:      # .item(), bool(), .tolist()
            (value,) = self._run_real(func, args, kwargs, make=True)
            return value
        try:
            out = func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            real = self._run_real(func, args, kwargs, make=True)
            if real is None:
                raise
            out = tree_map(lambda r: self.fake_mode.from_tensor(r) if isinstance(r, torch.Tensor) else r, real[0])
            self._adopt(out, real[0])
            return out
        real = self._run_real(func, args, kwargs, make=False) if self._small(out) else None
        if real is None:
            self._forget_writes(func, args, kwargs)
        else:
            self._adopt(out, real[0])
        return out
