"""Which modules get LoRA adapters: recipes name projections (q, k, v, o, gate, up, down); each
architecture spells them its own way, and a recipe's literal names can miss on another architecture
(d1 and ESPO pass q_proj ... gate_proj, which on LLaDA match only q_proj, k_proj, v_proj, up_proj:
LLaDA calls the others attn_out, ff_proj, ff_out). `resolve` maps the canonical names per model type
into a regex over the transformer blocks (so LLaDA's output head, also named ff_out, is never hit);
any other name is passed to peft literally, which reproduces a recipe's code exactly."""
from __future__ import annotations

CANONICAL = ("q", "k", "v", "o", "gate", "up", "down")

# model_type -> (block path regex, canonical name -> module name); the tiny model fuses q/k/v and gate/up
ARCHITECTURES = {
    "llada": (r".*\.blocks\.\d+\.", {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
                                     "gate": "ff_proj", "up": "up_proj", "down": "ff_out"}),
    "dream": (r".*\.layers\.\d+\.(self_attn|mlp)\.", {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                                                      "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}),
    "dlm-bench-tiny": (r".*\.layers\.\d+\.", {"q": "qkv", "k": "qkv", "v": "qkv", "o": "out",
                                              "gate": "gate_up", "up": "gate_up", "down": "down"}),
}


def parse(targets: str) -> list[str]:
    names = [t.strip() for t in str(targets).split(",") if t.strip()]
    if not names:
        raise ValueError("lora.targets is empty: give 'all-linear' or module names")
    return names


def resolve(targets: str, model_type: str) -> str | list[str]:
    """peft `target_modules` for `targets` on a model of `model_type`: 'all-linear' as is, canonical
    names as a block-anchored regex where the architecture is known, other names literally."""
    names = parse(targets)
    if names == ["all-linear"]:
        return "all-linear"
    canon = [n for n in names if n in CANONICAL]
    arch = ARCHITECTURES.get(str(model_type).lower())
    if canon and arch is None:
        raise ValueError(f"lora.targets {targets!r} uses canonical names ({', '.join(canon)}) but model type "
                         f"{model_type!r} has no name map; give its module names instead")
    if not canon:
        return names
    prefix, table = arch
    modules = sorted({table[n] for n in canon} | {n for n in names if n not in CANONICAL})
    return prefix + "(" + "|".join(modules) + ")"
