"""What besides the config can move a number, recorded beside every run; and the one switch that makes
a process deterministic.

Floating-point results depend on the CPU or GPU, the library versions, the dtype, the thread count
(the order of reductions) and whether deterministic algorithms were on. None of it is part of a
config hash (the same config on another machine is the same experiment, reproduced statistically,
not bit for bit), so it is recorded beside the hash:
- `environment(device, dtype)`: versions, machine, threads and numerics flags, as a dict;
- `note(folder, ...)`: appends it to `folder/environment.jsonl` whenever it differs from the last
  line, so a run resumed elsewhere lists every environment that wrote to it (sweeps: when records
  are written; training: when a checkpoint is saved);
- `set_deterministic(threads)`: deterministic mode (`dlm-bench --deterministic [--threads N]`, the
  demo config's `deterministic:` section). Same machine type + same mode: bitwise-identical runs.
"""
from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

from dlm_bench.errors import UserError
from dlm_bench.runs.files import append_lines, read_jsonl

LOG = "environment.jsonl"
CUBLAS_VAR = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_FIXED = ":4096:8"      # a fixed cuBLAS workspace: what PyTorch requires for deterministic matmuls
DEFAULT_THREADS = 1           # the thread count every machine has

_mode: dict | None = None     # what set_deterministic applied in this process (None: not on)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "dlm-bench"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _numerics() -> dict:
    import torch
    return {"threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            CUBLAS_VAR: os.environ.get(CUBLAS_VAR)}


def set_deterministic(threads: int = DEFAULT_THREADS) -> dict:
    """Make this process deterministic; returns the settings it replaced (for `restore`).

    - `threads` intra-op threads: a CPU reduction is split across threads, so its order (and result)
      depends on the count; a fixed count fixes it;
    - `torch.use_deterministic_algorithms(True)`: ops with a deterministic kernel use it (GPU
      scatter/index adds, embedding backward), ops without one raise instead of varying silently;
    - cuDNN deterministic with autotuning off, and a fixed cuBLAS workspace (deterministic GPU matmul
      reductions; it takes effect only if set before CUDA starts, which the CLI flag guarantees).
    """
    global _mode
    import torch

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"deterministic mode needs a positive thread count, got {threads!r}")
    before = {**_numerics(), "mode": _mode}
    os.environ.setdefault(CUBLAS_VAR, CUBLAS_FIXED)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    _mode = {"threads": threads}
    return before


def restore(before: dict) -> None:
    """Undo `set_deterministic` (tests, and a demo run inside a longer-lived process)."""
    global _mode
    import torch

    torch.set_num_threads(before["threads"])
    torch.use_deterministic_algorithms(before["deterministic_algorithms"])
    torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
    if before[CUBLAS_VAR] is None:
        os.environ.pop(CUBLAS_VAR, None)
    else:
        os.environ[CUBLAS_VAR] = before[CUBLAS_VAR]
    _mode = before["mode"]


@contextmanager
def deterministic(threads: int | None):
    """Deterministic mode for the `with` block when `threads` is a count; None: leave things as
    they are. A mode already on (the CLI flag) wins: the command line overrides a config file."""
    if threads is None or _mode is not None:
        yield
        return
    before = set_deterministic(threads)
    try:
        yield
    finally:
        restore(before)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment(device, dtype=None) -> dict:
    """Everything outside the config that can change a float: where and how this process computes."""
    import torch

    num = _numerics()
    env = {"versions": versions(), "device": str(device) if device else None,
           "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
           "deterministic_mode": _mode is not None, "machine": platform.machine(), "cpu": _cpu_model(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
           "torch_threads": num.pop("threads"), "torch_interop_threads": torch.get_num_interop_threads(),
           **{k.lower(): v for k, v in num.items()},
           "world_size": int(os.environ.get("WORLD_SIZE", "1")),
           "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    if device and str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def note(folder: str | Path, device, dtype=None, **extra) -> dict:
    """Append this process's environment to `folder/environment.jsonl` unless the last line already
    says the same (a resume on the same machine adds nothing); `extra` (e.g. the step) is kept on the
    line but not compared. Returns the environment."""
    env = environment(device, dtype)
    path = Path(folder) / LOG
    seen = read_jsonl(path)
    if not seen or {k: v for k, v in seen[-1].items() if k in env} != env:
        append_lines(path, [json.dumps({**env, **extra, "time": round(time.time(), 3)}, sort_keys=True)])
    return env


def history(folder: str | Path) -> list[dict]:
    """Every environment that wrote to `folder`, oldest first."""
    return read_jsonl(Path(folder) / LOG)
