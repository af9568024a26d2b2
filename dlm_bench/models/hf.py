"""Load a masked diffusion LM from a local Hugging Face directory (never from the network).

Handles the built-in tiny model, LLaDA (`trust_remote_code`, mask id 126336 from its config) and
Dream (AR-adapted: logits shifted, 4-D attention mask); what differs between them is read from their
`Family` record (`models/families.py`). The mask id is read from the model or tokenizer config and
never hard-coded; a model without one is not a DLM and is refused.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm_bench import library_warnings
from dlm_bench.errors import UserError, one_line
from dlm_bench.models import families, flash_fallback
from dlm_bench.models.dlm import DLM

ADAPTER_CONFIG = "adapter_config.json"
# Set by `weights_from_config`: the load-time probe answers to use instead of running the probes.
_FROM_CONFIG: contextvars.ContextVar[dict | None] = contextvars.ContextVar("weights_from_config", default=None)


@contextlib.contextmanager
def weights_from_config(probes: dict):
    """Within: a model directory loads with freshly initialised weights built from its config.json
    (no weight file is read; the snapshots in ../shared/models have none), in the requested dtype.
    `dlm-bench memory` loads this way under fake tensors, where the load-time probes (which compare
    logits) cannot run: `probes` gives their answers ({"honours_padding": bool, "gather_logits": bool})."""
    token = _FROM_CONFIG.set(dict(probes))
    try:
        yield
    finally:
        _FROM_CONFIG.reset(token)


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


def _load_weights(p: Path, config: dict, family, dtype, trust_remote_code: bool):
    """The model itself: remote-code DLMs through the `auto_map` class with the language-model head
    (`Family.auto_class`) with the compatibility shims of `compat.py`; standard ones as masked LMs."""
    import transformers
    from transformers import AutoConfig, AutoModelForMaskedLM

    from dlm_bench.models import compat
    library_warnings.quiet_transformers()
    auto_map = config.get("auto_map", {})
    try:
        if trust_remote_code and "AutoModel" in auto_map:
            hf_config = AutoConfig.from_pretrained(p, trust_remote_code=True)
            compat.patch_config(hf_config)
            model = compat.remote_model_class(str(p), auto_map, family.auto_class).from_pretrained(
                p, config=hf_config, dtype=dtype)
            compat.restore_rotary_buffers(model)
        else:
            model = AutoModelForMaskedLM.from_pretrained(p, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001  (remote code can raise anything; the user needs one line)
        msg = one_line(e)
        raise UserError(f"could not load the model in {str(p)!r} with transformers {transformers.__version__} "
                        f"({type(e).__name__}: {msg}); if its remote code predates this transformers, "
                        f"try the tested range in pyproject.toml") from e
    return model


def load_model(path: str, *, lora: LoraSpec | None = None, dtype: torch.dtype | str | None = None,
               device: str | torch.device | None = None, trust_remote_code: bool = True):
    """Open a local DLM directory as a `dlm_bench.models.DLM`.

    `path` is a model directory or a LoRA adapter folder (`adapter_config.json`, as `train` writes
    with LoRA): the adapter's base model is loaded and the adapter merged into it. With `lora`, a
    fresh adapter is put on top (training)."""
    p = Path(path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None or dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file():
        dlm = _load_adapter(p, dtype, device, trust_remote_code)
    else:
        dlm = _load_plain(p, dtype, device, trust_remote_code)
    if lora is not None:
        from peft import LoraConfig, get_peft_model
        from dlm_bench.models.lora_targets import resolve
        targets = lora.target_modules
        if isinstance(targets, str):        # 'all-linear' or the names of a `lora.targets` setting
            try:
                targets = resolve(targets, str(getattr(dlm.model.config, "model_type", "")))
            except ValueError as e:
                raise UserError(str(e)) from e
        dlm.model = get_peft_model(dlm.model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                         target_modules=targets))
        # The saved adapter names its base by absolute path, so `passk` etc. can load it from anywhere.
        dlm.model.peft_config["default"].base_model_name_or_path = str(p.resolve())
    return dlm


def _load_plain(p: Path, dtype, device, trust_remote_code: bool):
    from transformers import AutoTokenizer

    import dlm_bench.models.tiny  # noqa: F401  (the import registers the tiny model)
    config = _read_config(p)
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001  (any tokenizer failure is a bad model directory)
        raise UserError(f"could not load a tokenizer from {str(p)!r}: {e}") from e
    mask_id = _mask_id(config, tokenizer)
    if mask_id is None:
        raise UserError(f"{str(p)!r} is not a masked diffusion LM: no mask token id in its config or tokenizer")
    model_type = str(config.get("model_type", "")).lower()
    family = families.by_model_type(model_type)
    probes = _FROM_CONFIG.get()
    if probes is None:
        model = _load_weights(p, config, family, dtype, trust_remote_code)
    else:
        from dlm_bench.models.random_init import model_from_config
        model = model_from_config(p, dtype)
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise UserError(f"{str(p)!r} has no language-model head (logits); it is not a DLM")
    fallbacks = _fallbacks(model)
    model.to(device)
    model.eval()
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.get("eos_token_id")
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    vocab = tokenizer.get_vocab()
    turn_ends = [vocab[t] for t in family.stop_tokens if t in vocab]
    dlm = DLM(model=model, tokenizer=tokenizer, mask_id=int(mask_id), eos_id=int(eos_id), pad_id=int(pad_id),
              eot_id=turn_ends[0] if turn_ends else None, shift_logits=family.shift_logits,
              path=str(p), extra={"model_type": model_type}, family=family)
    if fallbacks:
        dlm.extra["fallbacks"] = fallbacks
    dlm.stop_ids = tuple(sorted({int(eos_id), *turn_ends, *_generation_eos(p)}))
    if family.block_causal:
        dlm.block_size = int(config.get("block_size") or family.block_size)
    dlm.honours_padding = probe_padding(dlm) if probes is None else bool(probes["honours_padding"])
    if family.memory_bounds:              # the tiny model keeps full logits: its demo records are bit-exact
        from dlm_bench.models import output_head
        dlm.gather_logits = output_head.probe(dlm) if probes is None else bool(probes["gather_logits"])
    if not dlm.honours_padding:
        print(f"note: {p} ignores the attention mask (left padding changes its logits); dlm-bench runs rows "
              f"with different prompt lengths separately, so results do not depend on batch composition",
              file=sys.stderr)
    return dlm


_NOTED: set[str] = set()


def _fallbacks(model) -> list[str]:
    """The plain-torch stand-ins for flash_attn that the model's remote code runs on (said once per process)."""
    used = flash_fallback.used_by(sys.modules[type(model).__module__])
    found = [f"flash_attn.{name} (plain torch)" for name in used]
    note = ", ".join(found)
    if found and note not in _NOTED:
        _NOTED.add(note)
        print(f"note: flash_attn is not installed; {type(model).__name__} runs on dlm-bench's stand-ins: {note} "
              f"(same results, slower than the CUDA kernels)", file=sys.stderr)
    return found


def _generation_eos(p: Path) -> list[int]:
    """Extra stop ids a model declares in generation_config.json (an int or a list)."""
    f = p / "generation_config.json"
    try:
        eos = json.loads(f.read_text()).get("eos_token_id") if f.is_file() else None
    except json.JSONDecodeError:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]


@torch.no_grad()
def probe_padding(dlm) -> bool:
    """Does the model honour the attention mask? The same short input alone and left-padded by three
    tokens must give the same logits (to dtype tolerance) at every position the input can predict."""
    ids = dlm.tokenizer("padding probe 12345", add_special_tokens=False)["input_ids"][:6]
    row = ids + [dlm.mask_id] * 4
    was, dlm.honours_padding = dlm.honours_padding, True
    try:
        alone = dlm.logits(torch.tensor([row], device=dlm.device)).float()
        x, att = dlm.pad_left([row, [ids[0]] * (len(row) + 3)])
        padded = dlm.logits(x, att)[0, -len(row):].float()
    finally:
        dlm.honours_padding = was
    first = 1 if dlm.shift_logits else 0      # a shifted model's first position has nothing before it
    diff = (padded[first:] - alone[0, first:]).abs().max().item()
    scale = max(1.0, alone.abs().max().item())
    tol = 1e-3 if next(dlm.model.parameters()).dtype == torch.float32 else 5e-2
    return diff <= tol * scale


def _load_adapter(p: Path, dtype, device, trust_remote_code: bool):
    """A LoRA folder: its base model (recorded in adapter_config.json) with the adapter merged in."""
    from peft import PeftModel
    try:
        adapter = json.loads((p / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p / ADAPTER_CONFIG} is not valid JSON: {e}") from e
    base = adapter_base(p, adapter)
    if (base / "config.json").is_file():
        dlm = _load_plain(base, dtype, device, trust_remote_code)
    else:                                           # continued training: an adapter on an adapter
        dlm = _load_adapter(base, dtype, device, trust_remote_code)
    try:
        dlm.model = PeftModel.from_pretrained(dlm.model, str(p)).merge_and_unload()
    except Exception as e:  # noqa: BLE001  (a mismatched adapter fails deep inside peft)
        raise UserError(f"could not apply the LoRA adapter {str(p)!r} to its base model {str(base)!r}: {e}") from e
    dlm.model.eval()
    dlm.path = str(p)
    dlm.extra.update(base_model=str(base), adapter=str(p))
    return dlm


def adapter_base(p: Path, adapter: dict) -> Path:
    """The base model of a LoRA folder: the recorded path, absolute or relative to the folder."""
    name = adapter.get("base_model_name_or_path")
    if not name:
        raise UserError(f"{p / ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    for cand in (Path(name), p / name):
        if (cand / "config.json").is_file() or (cand / ADAPTER_CONFIG).is_file():
            if cand.resolve() == p.resolve():
                raise UserError(f"the LoRA adapter {str(p)!r} names itself as its base model")
            return cand.resolve()
    raise UserError(f"the base model {name!r} of the LoRA adapter {str(p)!r} is not a local model directory; "
                    f"put it there (or edit base_model_name_or_path in {ADAPTER_CONFIG})")
