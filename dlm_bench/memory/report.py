"""A measurement as text: the peak per stage, what is alive at each peak, and the GPU overhead that
fake tensors cannot see, stated as an assumption."""
from __future__ import annotations

from dlm_bench.memory.measure import Measurement
from dlm_bench.memory.tracker import StagePeak

# Not seen by counting storages, an assumption (docs/memory.md): the CUDA context and cuBLAS
# workspaces, and the caching allocator's reserved bytes above the allocated ones.
from dlm_bench.models.footprint import CONTEXT_BYTES, FRAGMENTATION, GIB, overhead as device_bytes


def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


ORDER = ("frozen weights", "gathered parameters", "trainable parameters", "gradients", "optimizer state", "other")


def _alive(s: StagePeak) -> str:
    return ", ".join(f"{k} {gib(s.by_kind[k])}" for k in ORDER if s.by_kind.get(k, 0) >= GIB // 100)


def render(m: Measurement) -> str:
    lines = [f"Memory of {m.title}: fake-tensor allocated bytes, GiB (no GPU used, nothing allocated)"]
    lines += [f"  {n}" for n in m.notes]
    width = max(len(s.name) for s in m.stages)
    lines += ["", f"{'stage':<{width}}  {'peak':>6}  {'start':>6}  alive at the peak"]
    for s in m.stages:
        lines.append(f"{s.name:<{width}}  {gib(s.peak):>6}  {gib(s.start):>6}  {_alive(s)}")
        if s.largest:
            lines.append(f"{'':<{width}}  largest other than parameters: "
                         + "; ".join(f"{x.what} {gib(x.nbytes)}" for x in s.largest))
    top = m.peak
    lines += ["", f"Peak: {gib(top.peak)} GiB allocated, in {top.name}.",
              f"Not counted, an assumption: CUDA context and workspaces ~{gib(CONTEXT_BYTES)} GiB, allocator "
              f"rounding and fragmentation ~{FRAGMENTATION:.0%} of the peak: plan for ~{gib(device_bytes(top.peak))} "
              f"GiB ({device_bytes(top.peak) / 1e9:.1f} GB) of device memory."]
    if m.placeholders:
        n = sum(m.placeholders.values())
        lines.append(f"{n} value reads of small tensors computed from model outputs were answered with zeros "
                     f"(logged statistics such as loss and norms; the tokens of the sampled step): no large "
                     f"tensor's size depends on them.")
    return "\n".join(lines)
