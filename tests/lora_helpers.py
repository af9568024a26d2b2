"""A LoRA adapter folder made with peft directly, as `train` writes one (for tests of the commands that
take a LoRA output; training itself is tested elsewhere)."""
from __future__ import annotations

import torch

from dlm_bench.models import LoraSpec, load_model


def lora_folder(base_dir: str, out, seed: int = 0, targets: str = "q,v,o,down") -> str:
    """Adapters on `targets` (canonical names) with random B matrices, so the adapter changes the model."""
    dlm = load_model(base_dir, device="cpu", lora=LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dlm.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    dlm.save(str(out))
    return str(out)
