"""Which modules get LoRA adapters: recipes name projections (q, k, v, o, gate, up, down); each
architecture spells them its own way, and a recipe's literal names can miss on another architecture
(d1 and ESPO pass q_proj ... gate_proj, which on LLaDA match only q_proj, k_proj, v_proj, up_proj:
LLaDA calls the others attn_out, ff_proj, ff_out). `resolve` maps the canonical names per model type
into a regex over the transformer blocks (so LLaDA's output head, also named ff_out, is never hit);
any other name is passed to peft literally, which reproduces a recipe's code exactly."""
from __future__ import annotations

from dlm_bench.models import families

CANONICAL = ("q", "k", "v", "o", "gate", "up", "down")   # each family's spelling: Family.lora_names


def parse(targets: str) -> list[str]:
    names = [t.strip() for t in str(targets).split(",") if t.strip()]
    if not names:
        raise ValueError("lora.targets is empty: give 'all-linear' or module names")
    return names


def resolve(targets: str, model_type: str) -> str | list[str]:
    """peft `target_modules` for `targets` on a model of `model_type`: 'all-linear' as is, canonical
    names as a block-anchored regex where its family's names are known (models/families.py), other
    names literally."""
    names = parse(targets)
    if names == ["all-linear"]:
        return "all-linear"
    canon = [n for n in names if n in CANONICAL]
    family = families.by_model_type(model_type)
    if canon and not family.lora_names:
        raise ValueError(f"lora.targets {targets!r} uses canonical names ({', '.join(canon)}) but model type "
                         f"{model_type!r} has no name map; give its module names instead")
    if not canon:
        return names
    modules = sorted({family.lora_names[n] for n in canon} | {n for n in names if n not in CANONICAL})
    return family.lora_blocks + "(" + "|".join(modules) + ")"
