"""What each training step trains on and at what learning rate: pure functions of the run's settings.

`step_prompts` is the prompt order (a per-epoch shuffle seeded by (seed, epoch)), `problems_visited`
the problems a run of some steps will see (what offline trajectories must cover), `lr_multiplier`
and `warmup_updates` the schedule (Hugging Face `get_scheduler` semantics)."""
from __future__ import annotations

import math
import random

from dlm_bench.config import derive_seed


def step_prompts(n_problems: int, batch: int, seed: int, step: int) -> list[int]:
    """Problem indices of `step`: consecutive slices of a per-epoch shuffle seeded by (seed, epoch)."""
    out, pos = [], step * batch
    while len(out) < batch:
        epoch, off = divmod(pos, n_problems)
        perm = list(range(n_problems))
        random.Random(derive_seed(seed, epoch, 7)).shuffle(perm)
        take = min(batch - len(out), n_problems - off)
        out += perm[off:off + take]
        pos += take
    return out


def lr_multiplier(schedule: str, step: int, total: int, warmup: int) -> float:
    """Hugging Face `get_scheduler` semantics at optimizer step `step` (0-based)."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def warmup_updates(optim, total: int) -> int:
    """Warm-up length in optimizer updates: `warmup_steps` when set, else `warmup_ratio` of `total`."""
    return optim.warmup_steps if optim.warmup_steps is not None else math.ceil(optim.warmup_ratio * total)


def problems_visited(n_problems: int, batch: int, seed: int, steps: int) -> list[int]:
    """The sorted problem indices that `steps` steps of `step_prompts` visit."""
    seen: set[int] = set()
    for s in range(steps):
        seen.update(step_prompts(n_problems, batch, seed, s))
        if len(seen) == n_problems:
            break
    return sorted(seen)
