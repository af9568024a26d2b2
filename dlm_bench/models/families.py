"""One record per model family: the facts the harness needs about an architecture, in one table.

Everything that differs between DLM families is read from here (by the `model_type` of a model's
config.json), not from flags spread over the loaders, samplers and training code:

| field           | meaning                                                                              |
|-----------------|--------------------------------------------------------------------------------------|
| `auto_class`    | the `auto_map` entry that has the language-model head (LLaDA2's and SDAR's `AutoModel` has none) |
| `mask_token`    | the mask token's text, used where config.json has no `mask_token_id` (never a hard-coded id) |
| `stop_tokens`   | end-of-turn tokens that end a completion besides end-of-text (looked up in the vocabulary) |
| `end_texts`     | decoded texts that end a completion in this family's chat format (`grade` cuts there)  |
| `shift_logits`  | AR-adapted models (Dream) predict token i at position i-1                              |
| `attention`     | `full` (bidirectional) or `block_causal` (bidirectional inside a block, causal across) |
| `block_size`    | default block size of a block-causal family (config.json `block_size` wins)            |
| `padding`       | how left padding reaches the model: `2d` key mask, `4d_bool` or `4d_additive` masks with explicit positions |
| `kv_cache`      | the KV-cache protocol of the remote code (`models/kv_cache.py`, `block_sampler.py`)     |
| `moe`           | mixture-of-experts layers                                                              |
| `lora_blocks`, `lora_names` | regex of the transformer blocks and canonical projection -> module names (`lora_targets.py`) |
| `head_swappable`| the head is `get_output_embeddings()` right after the final norm (`output_head.py`)    |
| `checkpointing` | gradient-checkpointing switch (`checkpointing.py`): `llada`, `transformers`, `blocks`; `detect` tries them in turn |
| `memory_bounds` | training memory bounds on by default (off for the built-in tiny model: bit-exact demo) |
| `tiny_sizes`    | config overrides for a tiny random-weight model of the architecture (`random_init.py`) |

This module imports nothing heavy (the `grade` and `tasks` commands read it without torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

ATTENTION = ("full", "block_causal")
PADDING = ("2d", "4d_bool", "4d_additive")
# native: past_key_values with update(k, v, layer) (tiny, Dream); llada_hooks: LLaDA's attention wrapped on
# the instance; store_kv: SDAR's DynamicCache protocol (appends only when the forward gets store_kv=True);
# update: an HF Cache whose update() is called on every forward (LLaDA2).
KV_CACHE = ("native", "llada_hooks", "store_kv", "update")

_QKV_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
              "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    auto_class: str = "AutoModel"
    mask_token: str | None = None
    stop_tokens: tuple[str, ...] = ()
    end_texts: tuple[str, ...] = ()
    shift_logits: bool = False
    attention: str = "full"
    block_size: int | None = None
    padding: str = "2d"
    kv_cache: str | None = None
    moe: bool = False
    lora_blocks: str | None = None
    lora_names: dict = field(default_factory=dict)
    head_swappable: bool = False
    checkpointing: str = "detect"
    memory_bounds: bool = True
    tiny_sizes: dict = field(default_factory=dict)

    @property
    def block_causal(self) -> bool:
        return self.attention == "block_causal"

    @property
    def approximate_cache(self) -> bool:
        """Does Fast-dLLM's approximate block cache (`--cache prefix|dual`) apply? Only to full attention:
        a block-causal family keeps an exact cache of its finished blocks instead."""
        return self.attention == "full" and self.kv_cache in ("native", "llada_hooks")


TINY = Family(
    name="tiny", model_types=("dlm-bench-tiny",), auto_class="AutoModelForMaskedLM",
    end_texts=("<|endoftext|>", "<|eot|>"), kv_cache="native", memory_bounds=False,
    lora_blocks=r".*\.layers\.\d+\.",
    lora_names={"q": "qkv", "k": "qkv", "v": "qkv", "o": "out", "gate": "gate_up", "up": "gate_up", "down": "down"},
    head_swappable=False, checkpointing="transformers")

LLADA = Family(
    name="llada", model_types=("llada",), stop_tokens=("<|eot_id|>",), end_texts=("<|eot_id|>", "<|endoftext|>"),
    kv_cache="llada_hooks", lora_blocks=r".*\.blocks\.\d+\.",
    # LLaDA spells o/gate/down attn_out/ff_proj/ff_out; its output head is also ff_out, outside the blocks
    lora_names={"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
                "gate": "ff_proj", "up": "up_proj", "down": "ff_out"},
    head_swappable=True, checkpointing="llada",
    tiny_sizes=dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, max_sequence_length=512))

DREAM = Family(
    name="dream", model_types=("dream",), stop_tokens=("<|im_end|>",), end_texts=("<|im_end|>", "<|endoftext|>"),
    shift_logits=True, padding="4d_bool", kv_cache="native",
    lora_blocks=r".*\.layers\.\d+\.(self_attn|mlp)\.", lora_names=_QKV_NAMES,
    head_swappable=True, checkpointing="transformers",
    tiny_sizes=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                    intermediate_size=128, max_position_embeddings=512))

# TraDo-4B/8B-Instruct (TraceRL) and SDAR: Qwen3-shaped, block-causal (config.json `block_size` 4), mask id in
# config.json. Chat turns end with <|im_end|> (its generation_config.json lists it with <|endoftext|>).
SDAR = Family(
    name="sdar", model_types=("sdar",), auto_class="AutoModelForCausalLM", stop_tokens=("<|im_end|>",),
    end_texts=("<|im_end|>", "<|endoftext|>"), attention="block_causal", block_size=4, padding="4d_bool",
    kv_cache="store_kv", lora_blocks=r".*\.layers\.\d+\.(self_attn|mlp)\.", lora_names=_QKV_NAMES,
    head_swappable=True, checkpointing="transformers",
    tiny_sizes=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                    intermediate_size=128, max_position_embeddings=512))

# LLaDA2.0/2.1-mini (inclusionAI): mixture of experts (layer 0 dense, then routed + shared experts), fused
# q/k/v. LoRA: the canonical names cover attention (query_key_value, dense), the dense layer's MLP, the shared
# expert and every routed expert (gate/up/down_proj), i.e. exactly PEFT's "all-linear", the target set of
# DARE's LLaDA2.0-mini LoRA recipe (yjyddq/DARE @ 83ae8a3 recipe/llada2_mini/run_sft_peft_llada2_mini.sh:
# lora_rank 32, target_modules all-linear; its RL recipes train every weight); the router (`gate.weight`, an
# nn.Parameter) gets none (tests/test_block_training.py). The router has no auxiliary loss to keep: the model
# returns aux_loss None and balances experts with a fixed `expert_bias` buffer (aux-loss-free routing), which
# no dlm-bench update touches. Its 2-D masks with a 0 turn causal, so padding goes in as a 4-D additive mask. No block size in
# config.json: 32, its `generate()` default. Mask id from the tokenizer's <|mask|>. The reference sampler
# stops at end-of-text only; the chat template's <|role_end|> id is a placeholder in the shared snapshot.
LLADA2_MOE = Family(
    name="llada2_moe", model_types=("llada2_moe",), auto_class="AutoModelForCausalLM",
    end_texts=("<|endoftext|>", "<|role_end|>"), attention="block_causal", block_size=32, padding="4d_additive",
    kv_cache="update", moe=True,
    lora_blocks=r".*\.layers\.\d+\.(attention|mlp)\.(shared_experts\.|experts\.\d+\.)?",
    lora_names={"q": "query_key_value", "k": "query_key_value", "v": "query_key_value", "o": "dense",
                "gate": "gate_proj", "up": "up_proj", "down": "down_proj"},
    head_swappable=True, checkpointing="transformers",
    tiny_sizes=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                    intermediate_size=128, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                    n_group=2, topk_group=1, first_k_dense_replace=1, rotary_dim=8, max_position_embeddings=512))

# Any other masked LM: the end-of-turn tokens of every chat format above, looked up where present.
GENERIC = Family(
    name="generic", model_types=(), auto_class="AutoModelForMaskedLM", stop_tokens=("<|eot_id|>", "<|im_end|>"),
    end_texts=("<|end_of_text|>",))

FAMILIES = (TINY, LLADA, DREAM, SDAR, LLADA2_MOE)


def by_model_type(model_type: str | None) -> Family:
    """The family of a config.json `model_type` (the generic record for one no family claims)."""
    kind = str(model_type or "").lower()
    return next((f for f in FAMILIES if kind in f.model_types), GENERIC)


def end_texts() -> tuple[str, ...]:
    """Every decoded text that ends a completion in some family's chat format (in table order)."""
    texts = [t for f in (*FAMILIES, GENERIC) for t in (*f.end_texts, *f.stop_tokens)]
    return tuple(dict.fromkeys(texts))
