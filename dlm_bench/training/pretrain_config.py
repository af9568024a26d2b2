"""The settings of `dlm-bench pretrain` (kept apart from the training code, which imports torch, so that
`dlm-bench pretrain --help` starts at once)."""
from __future__ import annotations

from dataclasses import dataclass

from dlm_bench.errors import UserError
from dlm_bench.runs import tracking


@dataclass
class PretrainConfig:
    task: str = "testbed"
    split: str = "train"
    out: str = "results/base"
    init: str = "tiny:2m"           # "tiny:SIZE" builds a fresh model; otherwise a model directory
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.1       # cosine decay to this fraction of lr
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    answer_length: int = 16
    seed: int = 0
    save_every: int = 200
    minutes: float | None = None    # stop (and save) after this much wall-clock time
    bf16: bool = False              # bf16 autocast: measured slower than fp32 on these CPUs
    data_dir: str | None = None
    report_to: str = "none"         # experiment trackers (runs/tracking.py), as TRL's report_to

    def validate(self) -> "PretrainConfig":
        for name in ("steps", "batch_size", "answer_length", "save_every"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        tracking.parse_report_to(self.report_to)
        return self
