"""The frozen reference of a LoRA run: the policy itself with its adapter switched off."""
from __future__ import annotations


class AdapterDisabled:
    """The frozen reference under LoRA: the policy with its adapter switched off (peft disable_adapter)."""

    def __init__(self, dlm):
        self._dlm = dlm

    def __getattr__(self, name):
        return getattr(self._dlm, name)

    def logits(self, *a, **k):
        with self._dlm.model.disable_adapter():
            return self._dlm.logits(*a, **k)

    def hidden(self, *a, **k):
        with self._dlm.model.disable_adapter():
            return self._dlm.hidden(*a, **k)
