"""TABOM (arXiv 2605.11854, "Self-Distilled Trajectory-Aware Boltzmann Modeling"; code
github.com/tonyckc/TABOM, `dream_post/train_tabom.py` with `--mask_schedule td --entropy_rank_reg`,
recipes in `dream_post/run_tabom_examples.sh`). A supervised method: no reward in the objective.

Data: the base model's own confidence-guided decodes of the training prompts, with their decoding
order (self-distilled trajectories), sampled once before training (`rollout.source` "offline",
`dlm_bench.training.trajectories`: stored in OUT/trajectories/, resumable) and reused for 5 epochs, every end-of-
text pad decoded at its own step as in the reference's decodes (`pad_steps`); "online" samples from the
current policy each step instead. `filter_correct` keeps only rows with reward > 0; `group_size` 1 =
one trajectory per prompt. Recipes (`run_tabom_examples.sh`; `TABOM.recipe`): margin 0.2 / 0.3
for LLaDA on math / code, 0.1 for Dream, lambda 2 and lr 1e-4 for Dream on code.

Loss on one trajectory (the code's "td" time-delay schedule):
- draw a cut step c ~ U{0 .. max(s_max - M, 0)} (s_max = the row's last decoding step);
- input: every token decoded at step >= c masked, earlier tokens visible;
- CE on the masked tokens decoded in [c, c + M) (`td_supervision_window` M = 32; M = 0: all masked);
  `ce_weighting` "token_mean" is the code's mean over all supervised tokens of the batch, "llada" the
  LLaDA SFT weight: each row's CE sum / (masked fraction x L) = sum / #masked, averaged over rows;
- plus lambda x the pairwise entropy ranking hinge (`entropy_ranking_loss`): among the supervised
  positions decoded in [c, c + W), the earlier-decoded token should have lower predictive entropy by
  margin gamma: mean over pairs of max(0, gamma + H_earlier - H_later), averaged over rows.

Deviations: rows whose trajectory is shorter than M get cut 0 (the code skips their CE); pairs decoded
at the same step are not ranked (the code orders them arbitrarily by argsort).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob, mask_seed
from dlm_bench.likelihood import draw_cuts, masked_token_logprobs, td_masks  # noqa: F401  (re-exported)
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.profile import Profile


@dataclass
class TABOMConfig(MethodConfig):
    """Defaults: the paper's setup (LoRA r16, batch 32, lr 2e-5 cosine, 50 warm-up steps, W 32) and the
    code (`train_tabom.py` argparse, `run_tabom_examples.sh`); the source of each is given."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(2e-5, "paper; train_tabom.py --learning_rate 2e-5 (ling_coder recipe: 1e-4)"),
        lr_schedule=("cosine", "paper; train_tabom.py get_cosine_schedule_with_warmup"),
        warmup_ratio=(0.0, "unused: warmup_steps is set"),
        warmup_steps=(50, "paper; train_tabom.py --warmup_steps 50"),
        weight_decay=(0.01, "train_tabom.py --weight_decay 0.01"),
        adam_betas=((0.9, 0.999), "train_tabom.py torch AdamW defaults"),
        max_grad_norm=(1.0, "train_tabom.py --max_grad_norm 1.0"),
        train_steps=(None, "set by epochs"),
        epochs=(5, "paper; run_tabom_examples.sh EPOCHS_DEF=5 (train_tabom.py default 3)"),
        inner_updates=(1, "supervised: one update per batch"),
        minibatches=(1, "supervised: one update per batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(1, "one self-distilled trajectory per query"),
        batch_prompts=(32, "paper: batch 32 (8 GPUs x 4)"),
        temperature=(1.0, "train_tabom.py --temperature 1.0 ('otherwise very short responses')"),
        gen_length=(256, "train_tabom.py --max_new_tokens 256"),
        steps=(128, "train_tabom.py --gen_steps 128"),
        block_length=(32, "not found; LLaDA's usual block 32"),
        source=("offline", "paper: self-distilled trajectories of the base model, decoded once"))
    lora: LoraConfig = block(LoraConfig, r=(16, "paper and train_tabom.py --lora_rank 16"),
                             alpha=(16, "train_tabom.py --lora_alpha 16"), dropout=(0.0, "not found; peft default 0.0"),
                             targets=("q,v", "train_tabom.py --lora_target_modules q_proj v_proj"))
    filter_correct: bool = knob(False, "keep only trajectories with reward > 0", source="the paper keeps all")
    supervision_window: int = knob(32, "M: tokens after the cut that are supervised (0: CE on all masked)",
                                   source="train_tabom.py --td_supervision_window 32", low=0)
    ce_weighting: str = knob("token_mean", "'token_mean' (train_tabom.py loss_vec.mean()) | 'llada' (1/t weight)",
                             choices=("token_mean", "llada"), source="train_tabom.py")
    rank_weight: float = knob(1.0, "lambda: weight of the entropy-ranking loss",
                              source="paper {1, 2}; prm12k recipe 1 (ling_coder 2)", low=0.0)
    rank_window: int = knob(32, "W: step distance within which tokens are ranked",
                            source="paper/code --entropy_rank_window 32", low=1)
    rank_margin: float = knob(0.2, "gamma: hinge margin", low=0.0,
                              source="run_tabom_examples.sh llada_prm12k ENT_MARGIN=0.2 (code tasks: 0.3)")


def entropy_ranking_loss(entropies: torch.Tensor, step_map: torch.Tensor, window: int, margin: float,
                         valid: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Pairwise hinge on predictive entropies [B, G]: for valid pairs (i, j) of a row with
    step_i < step_j and step_j - step_i < window, loss max(0, margin + H_i - H_j) (earlier-decoded
    tokens should be more certain). Mean over each row's pairs, then over rows that have a pair.
    Returns (loss, number of rows with a pair); the loss is 0 (with the graph) when there is none."""
    s = step_map.to(entropies.device)
    v = valid.bool().to(entropies.device) & (s >= 0)
    ds = s[:, None, :] - s[:, :, None]                       # [B, i, j] = step_j - step_i
    pair = v[:, :, None] & v[:, None, :] & (ds > 0) & (ds < window)
    hinge = F.relu(margin + entropies[:, :, None] - entropies[:, None, :])
    n = pair.sum((1, 2))
    per_row = (hinge * pair).sum((1, 2)) / n.clamp(min=1).to(hinge.dtype)
    has = n > 0
    rows = int(has.sum())
    if rows == 0:
        return (entropies * 0).sum(), 0
    return per_row[has].mean(), rows


@dataclass(kw_only=True)
class TABOMCache(MethodCache):
    keep: torch.Tensor                     # [N] bool: rows trained on (filter_correct)
    masked: list[torch.Tensor]             # per inner update [N, G]: input masks (decoded at step >= cut)
    sup: list[torch.Tensor]                # per update [N, G]: supervised positions
    cut: list[torch.Tensor]                # per update [N]: the cut step


# run_tabom_examples.sh's LLaDA recipes by task kind (the defaults are llada_prm12k's, for math); the
# Dream recipes (margin 0.1; ling_coder: lr 1e-4, lambda 2) are reachable with --set
RECIPES = {"code": {"rank_margin": 0.3}}        # llada_ling_coder ENT_MARGIN=0.3


@register_method
class TABOM(Method):
    name = "tabom"
    Config = TABOMConfig
    profile = Profile(family="SFT-style", reference="none",
                      estimator="masked cross-entropy at a time-delay cut of its own trajectory",
                      forwards=1, forwards_note="one cut per completion")
    needs_trajectory = True
    pad_steps = True
    fidelity = (
        Deviation("trains on trajectories the base model decoded once", "rollout.source offline "
                  "(dlm_bench.training.trajectories; resumable; 'online' kept as an option)", "option",
                  "tests/test_recipes.py::test_offline_trajectories_come_from_the_base_model_once"),
        Deviation("5 epochs over the data", "optim.epochs 5 when train_steps is unset", "fixed",
                  "tests/test_recipes.py::test_epochs_set_the_number_of_steps"),
        Deviation("LoRA on q_proj, v_proj; 50 warm-up steps; margin 0.3 in the LLaDA code recipe",
                  "lora.targets q,v; optim.warmup_steps 50; rank_margin 0.3 on code tasks (0.2 otherwise)",
                  "fixed", "tests/test_recipes.py::test_tabom_recipe_defaults_and_code_margin"),
        Deviation("each end-of-text pad decoded at its own step", "pad_steps: rollouts run with stop_at_eos off",
                  "fixed", "tests/test_recipes.py::test_offline_trajectories_come_from_the_base_model_once"),
        Deviation("rows shorter than the window M skip the CE", "such rows get cut 0", "kept",
                  "tests/test_tracerl_tabom.py::test_td_cut_masks_by_hand"),
        Deviation("pairs decoded at the same step ranked in argsort order", "not ranked", "kept",
                  "tests/test_tracerl_tabom.py::test_entropy_ranking_loss_by_hand"),
    )

    @classmethod
    def recipe(cls, task: str) -> dict:
        from dlm_bench.tasks import answer_kind
        return RECIPES.get(answer_kind(task) or "", {})

    def loss_count(self, rollouts: Rollouts) -> float:
        c = rollouts.cache
        if not isinstance(c, TABOMCache):
            return float(rollouts.rewards.numel())
        if self.config.ce_weighting == "token_mean":
            return float((c.sup[0] & c.keep[:, None]).sum())
        return float(c.keep.sum())

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        dev = batch.completion.device
        steps, valid = rollouts.step_map.to(dev), batch.valid
        keep = (rollouts.rewards.to(dev) > 0) if cfg.filter_correct else torch.ones_like(valid[:, 0])
        c = rollouts.cache = TABOMCache(keep=keep, masked=[], sup=[], cut=[])
        for j in range(max(1, cfg.optim.inner_updates)):   # one cut per row and inner update, from the seed
            gen = torch.Generator().manual_seed(mask_seed(rollouts.seed, j))
            cut = draw_cuts(steps, valid, cfg.supervision_window, gen)
            m, s = td_masks(steps, valid, cut, cfg.supervision_window)
            c.masked.append(m)
            c.sup.append(s)
            c.cut.append(cut)

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg, batch = self.config, rollouts.batch
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        keep = c.keep
        if not bool(keep.any()):
            zero = torch.zeros((), device=batch.completion.device, requires_grad=True)
            return zero, {"loss": 0.0, "kept_rows": 0.0}
        rows = keep.nonzero(as_tuple=True)[0]
        masked, sup, cut = c.masked[j][rows], c.sup[j][rows], c.cut[j][rows]
        sub = batch.index(rows)
        steps = rollouts.step_map.to(sub.completion.device)[rows]
        # One forward over the whole chunk (chunk = rows); log-probs (and entropies) at the masked positions.
        ranked = cfg.rank_weight != 0.0
        scores = masked_token_logprobs(policy, sub, masked[None], chunk=max(1, len(rows)), entropy=ranked)
        lp, ent = scores if ranked else (scores, None)
        ce = -lp[0]                                                               # [B, G]
        supf = sup.to(ce.dtype)
        if cfg.ce_weighting == "token_mean":
            ce_loss = (ce * supf).sum() / supf.sum().clamp(min=1)
        else:                                   # LLaDA SFT: sum CE / (t L), t = masked fraction
            ce_loss = ((ce * supf).sum(-1) / masked.sum(-1).clamp(min=1).to(ce.dtype)).mean()
        loss, stats = ce_loss, {"ce_loss": float(ce_loss.detach())}
        if cfg.rank_weight != 0.0:
            in_rank = sup & (steps < cut[:, None] + cfg.rank_window)
            ent = ent[0]
            rank, n_rows = entropy_ranking_loss(ent, steps, cfg.rank_window, cfg.rank_margin, in_rank)
            loss = loss + cfg.rank_weight * rank
            stats.update(rank_loss=float(rank.detach()), rank_rows=float(n_rows),
                         entropy_sup_mean=float(ent.detach()[sup].mean()) if sup.any() else 0.0)
        stats.update(loss=float(loss.detach()), kept_rows=float(len(rows)), inner_iter=j,
                     sup_tokens=float(sup.sum()), masked_frac=float(masked.float().mean()),
                     reward_mean=float(rollouts.rewards.float().mean()))
        return loss, stats
