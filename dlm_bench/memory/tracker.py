"""Live tensor storages, counted under a dispatch mode: the bytes a CUDA caching allocator reports as
allocated (`torch.cuda.memory_allocated`), on fake tensors (nothing allocated) or real ones.

Every tensor an aten op returns is registered by its untyped storage; the storage counts until its
last view dies (a `weakref.finalize` on the storage object, which torch keeps alive exactly as long
as the storage itself). Storage resizes (`UntypedStorage.resize_`, which FSDP uses to free unsharded
parameters and which no dispatch mode sees) are followed by a patch held for the duration.

Not seen, on purpose or by construction: the CUDA context, cuBLAS/cuDNN workspaces, kernels' internal
scratch buffers, and the caching allocator's rounding and fragmentation (its reserved bytes above the
allocated ones). `docs/memory.md` states how much to add for them.
"""
from __future__ import annotations

import contextlib
import heapq
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

TOP = 3                 # the largest live storages reported at each peak
PARAMETERS = ("frozen weights", "gathered parameters", "trainable parameters")


@dataclass(frozen=True)
class Storage:
    nbytes: int
    what: str           # the op that made it, with the first view's shape and dtype


@dataclass
class StagePeak:
    name: str
    start: int                    # bytes live when the stage began
    peak: int
    largest: list[Storage] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)   # live bytes at the peak per kind (params, ...)


def describe(t: torch.Tensor, op: str) -> str:
    dtype = str(t.dtype).replace("torch.", "")
    return f"{op} [{', '.join(str(s) for s in t.shape)}] {dtype}"


class LiveBytes(TorchDispatchMode):
    """Counts live storage bytes; `stage(name)` records each stage's peak and what is alive at it.

    `kinds`, when set, returns {storage key: kind} for the storages it can name (frozen weights,
    trainable parameters, gradients, optimizer state); the rest count as "other". The largest
    tensors reported at a peak are the largest that are not parameters (the weights are in `by_kind`)."""

    def __init__(self, kinds=None):
        super().__init__()
        self.now = 0
        self._live: dict[int, Storage] = {}
        self._peak = 0
        self._rising = False           # a new peak has been reached and not yet recorded
        self._pending: dict[int, Storage] | None = None     # the live storages at the latest peak
        self._current: StagePeak | None = None
        self.stages: list[StagePeak] = []
        self.kinds = kinds
        self._resize = None

    # ------------------------------------------------------------------ registering storages

    @staticmethod
    def key(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata

    def adopt(self, tensors, what: str = "existing") -> None:
        """Count tensors that were made before the mode was entered (a real model's weights)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._see(t, what)

    def _see(self, t: torch.Tensor, op: str) -> None:
        if is_traceable_wrapper_subclass(t):            # a DTensor (FSDP2): its local shard
            for name in t.__tensor_flatten__()[0]:
                inner = getattr(t, name)
                if isinstance(inner, torch.Tensor):
                    self._see(inner, op)
            return
        if t.layout != torch.strided:
            return
        st = t.untyped_storage()
        k, n = st._cdata, st.nbytes()
        old = self._live.get(k)
        if old is None:             # zero-byte storages too: FSDP resizes them up and down
            weakref.finalize(st, self._free, k)
            self._live[k] = Storage(n, describe(t, op))
            self._grow(n)
        elif old.nbytes != n:           # resized in place (aten.resize_, set_)
            self._resized(k, n)

    def _resized(self, k: int, n: int) -> None:
        old = self._live[k]
        self._before_change(n - old.nbytes)
        self._live[k] = Storage(n, old.what)
        self._grow(n - old.nbytes)

    def _before_change(self, n: int) -> None:
        if n < 0 and self._rising:      # the state about to change is the stage's peak so far
            self._rising = False
            self._pending = dict(self._live)

    def _grow(self, n: int) -> None:
        self.now += n
        if self.now > self._peak:
            self._peak = self.now
            self._rising = True

    def _free(self, k: int) -> None:
        s = self._live.get(k)
        if s is not None:
            self._before_change(-s.nbytes)
            del self._live[k]
            self._grow(-s.nbytes)

    def _settle(self) -> None:
        """Describe the latest peak. `_grow` runs inside storages' finalizers, where no tensor may be
        touched, so it only copies the live set; this runs between ops, where `kinds` may look at the
        parameters. (Storages freed in between can no longer be named and count as "other".)"""
        if self._current is None:
            return
        if self._rising:
            self._rising, self._pending = False, dict(self._live)
        if self._pending is None:
            return
        live, self._pending = self._pending, None
        kind_of = self.kinds() if self.kinds is not None else {}
        by_kind: dict[str, int] = {}
        for k, s in live.items():
            kind = kind_of.get(k, "other")
            by_kind[kind] = by_kind.get(kind, 0) + s.nbytes
        cur = self._current
        cur.peak, cur.by_kind = sum(by_kind.values()), by_kind
        cur.largest = heapq.nlargest(TOP, (s for k, s in live.items() if kind_of.get(k) not in PARAMETERS),
                                     key=lambda s: s.nbytes)

    # ------------------------------------------------------------------ stages

    @contextlib.contextmanager
    def stage(self, name: str):
        """The peak of this block of work (bytes live at any moment inside it, everything counted)."""
        self._settle()
        self._current = StagePeak(name, self.now, self.now)
        self._peak, self._rising, self._pending = self.now, True, None
        try:
            yield self._current
        finally:
            self._settle()
            self.stages.append(self._current)
            self._current = None

    @property
    def peak(self) -> int:
        return max((s.peak for s in self.stages), default=self._peak)

    # ------------------------------------------------------------------ the mode

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._pending is not None:
            self._settle()
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._see(t, name)
        if func._schema.is_mutable:     # an op that resized an argument it was given (out=, resize_)
            for t in tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor) and self.key(t) in self._live:
                    self._see(t, name)
        return out

    def __enter__(self):
        original = torch.UntypedStorage.resize_
        tracker = self

        def resize_(st, size):
            out = original(st, size)
            k = st._cdata
            if k in tracker._live:
                tracker._resized(k, st.nbytes())
            return out

        self._resize = original
        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._resize
        return super().__exit__(*exc)
