"""Cheap checks of user input, run before any model is loaded or any file written, so a bad path or a
bad number costs a second and one line (UserError), never a half-made run folder or a traceback."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from dlm_bench.errors import UserError, one_line


def writable_dir(path: str | Path, what: str = "output folder", create: bool = False) -> Path:
    """Check that `path` is, or can be made, a writable folder; create it only when `create`."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {str(p)!r} is an existing file, not a folder")
    probe = p
    while not probe.exists():            # the nearest existing ancestor decides
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {str(p)!r} cannot be created: {str(probe)!r} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {str(p)!r} is not writable" if probe == p else
                        f"{what} {str(p)!r} cannot be created: {str(probe)!r} is not writable")
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{what} {str(p)!r} cannot be created: {e.strerror}") from None
    return p


TRAIN_RESULT = "train_result.json"      # marks a training run folder (dlm_bench.training.loop)


def model_dir(path: str | Path | None) -> str | None:
    """The model a `--model` argument names. A training run folder (`train --out`) is not a model: its
    `checkpoint/` is (the base model for a `base` run); say so on stderr, or refuse in one line when
    the run has saved no checkpoint yet."""
    p = Path(path) if path is not None else None
    if p is None or not _is_training_run(p):
        return None if path is None else str(path)
    chosen = p / "checkpoint" if (p / "checkpoint").is_dir() else None
    if chosen is None and (p / TRAIN_RESULT).is_file():
        chosen = json.loads((p / TRAIN_RESULT).read_text()).get("model")      # a `base` run: its model
    if chosen is None:
        raise UserError(f"{str(path)!r} is a training run folder with no checkpoint yet; "
                        "pass its checkpoint/ once the run has saved one")
    print(f"dlm-bench: {path} is a training run folder; using its model {chosen}", file=sys.stderr)
    return str(chosen)


def _is_training_run(p: Path) -> bool:
    if (p / TRAIN_RESULT).is_file():
        return True
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "train" in cfg and "method" in cfg     # a model config has neither


def model_weights(path: str | Path) -> None:
    """Open the header of every `*.safetensors` file in a model folder: a truncated or random file is
    refused here (safetensors checks that the header covers the file exactly) without reading weights."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"model directory {str(path)!r} does not exist")
    for f in sorted(p.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise UserError(f"{f} is not a valid safetensors file ({one_line(e)}); "
                            "re-download or re-save the model") from None


def finite(values, what: str) -> None:
    bad = [v for v in values if not math.isfinite(float(v))]
    if bad:
        raise UserError(f"{what} must be finite numbers, got {bad}")
