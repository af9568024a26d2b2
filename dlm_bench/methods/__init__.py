"""Post-training methods behind one interface. One file per method; `@register_method` adds it.

The shared loop (`dlm_bench.training.loop`) does everything that is not method-specific: rollouts from the
sampler (in the method's `rollout_order`, G per prompt), rewards from the task, the optimizer, LoRA,
the frozen reference, rollout reuse, checkpoints and distribution. A method says what it needs
(flags below) and turns a `Rollouts` batch into a loss:

    method.prepare(rollouts, policy, ref)   # once per rollout batch, no grad: cache old/ref scores
    loss, stats = method.loss(rollouts, policy, ref)   # every inner update (mu times per batch)

What `prepare` caches is one small dataclass per method (a `MethodCache`, e.g. `ESPOCache`), set as
`rollouts.cache`; micro-batching slices it row by row through its fields (`slice_rows`).

Third-party packages add methods through the entry-point group ``dlm_bench.methods``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dlm_bench.config import build_config, validate
from dlm_bench.registry import Registry
from dlm_bench.likelihood import MaskDraw, ScoredBatch
from dlm_bench.tasks import train_scale


@dataclass(kw_only=True)
class MethodCache:
    """Base of a method's cache: what `prepare` computes once per rollout batch for `loss` (advantages,
    old and reference scores, mask draws), as one dataclass per method with a typed field for each.
    `Rollouts.rows` and `Method.select` slice it field by field (`slice_rows`), so a micro-batch gets
    its rows of every per-row field; a field that is not per row makes its method override `select`."""
    iter: int = 0          # inner updates taken on these rows: update j uses the j-th per-update draws

    def take(self, idx: torch.Tensor, n: int, **given):
        """Rows `idx` of every field (of n rows); the fields named in `given` take those values as they are."""
        return dataclasses.replace(self, **{f.name: given[f.name] if f.name in given else
                                            slice_rows(getattr(self, f.name), idx, n)
                                            for f in dataclasses.fields(self)})


@dataclass
class Rollouts:
    """One rollout batch: N = prompts x G completions, grouped by prompt."""
    batch: ScoredBatch            # prompt ids/masks and completion windows, [N, ...]
    rewards: torch.Tensor         # [N] float
    groups: torch.Tensor          # [N] long: index of the prompt each completion answers
    step_map: torch.Tensor        # [N, G] decoding step of every completion token
    seed: int                     # seeds the method's mask draws (shared by policy, old, reference)
    # method-owned: its MethodCache once `prepare` ran (a plain dict still works, sliced key by key)
    cache: MethodCache | dict = field(default_factory=dict)

    def rows(self, idx: torch.Tensor, cache: MethodCache | dict | None = None) -> "Rollouts":
        """The rows `idx` (same window width G, same seed) with `cache` (default: sliced per row)."""
        c = slice_rows(self.cache, idx, self.rewards.numel()) if cache is None else cache
        dev = self.batch.completion.device
        return Rollouts(self.batch.index(idx.to(dev)), self.rewards[idx], self.groups[idx],
                        self.step_map[idx], self.seed, c)


def slice_rows(v, idx: torch.Tensor, n: int):
    """Rows `idx` of one per-row cache entry: tensors [N, ...], mask draws [K, N, G], lists, tuples and
    dicts of those, a `MethodCache` field by field; numbers, strings and None pass unchanged.
    Anything else (a per-sample or per-prompt tensor) is refused: its method must override `select`."""
    if isinstance(v, (int, float, str)) or v is None:
        return v
    if isinstance(v, MethodCache):
        return v.take(idx, n)
    if isinstance(v, MaskDraw):
        i = idx.to(v.masks.device)
        return MaskDraw(v.masks[:, i], v.weights[:, idx.to(v.weights.device)], v.coupled)
    if isinstance(v, (list, tuple)):
        return type(v)(slice_rows(x, idx, n) for x in v)
    if isinstance(v, dict):
        return {k: slice_rows(x, idx, n) for k, x in v.items()}
    if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == n:
        return v[idx.to(v.device)]
    raise ValueError(f"cannot split cache entry of type {type(v).__name__} by rows")


class Method:
    """Base class. Subclasses set the class attributes and implement `loss` (and `prepare`)."""

    name: ClassVar[str]
    Config: ClassVar[type]                      # a dataclass of documented fields with paper defaults
    needs_reference: ClassVar[bool] = False     # the loop provides a frozen reference model
    rollout_order: ClassVar[str] = "diffusion"  # or "left_to_right"
    needs_trajectory: ClassVar[bool] = False    # uses Rollouts.step_map
    pad_steps: ClassVar[bool] = False           # rollouts decode each end-of-text pad at its own step
    fidelity: ClassVar[tuple] = ()              # Deviation rows: where the recipe and this code differ
    profile: ClassVar[Any] = None               # a methods.profile.Profile: family, estimator, reference, ...
    trains: ClassVar[bool] = True               # False for `base`

    def __init__(self, config=None, policy=None):
        self.config = config if config is not None else self.Config()
        validate(self.config, self.name)       # choices and ranges, also for a config built by hand
        self.extra_modules = torch.nn.ModuleDict()   # e.g. a learned log Z head (own learning rate)

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        """Cache scores of the rollout-time policy ("old") and of the reference. Called under no_grad."""

    def loss(self, rollouts: Rollouts, policy, ref) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def prepared(self, rollouts: Rollouts, policy, ref):
        """The `MethodCache` that `prepare` made for these rows (running `prepare` first if the loop did not)."""
        if not isinstance(rollouts.cache, MethodCache):
            self.prepare(rollouts, policy, ref)
        return rollouts.cache

    def next_update(self, rollouts: Rollouts, policy, ref) -> int:
        """Index j of this inner update over the mu = `optim.inner_updates` per-update draws that
        `prepare` made (running `prepare` first if the loop did not)."""
        c = self.prepared(rollouts, policy, ref)
        j = c.iter % max(1, self.config.optim.inner_updates)
        c.iter += 1
        return j

    def select(self, rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
        """The prepared rows `idx` of `rollouts` as their own batch, for a micro-batch backward: the
        cache (computed on the whole batch, so group statistics stay whole-batch) is sliced per row."""
        return rollouts.rows(idx)

    @property
    def updates_per_batch(self) -> int:
        """Optimizer updates made on one rollout batch (mu passes x minibatches): above 1, the policy
        moves away from the one that sampled, so ratios need the rollout-time ("old") scores."""
        o = getattr(self.config, "optim", None)
        return 1 if o is None else o.inner_updates * o.minibatches

    def after_update(self, opt_step: int, policy, ref) -> None:
        """Called after every optimizer update (`opt_step` counts them from 1), e.g. to move the
        reference; a method that changes `ref` sets `self.reference_moved` so checkpoints keep it."""

    reference_moved: bool = False

    def param_groups(self) -> list[dict]:
        """Optimizer groups for the method's own modules (the loop adds the policy's)."""
        return []

    def loss_count(self, rollouts: Rollouts) -> float:
        """How many terms `loss` averages over for these rows (default: one per row). The loop weights
        each backward chunk by count_chunk / count_batch, so a method whose loss is a token mean or has
        its own normaliser says so here and micro-batching leaves its update unchanged."""
        return float(rollouts.rewards.numel())

    @classmethod
    def recipe(cls, task: str) -> dict:
        """The settings a method's published recipe uses on `task`, over its defaults (none here; a
        method with per-task recipes overrides this)."""
        return {}

    @classmethod
    def config_for(cls, task: str, overrides: dict | None = None):
        """The config for training on `task`: the defaults, the task's own scale (`Task.train_scale`:
        on the CPU testbed its lengths and a learning rate for this method's updates per rollout batch),
        the method's `recipe` for the task, then `overrides`; validated before any model is loaded."""
        settings = {**cls.recipe(task), **(overrides or {})}
        scale = train_scale(task, 1) if cls.trains else {}
        if not scale:
            return make_config(cls, settings)
        updates = batch_updates(make_config(cls, {**scale, **settings}))
        return make_config(cls, {**train_scale(task, updates), **settings})

    @classmethod
    def target(cls, config) -> str | None:
        """One line on the distribution the objective drives the policy to under `config`, where the
        method has a closed form (printed by `dlm-bench methods -v`); None otherwise."""
        return None

    @classmethod
    def has_task_recipes(cls) -> bool:
        return cls.recipe.__func__ is not Method.recipe.__func__


_METHODS = Registry("method", Method, "dlm_bench.methods", ("base", "trafl", "espo", "justgrpo", "tracerl", "tabom",
                                                          "diffu_grpo", "wd1", "spg", "coupled_grpo", "vrpo",
                                                          "bgpo", "d2", "ebpo"),
                    "dlm_bench.methods")
register_method = _METHODS.register


def method_names() -> list[str]:
    return _METHODS.names()


def get_method(name: str) -> type[Method]:
    return _METHODS.get(name)


def batch_updates(config) -> int:
    """Optimizer updates one rollout batch makes: `inner_updates` passes of `minibatches` updates, a
    minibatch holding at least one prompt group (the loop's cap at its default micro_prompts = 1)."""
    o = config.optim
    return o.inner_updates * min(o.minibatches, config.rollout.batch_prompts)


def make_config(method: type[Method], overrides: dict | None) -> Any:
    """The method's config with `overrides` (flat aliases, BLOCK.FIELD or nested) applied and
    validated (`dlm_bench.config.build_config`); anything wrong is a one-line UserError."""
    return build_config(method.Config, overrides, owner=method.name)
