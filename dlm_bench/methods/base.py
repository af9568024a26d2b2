"""`base`: the untrained reference point. Every comparison is against the model as loaded."""
from __future__ import annotations

from dataclasses import dataclass

from dlm_bench.methods import Method, register_method
from dlm_bench.methods.profile import Profile


@dataclass
class BaseConfig:
    """No fields: `base` runs no optimisation; evaluation settings belong to the evaluator."""


@register_method
class Base(Method):
    name = "base"
    Config = BaseConfig
    profile = Profile(family="reference point", estimator="-", reference="-")
    trains = False

    def loss(self, rollouts, policy, ref):
        raise RuntimeError("method 'base' does not train; the loop must not call its loss")
