"""Load a masked diffusion LM from a local Hugging Face directory (never from the network).

Handles the built-in tiny model, LLaDA (`trust_remote_code`, mask id 126336 from its config) and
Dream (AR-adapted: logits shifted, 4-D attention mask). The mask id is read from the model or
tokenizer config and never hard-coded; a model without one is not a DLM and is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm_bench.errors import UserError, one_line


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


def _read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not path.is_dir():
        raise UserError(f"model directory {str(path)!r} does not exist")
    if not cfg.is_file():
        raise UserError(f"{str(path)!r} has no config.json; is it a Hugging Face model directory?")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg} is not valid JSON: {e}") from e


def _mask_id(config: dict, tokenizer) -> int | None:
    for key in ("mask_token_id", "mask_id"):
        if isinstance(config.get(key), int):
            return config[key]
    return getattr(tokenizer, "mask_token_id", None)


def load_model(path: str, *, lora: LoraSpec | None = None, dtype: torch.dtype | str | None = None,
               device: str | torch.device | None = None, trust_remote_code: bool = True):
    """Open a local DLM directory as a `dlm_bench.models.DLM`."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    import dlm_bench.models.tiny  # noqa: F401  (registers the tiny model with the Auto classes)
    from dlm_bench.models import DLM

    p = Path(path)
    config = _read_config(p)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None or dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001  (any tokenizer failure is a bad model directory)
        raise UserError(f"could not load a tokenizer from {str(p)!r}: {e}") from e
    mask_id = _mask_id(config, tokenizer)
    if mask_id is None:
        raise UserError(f"{str(p)!r} is not a masked diffusion LM: no mask token id in its config or tokenizer")
    model_type = str(config.get("model_type", "")).lower()
    is_dream = model_type == "dream"
    # Remote-code DLMs (LLaDA, Dream) map AutoModel to their LM class; standard ones are masked LMs.
    auto = AutoModel if "AutoModel" in config.get("auto_map", {}) else AutoModelForMaskedLM
    from safetensors import SafetensorError  # a truncated or random weight file
    try:
        model = auto.from_pretrained(p, dtype=dtype, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError, SafetensorError) as e:
        raise UserError(f"could not load the model in {str(p)!r}: {one_line(e)}") from e
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise UserError(f"{str(p)!r} has no language-model head (logits); it is not a DLM")
    model.to(device)
    model.eval()
    if lora is not None:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules))
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.get("eos_token_id")
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>") if "<|eot_id|>" in tokenizer.get_vocab() else None
    return DLM(model=model, tokenizer=tokenizer, mask_id=int(mask_id), eos_id=int(eos_id), pad_id=int(pad_id),
               eot_id=eot, shift_logits=is_dream, four_d_mask=is_dream, path=str(p),
               extra={"model_type": model_type})
