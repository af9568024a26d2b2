"""Two LoRA updates of a method through the training loop on tiny random-weight LLaDA (mask-fixed) and
Dream built from ../shared/models (the `real_dirs` fixture of test_real_models.py): the bar issue 25
sets for every method it adds. The update must be finite, move the adapter (the model's logits change)
and be saved as an adapter folder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dlm_bench.models import load_model
from dlm_bench.training.loop import TrainConfig, train

LLADA_FIX, DREAM = "llada-8b-instruct-maskfix", "dream-v0-instruct-7b"
LORA = dict(group_size=2, batch_prompts=2, gen_length=8, steps=8, block_length=8, lr=1e-3, lr_schedule="constant",
            warmup_ratio=0.0, inner_updates=1, minibatches=1, lora_r=4, lora_alpha=8, lora_dropout=0.0)


def two_lora_updates(method: str, real_dirs: dict, tmp_path: Path, **over) -> None:
    for name in (LLADA_FIX, DREAM):
        out = tmp_path / name
        ckpt = train(TrainConfig(method=method, model=real_dirs[name], out=str(out), train_steps=2, task="testbed",
                                 overrides={**LORA, **over}, device="cpu"), progress=False)
        rows = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
        assert len(rows) == 2, (name, rows)
        assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows), (name, rows)
        assert (ckpt / "adapter_config.json").is_file()
        base, trained = load_model(real_dirs[name], device="cpu"), load_model(str(ckpt), device="cpu")
        x = torch.tensor([base.prompt_ids("What is 2+3?") + [base.mask_id] * 4])
        with torch.no_grad():
            assert not torch.allclose(base.logits(x), trained.logits(x)), f"{method} on {name}: the adapter is unchanged"
