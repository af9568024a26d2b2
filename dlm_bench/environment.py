"""What besides the config can move a number: the machine and the numerics settings of a run.

Floating-point results depend on the device, the thread count (reduction order) and whether
deterministic algorithms were on, so every run folder's results.json records them beside the
package versions; runs that differ here agree statistically, not bit for bit.
"""
from __future__ import annotations

import os
import platform


def environment(device: str | None) -> dict:
    import torch

    env = {"device": str(device) if device else None, "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch_interop_threads": torch.get_num_interop_threads(),
           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
           "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
           "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
           "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    if device and str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
