"""TraceRL (arXiv 2509.06949, "Revolutionizing Reinforcement Learning Framework for Diffusion Large
Language Models"; code github.com/Gen-Verse/dLLM-RL: `train/rl_llada.py`, `configs/rl_llada.yaml`,
`reward/rl_reward.py`, `train/train_trado_{policy,value}.py`).

The policy is trained on its own decoding trace. The rollout records each token's decoding step
(`Rollouts.step_map`). With shrinkage s, every s consecutive *distinct* steps of a row merge into one
trace step (the code's `collapse_k_unique`: dense rank of the step, then // s). For every trace step k
of a trajectory one training sample is built: the completion with every token of trace step >= k
masked again (earlier tokens and the prompt stay visible), loss positions = the tokens of step k.

    loss = mean over (trajectory, step) samples of
           mean_{j in T_k} [ -min(rho_j A, clip(rho_j, 1 - eps, 1 + eps) A) + beta * k3_j ]
    rho_j = pi_theta(y_j | s_k) / pi_old(y_j | s_k),  k3 = exp(l_a - l) - (l_a - l) - 1

with A the group z-score of correctness (population std, 0 for a constant group; `rl_reward.py`),
groups whose accuracy lies outside [0.2, 0.8] dropped (the code's dynamic filter), and the KL anchor
l_a the old (rollout) policy as in the code, or the frozen reference (`kl_anchor="reference"`).

Optional diffusion value model (`value_model=True`; TraDo's `rl_trado_with_value.yaml`): token-level
values V from a small MLP head on hidden states of the trace-step inputs (the policy's states with no
gradient into it, the frozen reference's, or a trainable copy of the policy), the step value V_k = the
mean over the step's tokens; GAE over trace steps with the correctness reward at the last step
(`gae`), the step advantage replacing the group z-score; the head regresses to the returns with
TraDo's clipped loss 0.5 max((V - R)^2, (V_clip - R)^2), at its own learning rate (`value_lr`).

As in the code: several optimizer steps per rollout batch against the fixed rollout policy
(`optim.minibatches`, one prompt group each: the code steps every 128 x 2 (trajectory, step) samples,
~64 times per batch), so the clip and the KL to the old policy act from the second step on; the
end-of-text fill after a completion's first end-of-text is not trained (`exclude_pads`; the first one
is, as the decision to stop); a completion with no end-of-text counts as incorrect
(`truncated_reward`); the KL is summed over each step's tokens (`kl_sum`); constant LR 1e-6 (the
config's cosine with min_lr_scale 1.0); a fresh AdamW per RL step (`optim.reset_each_step`: the
reference launches one accelerate job per step, so the Adam moments start at zero every step).
Not reproduced: `post_num` (a number of trailing pads that stay trainable).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob
from dlm_bench.likelihood import (ScoredBatch, answer_blocks, collapse_steps, scoring_input,  # noqa: F401
                                  trace_logprobs, trace_samples)
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods import Method, Rollouts, register_method
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.trajectory import SampleCache, select_samples
from dlm_bench.methods.heads import ScalarHead, hidden_size
from dlm_bench.methods.losses import clipped_pg, group_mean, k3


@dataclass
class TraceRLConfig(MethodConfig):
    """Defaults: Gen-Verse/dLLM-RL `configs/rl_llada.yaml` (value-model fields: `rl_trado_with_value.yaml`)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(1e-6, "rl_llada.yaml optimizer learning_rate 1e-6"),
        lr_schedule=("constant", "rl_llada.yaml lr_scheduler cosine with min_lr_scale 1.0: constant 1e-6"),
        warmup_ratio=(0.0, "not found as a ratio; the RL configs use no warm-up steps"),
        weight_decay=(0.0, "not found; dLLM-RL optimizer config (AdamW, decay not recorded here)"),
        adam_betas=((0.9, 0.999), "not found; AdamW defaults"),
        max_grad_norm=(1.0, "not found; dLLM-RL training.max_grad_norm, assumed 1.0"),
        train_steps=(50, "rl_llada.yaml total RL steps 50"),
        inner_updates=(1, "rl_llada.py: one pass over each rollout batch's samples"),
        minibatches=(32, "rl_llada.py: many optimizer steps per rollout batch (grad accum 128 x batch 2 "
                         "samples, ~64 steps); here one per prompt group (32)"),
        reset_each_step=(True, "rl_llada.py: each RL step is a new train job with a new AdamW"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(8, "rl_llada.yaml num_response_per_task 8"),
        batch_prompts=(32, "rl_llada.yaml num_task_per_step 32"),
        temperature=(0.8, "rl_llada.yaml rollout temperature 0.8"),
        gen_length=(512, "rl_llada.yaml max_gen_length 512"),
        steps=(512, "rl_llada.yaml steps 512 (one token per step, static schedule)"),
        block_length=(32, "rl_llada.yaml block_size 32"))
    lora: LoraConfig = block(LoraConfig, r=(0, "full fine-tuning, as dLLM-RL (no LoRA in its RL configs)"))
    shrink: int = knob(8, "s: consecutive decoding steps merged into one trace step",
                       source="rl_llada.yaml training.shrink 8", low=1)
    epsilon: float = knob(0.2, "PPO clip", source="rl_llada.yaml eps 0.2", low=0.0)
    beta: float = knob(0.01, "k3 KL coefficient", source="rl_llada.yaml beta 0.01", low=0.0)
    kl_anchor: str = knob("old", "'old': rollout policy, as rl_llada.py | 'reference': frozen reference",
                          choices=("old", "reference"), source="rl_llada.py")
    group_filter: tuple[float, float] | None = knob(
        (0.2, 0.8), "drop groups whose accuracy lies outside [low, high] (None: keep all)",
        source="rl_reward.py")
    exclude_pads: bool = knob(True, "train only up to each completion's first end-of-text (the fill after "
                              "it is not an action)", source="rl_llada.py loss mask drops <|endoftext|> fill")
    truncated_reward: float | None = knob(0.0, "reward of a completion with no end-of-text in its window "
                                          "(None: the task's reward)", source="rl_reward.py: truncated = incorrect")
    kl_sum: bool = knob(True, "KL summed over each trace step's tokens (False: divided as the policy term)",
                        source="rl_llada.py sums the k3 term per step")
    step_norm: str = knob("tokens", "a sample's policy term: the mean over its tokens ('tokens') or their sum / "
                          "the answer window ('window', TraDo's)", choices=("tokens", "window"),
                          source="rl_llada.py divides by the step's tokens (rl_trado.py: by L1, the window)")
    value_model: bool = knob(False, "train a value head (TraDo 'with_value' configs)", source="off in rl_llada.yaml")
    value_backbone: str = knob("detached", "'detached' policy states | 'reference' states | 'copy': trainable copy",
                               choices=("detached", "reference", "copy"), source="reconstructed")
    value_lr: float = knob(5e-6, "value learning rate", source="rl_trado_with_value.yaml 5e-6", low=0.0, low_open=True)
    value_hidden: int = knob(256, "value head width", source="not in the code: its value model is a full network",
                             low=1)
    gamma: float = knob(1.0, "discount over trace steps", source="rl_trado_with_value.yaml gam 1.0", low=0.0, high=1.0)
    lam: float = knob(1.0, "GAE lambda", source="rl_trado_with_value.yaml lam 1.0", low=0.0, high=1.0)
    value_clip: float = knob(0.2, "clip range of the value loss", source="train_trado_value.py (clip range = eps)",
                             low=0.0)
    value_coef: float = knob(1.0, "weight of the value loss in the summed loss", source="own param group", low=0.0)


# ----------------------------------------------------------------------------- pure functions

def answer_positions(batch: ScoredBatch, stops: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] has an end-of-text token, [N, G] positions up to and including the first one): what a
    completion decided; the end-of-text fill after it is padding."""
    comp = batch.completion
    is_stop = torch.zeros_like(comp, dtype=torch.bool)
    for s in stops:
        is_stop |= comp == s
    ended = is_stop.any(-1)
    G = comp.shape[1]
    first = torch.where(ended, is_stop.float().argmax(-1), torch.full_like(ended, G - 1, dtype=torch.long))
    pos = torch.arange(G, device=comp.device)[None, :]
    return ended, pos <= first[:, None]


def population_zscore(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(r - group mean) / population std, 0 where the group's std is 0 (dLLM-RL `rl_reward.py`)."""
    r = rewards.float()
    g = groups.to(r.device)
    centred = r - group_mean(r, g)
    std = group_mean(centred ** 2, g).sqrt()
    return torch.where(std > 0, centred / std.clamp(min=1e-12), torch.zeros_like(r))


def gae(rewards_per_step: torch.Tensor, values_per_step: torch.Tensor, gamma: float, lam: float,
        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over trace steps: ([N, K] advantages, [N, K] returns).

    delta_k = r_k + gamma V_{k+1} - V_k (V = 0 after a row's last valid step),
    A_k = delta_k + gamma lam A_{k+1}, R_k = A_k + V_k. `mask` [N, K] marks each row's valid steps (a
    prefix); masked entries come back 0."""
    r, v = rewards_per_step.float(), values_per_step.float()
    m = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool()
    r, v = r * m, v * m
    adv = torch.zeros_like(r)
    nxt_v = torch.zeros_like(r[:, 0])
    nxt_a = torch.zeros_like(r[:, 0])
    for k in range(r.shape[1] - 1, -1, -1):
        delta = r[:, k] + gamma * nxt_v - v[:, k]
        a = torch.where(m[:, k], delta + gamma * lam * nxt_a, torch.zeros_like(delta))
        adv[:, k] = a
        nxt_v = torch.where(m[:, k], v[:, k], torch.zeros_like(nxt_v))
        nxt_a = a
    return adv, (adv + v) * m


def tracerl_loss(logp: torch.Tensor, old_logp: torch.Tensor, anchor_logp: torch.Tensor | None,
                 adv: torch.Tensor, targets: torch.Tensor, beta: float, eps: float,
                 weight: torch.Tensor | None = None, kl_sum: bool = False,
                 window: int | None = None) -> tuple[torch.Tensor, dict]:
    """Per-token clipped PPO on each sample's loss positions, averaged per sample (or summed and divided
    by `window`, TraDo's L1), plus beta k3 summed (`kl_sum`, the code) or divided likewise; then the
    weighted mean over samples. logp/old/anchor: [R, G] log-probs at the positions; adv: [R], or [R, G]
    per token (GAE); targets: [R, G] bool; weight: [R] sample weights (0 drops a sample), normalised to sum 1."""
    R = logp.shape[0]
    w = torch.ones(R, dtype=logp.dtype, device=logp.device) if weight is None else weight.to(logp)
    w = w / w.sum().clamp(min=1e-12)
    t = targets.bool()
    n = t.sum(-1).clamp(min=1).to(logp.dtype) if window is None else torch.full((R,), float(window)).to(logp)
    _, stats = clipped_pg(logp, old_logp, adv, eps, eps, valid=t)
    a = (adv if adv.dim() == 2 else adv[:, None]).to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    per = -torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a) * t
    pg = ((per.sum(-1) / n) * w).sum()
    loss = pg
    stats["pg_loss"] = float(pg.detach())
    if anchor_logp is not None and beta != 0.0:
        per_kl = (k3(logp, anchor_logp) * t).sum(-1)
        kl = ((per_kl if kl_sum else per_kl / n) * w).sum()
        loss = loss + beta * kl
        stats["kl_k3"] = float(kl.detach())
    stats["loss"] = float(loss.detach())
    return loss, stats


def clipped_value_loss(v: torch.Tensor, v_old: torch.Tensor, returns: torch.Tensor, clip: float,
                       valid: torch.Tensor) -> torch.Tensor:
    """0.5 max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, -c, c); mean over valid."""
    v_clip = v_old + (v - v_old).clamp(-clip, clip)
    per = 0.5 * torch.maximum((v - returns) ** 2, (v_clip - returns) ** 2)
    valid = valid.bool()
    return (per * valid).sum() / valid.sum().clamp(min=1)


# ----------------------------------------------------------------------------- value head


def _completion_hidden(dlm, batch, rows, masks, chunk: int = 64) -> torch.Tensor:
    """Hidden states [R, G, H] at the completion positions of each sample's masked input (its scored copy
    on a block-diffusion model: `likelihood.scoring_input`)."""
    sub = batch.index(rows.to(batch.completion.device))
    inp = scoring_input(dlm, sub.prompt_ids, sub.prompt_mask, sub.completion, masks)
    G = masks.shape[1]
    parts = (inp.rows(slice(s, s + chunk)) for s in range(0, len(inp.ids), chunk))
    return torch.cat([dlm.hidden(p.ids, p.mask, **p.model_kw)[:, p.start:p.start + G] for p in parts])


def decoding_order(trace: torch.Tensor, blocks: torch.Tensor | None) -> torch.Tensor:
    """Each token's step [N, G] in its row's decoding order (the GAE steps): its trace step, or on a
    block-diffusion model the rank of (block, step within the block); -1 where `trace` is."""
    if blocks is None:
        return trace
    key = blocks.to(trace) * (int(trace.max()) + 2) + trace
    return collapse_steps(key, trace >= 0)


@dataclass(kw_only=True)
class TraceRLCache(SampleCache):
    """One entry per (trajectory, trace step) sample, R in all (not per row: `TraceRL.select` keeps a
    row's samples); `rows` [R] is the rollout row of each sample."""
    k: torch.Tensor                        # [R] its trace step (block-diffusion: the step within each block)
    masks: torch.Tensor                    # [R, G] positions masked in its input
    targets: torch.Tensor                  # [R, G] its loss positions (the tokens of step k)
    weight: torch.Tensor                   # [R] 1, or 0 where the group filter dropped the row
    adv: torch.Tensor                      # [R] group z-score, or [R, G] per token (GAE with a value model)
    old: torch.Tensor | None = None        # [R, G] rollout-time log-probs (several updates per batch)
    anchor: torch.Tensor | None = None     # [R, G] reference log-probs (kl_anchor "reference")
    returns: torch.Tensor | None = None    # [R, G] value targets at the sample's tokens (value_model)
    v_old: torch.Tensor | None = None      # [R, G] rollout-time token values (value_model)
    value_feats: torch.Tensor | None = None   # [R, G, H] fixed value features, computed at first use


# ----------------------------------------------------------------------------- the method

@register_method
class TraceRL(Method):
    name = "tracerl"
    Config = TraceRLConfig
    profile = Profile(family="trajectory RL", reference="none (KL to the rollout policy)",
                      estimator="trace-step log-probabilities: 8 decoding steps merged per trace step",
                      forwards=64, forwards_note="512 steps / shrink 8 = 64 trace-step forwards")
    fidelity = (
        Deviation("several optimizer steps per rollout batch against the fixed rollout policy", "optim.minibatches "
                  "32 against cached rollout-time scores: the clip and the KL act from the second step", "fixed",
                  "tests/test_tracerl_tabom.py::test_ppo_clip_and_kl_act_after_the_first_update"),
        Deviation("steps every 128 x 2 (trajectory, step) samples (~64 per batch)", "one step per prompt group, "
                  "capped at the micro-batches of a batch", "kept",
                  "tests/test_tracerl_tabom.py::test_ppo_clip_and_kl_act_after_the_first_update"),
        Deviation("end-of-text pads after the first are not trained (post_num pads stay trainable); a completion "
                  "with no end-of-text is incorrect", "exclude_pads (post_num 0), truncated_reward 0", "fixed",
                  "tests/test_tracerl_tabom.py::test_pads_after_the_first_end_of_text_are_not_trained_and_truncation_fails"),
        Deviation("k3 KL summed over each step's tokens", "kl_sum True (False: the mean, ~L x weaker)", "fixed",
                  "tests/test_recipes.py::test_tracerl_kl_is_summed_over_each_steps_tokens"),
        Deviation("cosine schedule with min_lr_scale 1.0", "constant 1e-6", "fixed",
                  "tests/test_paper_defaults.py::test_tracerl_defaults_match_its_llada_config"),
        Deviation("a new training job, so a new AdamW, per RL step", "optim.reset_each_step True", "fixed",
                  "tests/test_recipes.py::test_fresh_adamw_per_rl_step"),
    )
    needs_reference = False            # class default ("old" anchor); instances: per `kl_anchor`
    needs_trajectory = True

    def __init__(self, config=None, policy=None):
        super().__init__(config, policy)
        cfg = self.config
        self.needs_reference = (cfg.kl_anchor == "reference" and cfg.beta != 0.0) or \
            (cfg.value_model and cfg.value_backbone == "reference")
        if policy is not None:
            self._build_value(policy)

    def _build_value(self, dlm) -> None:
        cfg = self.config
        if not cfg.value_model or "value_head" in self.extra_modules:
            return
        self.extra_modules["value_head"] = ScalarHead(hidden_size(dlm), cfg.value_hidden).to(dlm.device)
        if cfg.value_backbone == "copy":
            self.extra_modules["value_backbone"] = copy.deepcopy(dlm.model)
            self._value_dlm = dataclasses.replace(dlm, model=self.extra_modules["value_backbone"])

    def param_groups(self) -> list[dict]:
        params = [p for p in self.extra_modules.parameters() if p.requires_grad]
        return [{"params": params, "lr": self.config.value_lr, "weight_decay": 0.0}] if params else []

    def loss_count(self, rollouts: Rollouts) -> float:
        """Terms the loss averages over: the kept (trajectory, step) samples."""
        c = rollouts.cache
        return float(c.weight.sum()) if isinstance(c, TraceRLCache) else float(rollouts.rewards.numel())

    def select(self, rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
        """Rows `idx` with their (trajectory, step) samples: every tensor in the cache is per sample."""
        return select_samples(rollouts, idx)

    # -- prepare: samples, advantages, old / anchor log-probs, values (no grad)
    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        self._build_value(policy)
        if self.needs_reference and ref is None:
            raise ValueError("tracerl: kl_anchor='reference' / value_backbone='reference' need a reference model")
        ended, content = answer_positions(batch, policy.stops())
        trained = batch.valid & content if cfg.exclude_pads else batch.valid
        blocks = answer_blocks(policy, batch)
        blocks = None if blocks is None else blocks.cpu()
        rows, k, masks, targets = trace_samples(rollouts.step_map.cpu(), trained.cpu(), cfg.shrink, blocks)
        dev = batch.completion.device
        rows = rows.to(dev)
        r = rollouts.rewards.float().to(dev)
        if cfg.truncated_reward is not None:       # no end-of-text in the window: counted as a failure
            r = torch.where(ended.to(dev), r, torch.full_like(r, float(cfg.truncated_reward)))
        groups = rollouts.groups.to(dev)
        keep = torch.ones_like(r, dtype=torch.bool)
        if cfg.group_filter is not None:
            acc = group_mean((r > 0).float(), groups)
            keep = (acc >= cfg.group_filter[0]) & (acc <= cfg.group_filter[1])
        c = rollouts.cache = TraceRLCache(rows=rows, k=k.to(dev), masks=masks.to(dev), targets=targets.to(dev),
                                          weight=keep[rows].float(), adv=population_zscore(r, groups)[rows])
        with torch.no_grad():
            if self.updates_per_batch > 1:
                c.old = self._logp(policy, rollouts).detach()
            if cfg.kl_anchor == "reference" and cfg.beta != 0.0:
                c.anchor = self._logp(ref, rollouts).detach()
            if cfg.value_model:
                trace = collapse_steps(rollouts.step_map.cpu(), trained.cpu(), cfg.shrink, blocks)
                self._prepare_values(rollouts, policy, ref, r, decoding_order(trace, blocks).to(dev))

    def _logp(self, dlm, rollouts: Rollouts) -> torch.Tensor:
        c = rollouts.cache
        return trace_logprobs(dlm, rollouts.batch, c.rows, c.masks, c.targets)

    def _token_values(self, rollouts: Rollouts, policy, ref, grad: bool) -> torch.Tensor:
        """Token values [R, G] of every sample's input (each token valued at its own trace step)."""
        cfg, c = self.config, rollouts.cache
        if cfg.value_backbone == "copy":
            dlm = self._value_dlm
        else:
            dlm = ref if cfg.value_backbone == "reference" else policy
        if c.value_feats is not None:
            feats = c.value_feats
        else:
            with torch.set_grad_enabled(grad and cfg.value_backbone == "copy"):
                feats = _completion_hidden(dlm, rollouts.batch, c.rows, c.masks)
            if cfg.value_backbone != "copy":
                feats = feats.detach()
                c.value_feats = feats           # fixed features: compute once per rollout batch
        return self.extra_modules["value_head"](feats)

    def _prepare_values(self, rollouts: Rollouts, policy, ref, r: torch.Tensor, order: torch.Tensor) -> None:
        """GAE over each row's steps in decoding order (`order` [N, G], -1 untrained): a step's value is
        the mean value of its tokens, each valued in the input of the sample that trains it."""
        cfg, c = self.config, rollouts.cache
        N, G = order.shape
        S = int(order.max()) + 1 if order.numel() and int(order.max()) >= 0 else 1
        tok_v = self._token_values(rollouts, policy, ref, grad=False).detach()
        row_v = torch.zeros(N, G, device=r.device)
        row_v[c.rows[:, None].expand_as(c.targets)[c.targets], c.targets.nonzero()[:, 1]] = tok_v[c.targets].float()
        ok = order >= 0
        slot = (torch.arange(N, device=r.device)[:, None] * S + order.clamp(min=0))[ok]
        total = torch.zeros(N * S, device=r.device).index_add_(0, slot, row_v[ok])
        count = torch.zeros(N * S, device=r.device).index_add_(0, slot, torch.ones_like(row_v[ok]))
        v_step, mask = (total / count.clamp(min=1)).view(N, S), (count > 0).view(N, S)
        last = order.max(-1).values.clamp(min=0)
        rew = torch.zeros(N, S, device=r.device)
        rew[torch.arange(N, device=r.device), last] = r          # correctness reward at the last step
        adv, ret = gae(rew, v_step, cfg.gamma, cfg.lam, mask)
        tok_adv = adv.gather(1, order.clamp(min=0)) * ok
        tok_ret = ret.gather(1, order.clamp(min=0)) * ok
        c.adv, c.returns, c.v_old = tok_adv[c.rows] * c.targets, tok_ret[c.rows] * c.targets, tok_v

    # -- loss
    def loss(self, rollouts: Rollouts, policy, ref):
        cfg, c = self.config, self.prepared(rollouts, policy, ref)
        weight = c.weight
        if float(weight.sum()) == 0.0:        # every group filtered: a zero loss that still back-propagates
            zero = torch.zeros((), device=weight.device, requires_grad=True)
            return zero, {"loss": 0.0, "kept_samples": 0.0}
        logp = self._logp(policy, rollouts)
        old = c.old if c.old is not None else logp.detach()
        anchor = (c.anchor if c.anchor is not None else old) if cfg.beta != 0.0 else None
        adv = c.adv.to(logp.device, logp.dtype)
        window = rollouts.batch.completion.shape[1] if cfg.step_norm == "window" else None
        loss, stats = tracerl_loss(logp, old, anchor, adv, c.targets, cfg.beta, cfg.epsilon, weight, cfg.kl_sum,
                                   window)
        if cfg.value_model:
            tok_v = self._token_values(rollouts, policy, ref, grad=True)
            t = c.targets & (weight[:, None] > 0)
            vl = clipped_value_loss(tok_v, c.v_old, c.returns.to(tok_v.dtype), cfg.value_clip, t)
            loss = loss + cfg.value_coef * vl
            stats.update(value_loss=float(vl.detach()), value_mean=float(c.v_old[t].mean()) if t.any() else 0.0)
        stats.update(loss=float(loss.detach()), kept_samples=float(weight.sum()),
                     samples_per_row=float(len(c.rows) / max(1, rollouts.rewards.numel())),
                     reward_mean=float(rollouts.rewards.float().mean()))
        return loss, stats
