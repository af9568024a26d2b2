"""The RL objectives as pure functions of tensors: sequence scores, rewards and group indices in,
(loss, stats) out. No model code here, so every objective can be checked on hand numbers and run on
the exact tabular toy (`dlm_bench.methods.toy`).

Conventions: N rows = prompts x G completions; `groups[i]` is the prompt index of row i (any ints,
not necessarily contiguous); scores are log-probabilities or their estimates (ELBO, ELBO/L).
Stats are plain floats for logging.
"""
from __future__ import annotations

import torch

ADVANTAGES = ("zscore", "rloo", "center", "none")


def _group_index(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse index [N] into 0..P-1, group sizes [P])."""
    _, inv = torch.unique(groups, return_inverse=True)
    return inv, torch.bincount(inv)


def _mean(x: torch.Tensor, inv: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(counts.shape, dtype=x.dtype, device=x.device).index_add(0, inv, x)
    return (sums / counts.to(x.dtype))[inv]


def _std(x: torch.Tensor, inv: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    n = counts.to(x.dtype)[inv]
    ss = _mean((x - _mean(x, inv, counts)) ** 2, inv, counts) * n
    return torch.where(n > 1, ss / (n - 1).clamp(min=1), torch.zeros_like(ss)).sqrt()


def group_mean(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean of x over each row's group, broadcast back to rows: [N]. Differentiable in x."""
    return _mean(x, *_group_index(groups))


def group_std(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Unbiased (ddof = 1, as torch.std in both reference repos) std of each row's group; 0 for singletons."""
    return _std(x, *_group_index(groups))


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, kind: str = "zscore",
                     scale: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """Per-row advantages from group rewards.

    - "zscore": (r - mean) / (std + eps), GRPO (JustGRPO `compute_group_advantages`, eps 1e-4).
    - "rloo": r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean), ESPO's hard-coded leave-one-out.
    - "center": r - mean (d1; TraFL's centred reward r~).
    - "none": r unchanged.
    `scale` divides "rloo"/"center" by (std + eps) as trl's `scale_rewards` (off in ESPO's recipes).
    """
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r}; choose from {ADVANTAGES}")
    r = rewards if rewards.is_floating_point() else rewards.float()
    if kind == "none":
        return r
    inv, counts = _group_index(groups.to(r.device))
    centred = r - _mean(r, inv, counts)
    if kind == "zscore" or scale:
        std = _std(r, inv, counts)
    if kind == "zscore":
        return centred / (std + eps)
    if kind == "rloo":
        n = counts.to(r.dtype)[inv]
        centred = torch.where(n > 1, centred * n / (n - 1).clamp(min=1), torch.zeros_like(centred))
    return centred / (std + eps) if scale else centred


def clipped_pg(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps_low: float = 0.2,
               eps_high: float | None = None, valid: torch.Tensor | None = None,
               reduce: str = "seq_mean", width: int | None = None) -> tuple[torch.Tensor, dict]:
    """PPO/GRPO clipped surrogate: loss = -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A).

    Sequence level: `logp`, `old_logp` are [N] (pass a length-normalised score for ESPO's ratio);
    the loss is the mean over rows. Token level: [N, T] with `valid` [N, T]; `reduce` says how:
      - "seq_mean": mean over rows of the mean over each row's valid tokens (the GRPO formula);
      - "justgrpo": sum over rows and tokens / (width * #rows with A != 0), where width is the fixed
        completion window (LeapLabTHU/JustGRPO `logprob_loss`: scale = 1/gen_length/valid_samples);
      - "token_mean": sum / number of valid tokens.
    """
    eps_high = eps_low if eps_high is None else eps_high
    a = adv if logp.dim() == 1 or adv.dim() == 2 else adv[:, None]     # [N], or [N, T] per token
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per = -torch.min(ratio * a, clipped * a)
    low = (ratio < 1 - eps_low) & (a < 0)          # where the clip binds (zero gradient)
    high = (ratio > 1 + eps_high) & (a > 0)
    if logp.dim() == 1:
        loss = per.mean()
        w = torch.ones_like(per, dtype=torch.bool)
    else:
        w = torch.ones_like(per, dtype=torch.bool) if valid is None else valid.bool()
        per = per * w
        if reduce == "seq_mean":
            loss = (per.sum(-1) / w.sum(-1).clamp(min=1)).mean()
        elif reduce == "justgrpo":
            nonzero = (adv != 0).sum().clamp(min=1)
            loss = per.sum() / ((width or per.shape[1]) * nonzero)
        elif reduce == "token_mean":
            loss = per.sum() / w.sum().clamp(min=1)
        else:
            raise ValueError(f"unknown reduce {reduce!r}")
    n = w.sum().clamp(min=1)
    with torch.no_grad():
        lr = (logp - old_logp)[w] if logp.dim() > 1 else (logp - old_logp)
        stats = {"pg_loss": float(loss.detach()), "ratio_mean": float(ratio[w].mean()) if w.any() else 1.0,
                 "clip_frac": float(((low | high) & w).sum() / n),
                 "clip_low_frac": float((low & w).sum() / n), "clip_high_frac": float((high & w).sum() / n),
                 "approx_kl_old": float((-lr).mean()) if lr.numel() else 0.0,
                 "adv_mean": float(adv.float().mean()), "adv_abs_mean": float(adv.float().abs().mean())}
    return loss, stats


def token_grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, adv: torch.Tensor,
                    valid: torch.Tensor, eps: float, beta: float) -> tuple[torch.Tensor, dict]:
    """d1's token-level GRPO (diffu-GRPO, and coupled-GRPO and d2 on their own per-token scores): the
    clipped ratio with a symmetric `eps`, a token mean over `valid` [N, G], plus beta times the k3 KL to
    `ref_logp` (None: no KL term)."""
    loss, stats = clipped_pg(logp, old_logp, adv, eps, eps, valid=valid, reduce="token_mean")
    n = valid.sum().clamp(min=1)
    if ref_logp is not None:
        kl = (k3(logp, ref_logp) * valid).sum() / n
        loss = loss + beta * kl
        stats["kl_k3"] = float(kl.detach())
    stats.update(loss=float(loss.detach()), logp_per_token=float((logp.detach() * valid).sum() / n))
    return loss, stats


def espo_loss(elbo: torch.Tensor, elbo_old: torch.Tensor, elbo_ref: torch.Tensor | None,
              adv: torch.Tensor, lengths: torch.Tensor, beta: float = 0.0, eps_low: float = 0.2,
              eps_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """ESPO (ML-GSAI/ESPO `ESPOTrainer.compute_loss`): the completion is one action.

    rho = exp((ELBO_theta - ELBO_old) / L); loss = -mean min(rho A, clip(rho) A)
          + beta * mean_i 1/2 (ELBO_theta - ELBO_ref)^2 / L_i   (k2 on unnormalised ELBOs, / L)
    ESPO divides by the padded window `logits_to_keep`; here L is each row's scored length (the same
    number when the loop scores the whole window, as LLaDA-style rollouts do).
    """
    L = lengths.to(elbo.dtype).clamp(min=1)
    loss, stats = clipped_pg(elbo / L, elbo_old / L, adv, eps_low, eps_high)
    if elbo_ref is not None and beta != 0.0:
        kl = (0.5 * (elbo - elbo_ref) ** 2 / L).mean()
        loss = loss + beta * kl
        stats["kl_k2"] = float(kl.detach())
        stats["kl_k1"] = float(((elbo.detach() - elbo_ref) / L).mean())
    stats["loss"] = float(loss.detach())
    return loss, stats


def tb_residual(log_z: torch.Tensor, s_theta: torch.Tensor, s_ref: torch.Tensor, r_tilde: torch.Tensor,
                beta: float, tilt_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Relative trajectory balance residual (arXiv 2405.20971; TraFL's reconstructed form):
    delta = log Z(x) + S_theta(y|x) - S_ref(y|x) - beta * r~(x, y) * tilt_scale.
    `tilt_scale` = 1/L puts the tilt in per-token units when S is per-token normalised."""
    return log_z + s_theta - s_ref - beta * r_tilde * tilt_scale


def tb_loss(delta: torch.Tensor, log_z: torch.Tensor | None = None,
            s_theta: torch.Tensor | None = None, s_ref: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Mean squared residual; stats include the policy-reference score gap (a KL(pi||ref) estimate
    when rollouts are on-policy and S is an exact log-prob)."""
    loss = (delta ** 2).mean()
    delta = delta.detach()
    stats = {"loss": float(loss.detach()), "tb_loss": float(loss.detach()), "delta_mean": float(delta.mean()),
             "delta_abs_mean": float(delta.abs().mean())}
    if log_z is not None:
        stats["log_z_mean"] = float(log_z.detach().float().mean())
    if s_theta is not None and s_ref is not None:
        stats["kl_est"] = float((s_theta.detach() - s_ref).float().mean())
    return loss, stats


def k3(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_anchor): exp(d) - d - 1 >= 0, d = log pi_anchor - log pi_theta
    (Schulman's estimator; d1's and TraceRL's KL term)."""
    d = anchor_logp - logp
    return torch.exp(d) - d - 1


def bgpo_loss(score: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, eps_low: float = 0.2,
              eps_high: float | None = None, dual_clip: float = 3.0) -> tuple[torch.Tensor, dict]:
    """BGPO (THU-KEG; DARE `compute_policy_loss_bgpo`): a PPO loss per Monte-Carlo draw that is linear
    in that draw, so each draw can be back-propagated on its own.

    `score`, `old` are [K, N]: draw k's sequence score of row i (DARE: one masked forward's ELBO
    divided by the window). With x = score - old, the ratio of draw k is 1 + x where A > 0 (a
    first-order lower bound of e^x) and e^x where A <= 0; averaged over draws, A (1 + mean x) <=
    A e^{mean x} for A > 0 and A mean e^x <= A e^{mean x} for A < 0 (Jensen), so the objective
    lower-bounds the clipped surrogate of the mean score, with equal value and gradient on-policy
    (x = 0). Clip at 1 - eps_low / 1 + eps_high, and for A < 0 the dual clip -A c. The loss is the
    mean over draws and rows."""
    eps_high = eps_low if eps_high is None else eps_high
    a = adv.to(score.dtype)[None].expand_as(score)
    x = score - old
    ratio = torch.where(a > 0, 1 + x, torch.exp(x))
    plain, clipped = -a * ratio, -a * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss1 = torch.maximum(plain, clipped)
    per = torch.where(a < 0, torch.minimum(loss1, -a * dual_clip), loss1)
    loss = per.mean()
    with torch.no_grad():
        stats = {"loss": float(loss), "pg_loss": float(loss), "ratio_mean": float(ratio.mean()),
                 "clip_frac": float((clipped > plain).float().mean()),
                 "dual_clip_frac": float(((loss1 > -a * dual_clip) & (a < 0)).float().mean()),
                 "adv_abs_mean": float(adv.float().abs().mean())}
    return loss, stats


def ebpo_loss(elbo: torch.Tensor, elbo_old: torch.Tensor, adv: torch.Tensor, eps_low: float = 0.2,
              eps_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """EBPO (LLaDA2.1 report Eq. 4-5; DARE `compute_policy_loss_ebpo`): PPO with one ratio per sequence,
    rho = exp(ELBO - ELBO_old) on the composite (block) ELBO, not length-normalised, clipped once:
    loss = -mean_i A_i clip-side(rho_i). The clip is applied to the log-ratio (min(log rho, log(1 + eps))
    for A >= 0, max(log rho, log(1 - eps)) for A < 0), which equals -min(rho A, clip(rho) A) but never
    evaluates exp on the clipped side, so an unnormalised ELBO difference cannot overflow to inf/nan."""
    eps_high = eps_low if eps_high is None else eps_high
    a = adv.to(elbo.dtype)
    log_ratio = elbo - elbo_old
    lo = torch.log1p(log_ratio.new_tensor(-eps_low))
    hi = torch.log1p(log_ratio.new_tensor(eps_high))
    eff = torch.where(a >= 0, torch.minimum(log_ratio, hi), torch.maximum(log_ratio, lo))
    loss = (-a * torch.exp(eff)).mean()
    with torch.no_grad():
        low, high = (log_ratio < lo) & (a < 0), (log_ratio > hi) & (a > 0)
        stats = {"loss": float(loss), "pg_loss": float(loss), "log_ratio_mean": float(log_ratio.mean()),
                 "clip_frac": float((low | high).float().mean()), "clip_low_frac": float(low.float().mean()),
                 "approx_kl_old": float((-log_ratio).mean()), "adv_abs_mean": float(adv.float().abs().mean())}
    return loss, stats


def preference_pairs(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(winner rows, loser rows) of every ordered pair inside a group whose rewards differ (graded
    rollouts as preference data: correct over incorrect); a group with one reward forms none."""
    r = rewards.float()
    same = groups[:, None] == groups[None, :]
    w, l = (same & (r[:, None] > r[None, :])).nonzero(as_tuple=True)
    return w, l


def dpo_loss(score_w: torch.Tensor, score_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict]:
    """DPO on likelihood estimates (VRPO, LLaDA 1.5 Eq. 3; DARE `compute_dpo_loss`), per pair:
    -log sigmoid(beta ((B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l)))), mean over pairs
    (0 without pairs, still attached to the graph)."""
    margin = (score_w - ref_w) - (score_l - ref_l)
    per = -torch.nn.functional.logsigmoid(beta * margin)
    loss = per.mean() if per.numel() else score_w.sum() * 0.0
    with torch.no_grad():
        stats = {"loss": float(loss), "dpo_loss": float(loss), "pairs": float(per.numel()),
                 "margin_mean": float(margin.mean()) if per.numel() else 0.0,
                 "pair_accuracy": float((margin > 0).float().mean()) if per.numel() else 0.0}
    return loss, stats


# ----------------------------------------------------------------------------- trajectory objectives

def per_column_zscore(x: torch.Tensor, groups: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(x - group mean) / (group std (ddof 1) + eps) for every column of x [N, S] separately."""
    return torch.stack([group_advantages(x[:, s], groups, "zscore", eps=eps) for s in range(x.shape[1])], 1)


def mdpo_step_advantages(step_rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """MDPO's per-step advantages [N, S] from the rewards r_t [N, S] of every step's prediction
    (autonomousvision/mdpo `mdpo_trainer.py`, its "adv-v3 + adv-v4"): the reward gain of step t,
    r_t - r_{t-1} (r_{-1} = 0), plus 1, plus the mean reward of the later steps (the last step: its own
    reward); then a z-score over each prompt's group, step by step (the +1 cancels there)."""
    r = step_rewards.double()
    gain = torch.cat([r[:, :1], r[:, 1:] - r[:, :-1]], 1) + 1.0
    S = r.shape[1]
    later = r[:, 1:].flip(1).cumsum(1).flip(1) / torch.arange(S - 1, 0, -1, dtype=r.dtype, device=r.device)
    raw = gain + torch.cat([later, r[:, -1:]], 1)
    return per_column_zscore(raw, groups, eps)


def mdpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, adv: torch.Tensor,
              targets: torch.Tensor, weights: torch.Tensor, beta: float, eps: float, window: int,
              rows: int) -> tuple[torch.Tensor, dict]:
    """MDPO's loss (`MDPOTrainer.compute_loss`) over R (trajectory, step) samples, summed over each
    row's steps and averaged over `rows` rows. logp/old/ref: [R, G] log-probs of the step's predictions
    given its input; targets: [R, G] positions masked in the input; weights: [R, G] the decoder's
    confidences; adv: [R]. A sample's loss is
        sum_j w_j [-min(rho_j A, clip(rho_j) A) lambda + beta (log ref_j - log pi_j)^2 / 2] / (n + 1e-4)
    with n its masked positions and lambda = window / (n + 1e-4)."""
    t = targets.to(logp.dtype)
    n = t.sum(-1, keepdim=True)
    lam = window / (n + 1e-4)
    a = adv.to(logp.dtype)[:, None]
    ratio = torch.exp(logp - old_logp)
    per = -torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a) * lam
    stats = {}
    if ref_logp is not None and beta != 0.0:
        k2 = 0.5 * (ref_logp - logp) ** 2
        per = per + beta * k2
        stats["kl_k2"] = float(((k2 * t).sum() / t.sum().clamp(min=1)).detach())
    sample = (per * t * weights.to(logp.dtype)).sum(-1) / (n.squeeze(-1) + 1e-4)
    loss = sample.sum() / max(1, rows)
    stats.update(loss=float(loss.detach()), ratio_mean=float(ratio.detach()[targets.bool()].mean()) if targets.any() else 1.0,
                 adv_abs_mean=float(adv.abs().mean()) if adv.numel() else 0.0)
    return loss, stats


def group_softmax(z: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """softmax of z over each row's group, [N]."""
    inv, counts = _group_index(groups.to(z.device))
    top = torch.full(counts.shape, -torch.inf, dtype=z.dtype, device=z.device).scatter_reduce(0, inv, z, "amax")
    e = torch.exp(z - top[inv])
    return e / torch.zeros(counts.shape, dtype=z.dtype, device=z.device).index_add(0, inv, e)[inv]


def dmpo_weights(log_rnd: torch.Tensor, rewards: torch.Tensor, groups: torch.Tensor, alpha: float,
                 centering: str = "negative", strength: float = 1.0) -> torch.Tensor:
    """DMPO's per-row weights (yuchen-zhu-zyc/DMPO `dmpo_trainer.py`): self-normalised importance
    weights of the reward-tilted target p* ~ p_ref exp(r / alpha) under the sampling policy,
    w_i = softmax over the group of (log p_ref(y_i) - log p_cur(y_i) + r_i / alpha); minus a baseline:
    'negative' (the recipe's `advantage_centering_neg`): the same weights for exp(-r / alpha),
    'mean': 1 / group size (an unbiased baseline), 'none': nothing."""
    lr = log_rnd.double()
    r, g = rewards.double().to(lr.device), groups.to(lr.device)
    w = group_softmax(lr + r / alpha, g)
    if centering == "negative":
        return w - strength * group_softmax(lr - r / alpha, g)
    if centering == "mean":
        inv, counts = _group_index(g)
        return w - strength / counts.to(w.dtype)[inv]
    if centering != "none":
        raise ValueError(f"unknown centering {centering!r}")
    return w


def egspo_returns(final: torch.Tensor, step_rewards: torch.Tensor, lam: float, normalize: bool) -> torch.Tensor:
    """EGSPO-SA's returns [N, K] (vishnutez/egspo-dllm-rl `egspo_trainer.py`): the final reward plus lam
    times the stepwise advantage r(x_0) - r(x_0 | t) of each selected step, where r(x_0 | t) rewards the
    one-step (greedy) prediction at step t; divided by 1 + lam with `normalize`."""
    ret = final.double()[:, None] + lam * (final.double()[:, None] - step_rewards.double())
    return ret / (1.0 + lam) if normalize else ret


def tree_advantages(leaf_rewards: torch.Tensor, branching: list[int]) -> list[torch.Tensor]:
    """d-TreeRPO's local advantages (THU-BPM/d-TreeRPO `dtreerpo_trainer.py`). leaf_rewards [P, prod
    branching], leaves in depth-first order; a node's value is the mean of its leaves' rewards; its
    advantage is its value minus the mean value of its siblings (0 without siblings). Returns one
    [P, nodes at depth d] tensor per depth d = 1..len(branching)."""
    P = leaf_rewards.shape[0]
    v = leaf_rewards.double().reshape(P, *branching)
    out = []
    for d in range(1, len(branching) + 1):
        vals = v.mean(dim=tuple(range(d + 1, len(branching) + 1))) if d < len(branching) else v
        k = branching[d - 1]
        parent_sum = vals.sum(-1, keepdim=True)
        siblings = (parent_sum - vals) / (k - 1) if k > 1 else torch.zeros_like(vals)
        out.append((vals - siblings).reshape(P, -1))
    return out
