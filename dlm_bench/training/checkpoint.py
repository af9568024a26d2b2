"""Atomic checkpoints: a Hugging Face model directory plus `trainer_state.pt`, swapped in whole.

A run killed at any moment leaves either the previous checkpoint or the new one, never half of one.
Each save also notes the environment beside the checkpoint (`environment.jsonl` in the run folder,
not in the model folder, whose content is the model's fingerprint).
"""
from __future__ import annotations

from pathlib import Path

import torch

from dlm_bench.environment import note
from dlm_bench.training.model_card import CARD
from dlm_bench.runs.files import recover_dir, staging_dir, swap_in_dir

STATE = "trainer_state.pt"


def save(out_dir: str | Path, dlm, state: dict, name: str = "checkpoint", card: str | None = None) -> Path:
    """Write `dlm`, `state` and the model card (README.md) to out_dir/name atomically (write aside,
    then rename)."""
    out = Path(out_dir)
    tmp = staging_dir(out, name)
    dlm.save(str(tmp))
    torch.save(state, tmp / STATE)
    if card is not None:
        (tmp / CARD).write_text(card, encoding="utf-8")
    final = out / name
    swap_in_dir(tmp, final)
    note(out, dlm.device, next(dlm.model.parameters()).dtype, step=state.get("step"))
    return final


def load_state(out_dir: str | Path, name: str = "checkpoint") -> tuple[Path, dict] | None:
    """(checkpoint dir, trainer state) of the last complete checkpoint, or None."""
    final = Path(out_dir) / name
    if not recover_dir(final, STATE):
        return None
    return final, torch.load(final / STATE, weights_only=False)
