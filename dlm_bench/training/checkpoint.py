"""Atomic checkpoints: a Hugging Face model directory plus `trainer_state.pt`, swapped in whole.

A run killed at any moment leaves either the previous checkpoint or the new one, never half of one.
Each save also notes the environment beside the checkpoint (`environment.jsonl` in the run folder,
not in the model folder, whose content is the model's fingerprint).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from dlm_bench.runs.files import share_tree

STATE = "trainer_state.pt"


def save(out_dir: str | Path, dlm, state: dict, name: str = "checkpoint") -> Path:
    """Write `dlm` and `state` to out_dir/name atomically (write aside, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    dlm.save(str(tmp))
    torch.save(state, tmp / STATE)
    share_tree(tmp)                  # mkdtemp's 0700 and the weights' 0600: others read checkpoints too
    old = out / f".{name}-old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    from dlm_bench.environment import note
    note(out, dlm.device, next(dlm.model.parameters()).dtype, step=state.get("step"))
    return final


def load_state(out_dir: str | Path, name: str = "checkpoint") -> tuple[Path, dict] | None:
    """(checkpoint dir, trainer state) of the last complete checkpoint, or None."""
    final = Path(out_dir) / name
    if not (final / STATE).is_file():
        old = Path(out_dir) / f".{name}-old"          # killed between the two renames
        if (old / STATE).is_file():
            os.replace(old, final)
        else:
            return None
    return final, torch.load(final / STATE, weights_only=False)
