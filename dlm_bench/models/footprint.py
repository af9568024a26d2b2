"""Will it fit the visible GPU? A cheap memory model of a sampler call and of a training step, read
off `dlm-bench memory`'s measurements (docs/memory.md, bench/memory_8b.json), so `passk` and `train`
can refuse a batch before the first out-of-memory error, without a fake-tensor run at every start.

What the measurements show (LLaDA-8B, Dream-7B, bf16, P 256 + G 512):
- a sampler call peaks at the end of its forward pass: the weights, every row's full logits
  [rows, width, V] and the block's copy [rows, block, V] are alive together: the weights plus
  rows x (width + block) x V x the logits' bytes (`sampler_bytes`); the step after it holds far less,
  since the noise is drawn one row at a time (`sampler._gumbel_argmax`);
- training adds what stays resident between steps: trainable parameters, their gradients (the last
  update's, alive through the next rollout) and AdamW's two moments, in the trainable dtype (peft's
  adapters are fp32), plus a frozen copy of the weights for full fine-tuning with a reference;
- an update adds, above that, one set of in-flight gradients (or AdamW's foreach temporary at its
  step) and the backward chunk's activations (or `prepare`'s no-grad scoring, when larger): per
  completion in a chunk x token x layers x hidden width, a method's own coefficient (`UPDATE_BYTES`).
The device overhead that counting cannot see is an assumption (`overhead`), as in `dlm-bench memory`.
"""
from __future__ import annotations

from dlm_bench.errors import UserError
from dlm_bench.models.dlm import SHIFT_CHUNK_BYTES

GIB = 2 ** 30
CONTEXT_BYTES = 1 * GIB          # CUDA context and cuBLAS workspaces (an assumption, not measured here)
FRAGMENTATION = 0.05             # caching-allocator rounding and fragmentation (an assumption)
NOISE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2}

# Bytes per (completion in a backward chunk) x (token of prompt + window) x (layers x hidden width)
# that a steady-state update adds above the resident state and one set of in-flight gradients (or
# `prepare` above the resident state, when larger), at each method's defaults: `bench/memory_8b.py
# --markdown` prints this dict from its measurements (the larger of LLaDA-8B and Dream-7B;
# docs/memory.md has the tables). A method that is not listed (a plugin) is checked without it.
UPDATE_BYTES: dict[str, float] = {"trafl": 10.76, "espo": 6.53, "diffu_grpo": 5.79, "wd1": 0.0, "spg": 1.53,
                                   "tabom": 1.54, "coupled_grpo": 12.16}   # 2026-12-06, LLaDA-8B rows


def overhead(allocated: int) -> int:
    """Device bytes to plan for, given allocated bytes: the context and fragmentation assumptions."""
    return int(allocated * (1 + FRAGMENTATION) + CONTEXT_BYTES)


def _dims(model) -> tuple[int, int, int]:
    """(layers, hidden width, vocabulary) of a transformers model (LLaDA's own config names too)."""
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None) or 1
    width = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None) or 1
    head = model.get_output_embeddings()
    return int(layers), int(width), int(head.weight.shape[0])


def parameter_bytes(model, trainable: bool | None = None) -> int:
    """Bytes of the model's parameters (all, or only the trainable / frozen ones)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()
               if trainable is None or p.requires_grad == trainable)


def sampler_bytes(dlm, rows: int, width: int, block: int, noise_dtype: str = "float64") -> int:
    """Allocated bytes a sampler call adds to what is resident, at the largest of three moments: the
    end of the forward pass (every row's logits and the block's copy), a row's noise draw (the
    block's logits, the row's full-width draw and the copy of its block) and the confidence softmax
    (the block's logits and their softmax)."""
    _, _, vocab = _dims(dlm.model)
    logit, noise = next(dlm.model.parameters()).element_size(), NOISE_BYTES.get(noise_dtype, 8)
    forward = rows * (width + block) * vocab * logit + (SHIFT_CHUNK_BYTES if dlm.shift_logits else 0)
    draw = rows * block * vocab * logit + (width + block) * vocab * noise
    return max(forward, draw, 2 * rows * block * vocab * logit)


def training_resident_bytes(dlm, lora: bool, reference_copy: bool, shards: int = 1) -> int:
    """Weights, trainable parameters with their gradients and AdamW's two moments (in the trainable
    dtype; FSDP2 splits these over `shards` ranks), a frozen reference copy for full fine-tuning."""
    trainable = parameter_bytes(dlm.model, trainable=True)
    frozen = parameter_bytes(dlm.model, trainable=False)
    return frozen + 4 * trainable // shards + (frozen + trainable if reference_copy and not lora else 0)


def update_bytes(dlm, method: str, completions: int, width: int) -> int:
    """What an update adds to the resident state: in-flight gradients and the chunk's activations."""
    layers, hidden, _ = _dims(dlm.model)
    per = UPDATE_BYTES.get(method, 0.0)
    return parameter_bytes(dlm.model, trainable=True) + int(per * completions * width * layers * hidden)


def refuse_unless_fits(predicted: int, device, what: str, fix: str, flag: str) -> None:
    """One line and exit 2 when `predicted` allocated bytes (plus the overhead) exceed the device's
    memory; nothing on a CPU."""
    import torch
    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return
    total = torch.cuda.get_device_properties(device).total_memory
    need = overhead(predicted)
    if need > total:
        raise UserError(f"{what} needs about {need / GIB:.1f} GiB ({predicted / GIB:.1f} GiB allocated + the assumed "
                        f"overhead; docs/memory.md) but {torch.cuda.get_device_name(device)} has "
                        f"{total / GIB:.1f} GiB: {fix}, or pass {flag} to try anyway")

