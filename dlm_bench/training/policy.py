"""The models a training run holds: the policy (base model, a fresh LoRA adapter, or a checkpoint
when resuming) and the frozen reference (the adapter switched off under LoRA, else a frozen copy)."""
from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import torch

from dlm_bench.models.adapter import AdapterDisabled
from dlm_bench.config import derive_seed
from dlm_bench.errors import UserError


def lora_spec(lora_cfg):
    """The adapter of a method's `lora` block, or None for full fine-tuning (r = 0)."""
    from dlm_bench.models import LoraSpec
    r = int(lora_cfg.r or 0)
    if r <= 0:
        return None
    return LoraSpec(r=r, alpha=int(lora_cfg.alpha or r), dropout=float(lora_cfg.dropout or 0.0),
                    target_modules=getattr(lora_cfg, "targets", "all-linear"))


def load_policy(model: str, lora_cfg, seed: int, dtype, device, ckpt: Path | None):
    """(policy, lora?) from the base model (+ fresh adapter), or from a checkpoint when resuming."""
    from dlm_bench.models import load_model
    lora = lora_spec(lora_cfg)
    torch.manual_seed(derive_seed(seed, 0xADA))      # same fresh adapter on every rank
    if ckpt is None or lora is not None:
        dlm = load_model(model, lora=lora, dtype=dtype, device=device)
    else:
        dlm = load_model(str(ckpt), dtype=dtype, device=device)
    if ckpt is not None and lora is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        f = ckpt / "adapter_model.safetensors"
        if not f.is_file():
            raise UserError(f"{ckpt} has no adapter_model.safetensors to resume the LoRA run from")
        set_peft_model_state_dict(dlm.model, load_file(str(f), device=str(device)))
    dlm.path = model
    return dlm, lora is not None


def train_block_size(dlm, block_length: int) -> None:
    """A block-diffusion policy is scored with the blocks it decodes with in its rollouts, so training with
    another block length than the model's own adapts it to that size (TraceRL's block-size adaptation,
    dLLM-RL `rollout.block_size` = `training.block_size`); a full fine-tuning checkpoint records it in its
    config.json (`block_size`). Full-attention models are left alone."""
    if not dlm.family.block_causal or block_length == dlm.block_size:
        return
    print(f"note: training the {dlm.family.name} model (block size {dlm.block_size}) with its rollouts' block "
          f"length {block_length}: scores and checkpoints use {block_length}", file=sys.stderr, flush=True)
    dlm.block_size = int(block_length)
    base = dlm.model.get_base_model() if hasattr(dlm.model, "get_base_model") else dlm.model
    base.config.block_size = int(block_length)


def frozen_reference(model: str, policy, lora: bool, resumed: bool, dtype):
    if lora:
        return AdapterDisabled(policy)
    if resumed:       # the policy has moved: the reference is the base model as loaded
        from dlm_bench.models import load_model
        ref = load_model(model, dtype=dtype, device=policy.device)
        ref.block_size = policy.block_size          # scored with the blocks the policy trains with
    else:
        ref = dataclasses.replace(policy, model=copy.deepcopy(policy.model))
    ref.model.eval()
    for p in ref.model.parameters():
        p.requires_grad_(False)
    return ref
