"""Small heads that methods train beside the policy (TraFL's log Z, TraceRL's values)."""
import torch
from torch import nn


class ScalarHead(nn.Module):
    """features -> LayerNorm -> Linear -> GELU -> Linear -> one scalar. The output layer starts at zero,
    so the head's first predictions are 0 (log Z = 0, values = 0)."""

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU(),
                                 nn.Linear(width, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats.to(self.net[-1].weight.dtype)).squeeze(-1)   # fp32 head (float64 if cast)


def hidden_size(dlm) -> int:
    """Width of the hidden states a head reads (from the config, else one tiny forward)."""
    cfg = getattr(dlm.model, "config", None)
    for key in ("hidden_size", "d_model", "n_embd"):
        if cfg is not None and isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    with torch.no_grad():                       # fall back to one tiny forward
        ids = torch.full((1, 1), dlm.pad_id, dtype=torch.long, device=dlm.device)
        return dlm.hidden(ids, torch.ones_like(ids)).shape[-1]
