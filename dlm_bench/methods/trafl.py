"""TraFL, Trajectory Flow baLancing (arXiv 2605.13935; Ahmadi, Parthasarathi, Cui). RECONSTRUCTED.

Only the abstract is public. It states the target, p*(y|x) proportional to pi_ref(y|x) exp(beta r),
a trajectory-balance objective, a "diffusion-compatible sequence-level surrogate" for log pi and a
"learned prompt-dependent normalization". The loss is the relative trajectory balance of
arXiv 2405.20971 (RTB) with FlowRL's learned log Z head (arXiv 2509.15207):

    delta = log Z_phi(x) + S_theta(y|x) - S_ref(y|x) - beta * r~(x, y) [/ L],   loss = mean delta^2

over rollouts treated as fixed data (no gradient through sampling). With exact normalised scores and
on-policy samples the expected semi-gradient is that of KL(pi_theta || p*), so p* is the fixed point.

Every choice below is a config option; the defaults and where each comes from:
- S: "per_token" = ELBO/L, the mean masked-token log-prob (the third-party port
  SDogya/automatic-eureka, which cites it as the paper's Eq. 4); "sequence" = the ELBO itself.
- K = 4 masks, the same for policy and reference (the port's notes: "the paper uses 4 as two
  complementary pairs"). The default scheme "stratified_paired" (`draw_masks`) draws 2 position-coupled
  pairs with the 4 sizes spread evenly over {1..L}: the second mask of a pair takes the last positions
  of the first one's random order, so it is disjoint from the first but an exact complement only when
  the two sizes add to L. It is the lowest-variance unbiased scheme measured (docs/likelihood.md);
  redrawn per inner update.
- tilt in per-token units, beta r~ / L, when S is per-token (the port's "beta / u"), so beta is a
  sequence-level tilt; with `tilt_per_token=False` it is the literal beta r~ (FlowRL's usage).
  Per-token scores with a prompt-only log Z move the fixed point when lengths vary within a prompt.
- r~ = r - group mean (the port: "TraFL centres the reward"). With on-policy exact scores this tilts
  by beta (1 - 1/G), not beta; "none" keeps the raw reward and targets p* exactly.
- log Z_phi(x): an MLP head on the mean-pooled prompt hidden states (`dlm.hidden` on the prompt
  alone, so y cannot leak into Z), of the policy and not detached (FlowRL `ProjZModule`, whose
  `.detach()` is commented out), trained at its own higher learning rate (10x, the port). Options:
  reference features, detached features, or "vargrad": the per-group mean residual, detached
  (the profiled optimum of log Z for the batch).
- beta = 15: the number is FlowRL's hard-coded value and the port's runs (`trafl_b15`); the paper's
  is unknown. The scale is not FlowRL's: FlowRL multiplies a z-scored advantage by 15 at every token
  (about 15 L z per sequence), here the sequence is tilted by 15 x the centred reward (15 r~ / L per
  token), a far gentler target. `dlm-bench methods -v trafl` prints the tilt a config applies.
- Optimiser, LoRA, group size, batch, lr: not found; matched to the d1/ESPO LoRA recipe it compares
  against so that only the objective differs. Rollout temperature 0.6: the port's note on the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, ScoreConfig, block, knob
from dlm_bench.errors import UserError
from dlm_bench.likelihood import MaskDraw, elbo, normalized_logprob
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.espo import iteration_draws
from dlm_bench.methods.heads import ScalarHead, hidden_size
from dlm_bench.methods.losses import group_advantages, group_mean, tb_loss, tb_residual


@dataclass
class TraFLConfig(MethodConfig):
    """Reconstruction defaults; the source of each is given (see the module docstring)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-6, "not found; d1/ESPO LoRA recipe value"),
        lr_schedule=("constant_with_warmup", "not found; ESPO recipe"),
        warmup_ratio=(0.001, "not found; ESPO recipe"),
        weight_decay=(0.01, "not found; ESPO recipe"),
        adam_betas=((0.9, 0.99), "not found; ESPO/d1 recipe"),
        max_grad_norm=(0.2, "not found; ESPO/d1 recipe"),
        train_steps=(None, "not found; loop default"),
        inner_updates=(1, "not found; one update per rollout batch (TB allows reuse)"),
        minibatches=(1, "not found; one update per rollout batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(6, "not found (port: 5); d1 and ESPO GSM8K use 6"),
        batch_prompts=(16, "not found; ESPO recipes' 16 prompts per rollout batch"),
        temperature=(0.6, "the port: TraFL's evaluation temperature 0.6; ablation 0.3/0.6/0.9"),
        gen_length=(256, "paper figures: lengths 256 and 512"),
        steps=(256, "not found; one token per step as ESPO/JustGRPO"),
        block_length=(32, "not found; LLaDA / ESPO block 32"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, "not found; d1/ESPO LoRA r 128"),
        alpha=(64, "not found; d1/ESPO alpha 64"),
        dropout=(0.05, "not found; d1/ESPO"),
        targets=("q,k,v,o,gate,up,down", "not found; d1/ESPO projections, mapped per architecture"))
    scoring: ScoreConfig = block(
        ScoreConfig,
        num_masks=(4, "port: '4 as two complementary pairs'"),
        mask_scheme=("stratified_paired", "not found; the lowest-variance unbiased scheme (docs/likelihood.md)"))
    z_lr: float = knob(3e-5, "learning rate of the log Z head", low=0.0, low_open=True,
                       source="10x lr, as the port's separate Adam (1e-2 vs 1e-3)")
    beta: float = knob(15.0, "reward tilt of the target p* ~ pi_ref exp(beta r)",
                       source="not found; FlowRL's hard-coded 15, the port's trafl_b15 runs")
    score: str = knob("per_token", "S(y|x): 'per_token' (ELBO/L, the port's 'Eq. 4') or 'sequence' (ELBO)",
                      choices=("per_token", "sequence"), source="the port")
    tilt_per_token: bool = knob(True, "tilt beta r~ / L when the score is per token", source="port's beta/u")
    reward_centering: str = knob("group", "'group': r - group mean (port) | 'none': raw reward",
                                 choices=("group", "none"), source="the port: 'TraFL centres the reward'")
    z_param: str = knob("head", "'head': learned log Z_phi(x) | 'vargrad': group mean, detached",
                        choices=("head", "vargrad"), source="FlowRL ProjZModule")
    z_features: str = knob("policy", "features of the log Z head: 'policy' (FlowRL) | 'reference' (cached)",
                           choices=("policy", "reference"), source="FlowRL")
    z_detach: bool = knob(False, "detach the head's features",
                          source="FlowRL leaves them attached (its detach is commented out)")
    z_hidden: int = knob(256, "head width", low=1, source="the port: 2-layer GELU MLP")


@dataclass(kw_only=True)
class TraFLCache(MethodCache):
    r_tilde: torch.Tensor                  # [N] the (centred) reward of the tilt
    draws: list[MaskDraw]                  # per inner update: the masks of policy and reference scores
    s_ref: list[torch.Tensor]              # per update [N]: reference scores S_ref(y|x)
    # z_features "reference": (features [prompts, H], row -> prompt index [N]); per prompt, so `select`
    # re-indexes it instead of slicing rows
    z_feats: tuple[torch.Tensor, torch.Tensor] | None = None


def prompt_features(dlm, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled last-layer states of each distinct prompt, from a prompt-only forward: ([P, H], inv [N])."""
    batch = rollouts.batch
    groups = rollouts.groups.to(batch.prompt_ids.device)
    _, inv = torch.unique(groups, return_inverse=True)
    rows = torch.arange(len(inv), device=inv.device)
    first = torch.full((int(inv.max()) + 1,), len(inv), device=inv.device).scatter_reduce(0, inv, rows, "amin")
    ids, mask = batch.prompt_ids[first], batch.prompt_mask[first]
    h = dlm.hidden(ids, mask).float()
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1), inv


@register_method
class TraFL(Method):
    name = "trafl"
    Config = TraFLConfig
    profile = Profile(family="distribution matching", reference="frozen",
                      estimator="per-token ELBO / L, 4 stratified-paired draws; learned log Z head",
                      forwards=4, forwards_note="4 masked forwards per completion")
    fidelity = (
        Deviation("FlowRL: beta 15 x a z-scored advantage at every token (~15 L z per sequence)",
                  "beta 15 x the centred reward per sequence (b r~ / L per token); the applied tilt "
                  "b = beta (1 - 1/G) is printed by `methods -v trafl`", "kept",
                  "tests/test_recipes.py::test_trafl_reports_the_tilt_it_applies"),
        Deviation("the port: 4 masks 'as two complementary pairs'", "stratified_paired: pairs disjoint, exact "
                  "complements only when the two sizes add to L (docstring says so)", "kept",
                  "tests/test_mask_schemes.py::test_stratified_paired_couples_positions_and_schemes_are_registered"),
    )
    needs_reference = True

    @classmethod
    def target(cls, config) -> str:
        """The tilt the defaults apply: exp(b r) at the sequence level, b = beta (1 - 1/G) when rewards
        are centred over a group of G (on-policy, exact scores: the group mean's share of r cancels)."""
        beta, G = config.beta, config.rollout.group_size
        b = beta * (1 - 1 / G) if config.reward_centering == "group" else beta
        how = (f"beta (1 - 1/G) = {beta:g} x (1 - 1/{G}), rewards centred over the group"
               if config.reward_centering == "group" else "beta, raw rewards")
        if config.score == "per_token" and not config.tilt_per_token:
            return (f"p*(y|x) ~ pi_ref(y|x) exp({b:.4g} L r): the per-token score is tilted by the whole "
                    f"{how}, so the sequence tilt grows with the length L")
        per_token = " (applied per token as b r~ / L)" if config.score == "per_token" else ""
        return f"p*(y|x) ~ pi_ref(y|x) exp({b:.4g} r){per_token}: b = {how}"

    def __init__(self, config=None, policy=None):
        super().__init__(config, policy)
        if policy is not None:
            self._build_head(policy)

    def _build_head(self, dlm) -> None:
        if self.config.z_param == "head" and "log_z" not in self.extra_modules:
            self.extra_modules["log_z"] = ScalarHead(hidden_size(dlm), self.config.z_hidden).to(dlm.device)

    def param_groups(self) -> list[dict]:
        if "log_z" not in self.extra_modules:
            return []
        return [{"params": list(self.extra_modules["log_z"].parameters()), "lr": self.config.z_lr,
                 "weight_decay": 0.0}]

    def _score(self, dlm, batch, draw) -> torch.Tensor:
        return normalized_logprob(dlm, batch, draw) if self.config.score == "per_token" else elbo(dlm, batch, draw)

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        self._build_head(policy)
        kind = "center" if cfg.reward_centering == "group" else "none"
        r_tilde = group_advantages(rollouts.rewards, rollouts.groups, kind)
        draws = [iteration_draws(rollouts, j, cfg.scoring.num_masks, cfg.scoring.mask_scheme)
                 for j in range(max(1, cfg.optim.inner_updates))]
        with torch.no_grad():
            s_ref = [self._score(ref, batch, d).detach() for d in draws]
            feats = None
            if cfg.z_param == "head" and cfg.z_features == "reference":
                feats = tuple(t.detach() for t in prompt_features(ref, rollouts))
        rollouts.cache = TraFLCache(r_tilde=r_tilde, draws=draws, s_ref=s_ref, z_feats=feats)

    def select(self, rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
        """Rows `idx`; the cached prompt features follow their rows. "vargrad" averages the residual over
        each group inside the loss, so it needs whole groups."""
        c = rollouts.cache
        if self.config.z_param == "vargrad":
            g = rollouts.groups
            if not torch.equal(torch.isin(g, g[idx]).nonzero(as_tuple=True)[0].sort().values, idx.sort().values):
                raise UserError("trafl: z_param 'vargrad' needs whole groups per backward; set micro_batch_size "
                                "to a multiple of group_size")
        if not isinstance(c, TraFLCache) or c.z_feats is None:
            return rollouts.rows(idx)
        f, inv = c.z_feats
        feats = (f[inv[idx.to(inv.device)]], torch.arange(len(idx), device=inv.device))
        return rollouts.rows(idx, c.take(idx, rollouts.rewards.numel(), z_feats=feats))

    def _log_z(self, rollouts, policy, s, s_ref, r_tilde, tilt) -> torch.Tensor:
        cfg = self.config
        if cfg.z_param == "vargrad":       # the batch-optimal log Z per prompt, no gradient
            return -group_mean((s - s_ref - cfg.beta * r_tilde * tilt).detach(), rollouts.groups.to(s.device))
        if rollouts.cache.z_feats is not None:
            feats, inv = rollouts.cache.z_feats
        else:
            feats, inv = prompt_features(policy, rollouts)
            feats = feats.detach() if cfg.z_detach else feats
        return self.extra_modules["log_z"](feats)[inv].to(s.dtype)

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg, batch = self.config, rollouts.batch
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        s = self._score(policy, batch, c.draws[j])
        s_ref = c.s_ref[j].to(s.dtype)
        r_tilde = c.r_tilde.to(s.device, s.dtype)
        per_token = cfg.score == "per_token" and cfg.tilt_per_token
        tilt = 1.0 / batch.lengths.clamp(min=1).to(s.dtype) if per_token else 1.0
        log_z = self._log_z(rollouts, policy, s, s_ref, r_tilde, tilt)
        delta = tb_residual(log_z, s, s_ref, r_tilde, cfg.beta, tilt)
        loss, stats = tb_loss(delta, log_z, s, s_ref)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()),
                     tilt_mean=float((cfg.beta * r_tilde * tilt).abs().mean()))
        return loss, stats
