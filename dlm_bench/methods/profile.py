"""What `dlm-bench methods` and docs/methods.md compare across methods: each method's family, the
likelihood its loss uses, its reference model and the forward passes one backward holds, beside what
its config gives (the rollout decoder, optimizer updates per rollout batch).

Memory per update is *estimated* (no `dlm-bench memory` measurement exists yet) as the activations one
backward keeps per completion in dlm-bench at the recipe's window, with the harness's default gradient
checkpointing on a real model: forward rows x (256 prompt + window) tokens x one checkpointed block input
per layer of LLaDA-8B, 32 x 4096 x 2 bytes = 256 KiB per row-token (bf16; bench/README.md's analytic count).
Without checkpointing multiply by about 20 (5 MiB per row-token). Weights, adapters and optimizer state,
the same for every method at a given LoRA rank, and the one recomputed layer are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("reference point", "sequence-ELBO RL", "trajectory RL", "preference", "distribution matching",
            "SFT-style")
PROMPT_TOKENS = 256
ACT_BYTES_PER_ROW_TOKEN = 32 * 4096 * 2       # LLaDA-8B: a checkpointed block input per layer, bf16


@dataclass(frozen=True)
class Profile:
    family: str               # one of FAMILIES
    estimator: str            # the likelihood (or score) its loss is built on
    reference: str            # the reference model it keeps ("none" without one)
    forwards: float = 0.0     # forward rows one backward holds per completion (dlm-bench, recipe defaults)
    forwards_note: str = ""   # how they come about, and the reference's where it differs

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")

    def activation_gib(self, gen_length: int) -> float:
        """Estimated activations one backward keeps per completion at this window (see the module doc)."""
        return self.forwards * (PROMPT_TOKENS + gen_length) * ACT_BYTES_PER_ROW_TOKEN / 2 ** 30


def decoder(cls, config) -> str:
    """The rollout decoder a method's config asks for, in words."""
    r = getattr(config, "rollout", None)
    if r is None:
        return "-"
    if cls.rollout_order == "left_to_right":
        return f"left to right, 1 token/step, {r.gen_length} tokens, T {r.temperature:g}"
    return (f"low-confidence, {r.gen_length} tokens / {r.steps} steps / block {r.block_length}, "
            f"T {r.temperature:g}")


def updates_per_batch(config) -> str:
    o = getattr(config, "optim", None)
    return "-" if o is None else f"{o.inner_updates * o.minibatches} ({o.inner_updates} x {o.minibatches})"
