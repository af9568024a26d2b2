"""Random-weight models of real architectures from a weightless hub snapshot (config + remote code).

Tests build tiny models of LLaDA and Dream this way; a GPU check builds the full-size architecture.
The snapshot folder is only read: everything is written to `out`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dlm_bench.models import families


def build_random(src: str | Path, out: str | Path, overrides: dict | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Copy the snapshot's non-weight files to `out`, then save a seeded random model built from its config."""
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "MANIFEST.md":
            shutil.copy(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(overrides or {})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    random_model(out, seed, dtype).save_pretrained(out)
    return out


def random_model(model_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The seeded random model of `model_dir`'s config and remote code, in memory."""
    from transformers import AutoConfig

    from dlm_bench.models.compat import patch_config, remote_model_class
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    patch_config(config)
    cls = remote_model_class(str(model_dir), config.auto_map, families.by_model_type(config.model_type).auto_class)
    torch.manual_seed(seed)
    return cls(config).to(dtype).eval()


def model_from_config(model_dir: str | Path, dtype: torch.dtype):
    """The model of `model_dir`'s config.json (remote code or a registered architecture such as the
    built-in tiny model), initialised as its class does, built directly in `dtype` (no cast after)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from dlm_bench.models import tiny  # noqa: F401  (registers the built-in architecture)
    from dlm_bench.models.compat import patch_config, remote_model_class
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    patch_config(config)
    auto_map = getattr(config, "auto_map", None) or {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if "AutoModel" in auto_map:
            family = families.by_model_type(config.model_type)
            return remote_model_class(str(model_dir), auto_map, family.auto_class)(config).eval()
        return AutoModelForMaskedLM.from_config(config).eval()
    finally:
        torch.set_default_dtype(previous)


def build_tiny(src: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight model of `src`'s architecture (its family's `tiny_sizes`, real vocabulary)."""
    family = families.by_model_type(json.loads((Path(src) / "config.json").read_text())["model_type"])
    if not family.tiny_sizes:
        raise ValueError(f"no tiny sizes for model family {family.name!r} (models/families.py)")
    return build_random(src, out, family.tiny_sizes, seed)
