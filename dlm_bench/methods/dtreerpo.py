"""d-TreeRPO (arXiv 2512.09675, "d-TreeRPO: Towards More Reliable Policy Optimization for Diffusion
Language Models", Pan et al.; code github.com/THU-BPM/d-TreeRPO @ 3eb6f21, `dtreerpo/dtreerpo_trainer.py`
(`_perform_tree_search_and_compute_advantages`, `_generate_partial`, `_get_local_transition_logps`,
`compute_loss`), recipe `dtreerpo/slurm_scripts/dtreerpo.yaml`; DARE re-implements it).

Rollouts are trees. The decode's N steps are cut into s segments at steps 0, N/s, 2N/s, ..., N; from the
fully masked window `tree_samples` branches decode the first segment, and from every node `branch`
branches decode the next one (`sampler.Partial` resumes a decode), so a prompt has
tree_samples x branch^(s-1) leaves, the group. A leaf's value is its reward, a node's the mean of its
children's; a node's advantage is its value minus the mean value of its siblings. Each node is one
training sample, the transition from its parent's state: input = the parent's window, targets = the
tokens decoded in the segment up to the node state's first end-of-text, scored from the parent state
in one forward pass (the reference's local transition log-probability):

    loss = mean_nodes [ -mean_{j in T} min(rho_j A, clip(rho_j, 1 - eps, 1 + eps) A) + beta mean_{j in T} k3_j ]
           + lambda(t) mean_{(group, position)} KL(q || p_theta(. | parent state))

The self-distillation term (`self_distill`): for the children with positive advantage of one parent,
q at a position is the distribution of the tokens they decoded there, weighted by softmax(A / tau(t));
lambda(t) = lambda_max (e^{gamma t/T} - 1) / (e^gamma - 1) rises and tau(t) = tau_max (1 - t/T)^b falls
over T = `distill_horizon` optimizer updates. mu = 12 updates per rollout batch against the
rollout-time log-probs; k3 against the frozen reference (the recipe's base with the adapter disabled).
Every pad is decoded at its own step (`pad_steps`), as the reference decodes whole windows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, derive_seed, knob
from dlm_bench.errors import UserError
from dlm_bench.methods import Method, Rollouts, Sampled, register_method
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import k3, tree_advantages
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.trajectory import SampleCache, sample_logprobs, select_samples, state_masks
from dlm_bench.sampler import Partial, make_generators, sample

Y = "d-TreeRPO dtreerpo/slurm_scripts/dtreerpo.yaml"


@dataclass
class DTreeRPOConfig(MethodConfig):
    """d-TreeRPO on GSM8K (dtreerpo.yaml; run_llada_gsm8k_dtreerpo.sh adds only paths)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-5, f"{Y}:34 learning_rate"),
        lr_schedule=("constant_with_warmup", f"{Y}:35 lr_scheduler_type"),
        warmup_ratio=(0.0001, f"{Y}:32 warmup_ratio"),
        weight_decay=(0.1, f"{Y}:25 weight_decay"),
        adam_betas=((0.9, 0.99), f"{Y}:23-24 adam_beta1/2"),
        max_grad_norm=(0.2, f"{Y}:26 max_grad_norm"),
        train_steps=(None, f"{Y}:78 max_steps 30000 optimizer steps; here one pass unless set"),
        inner_updates=(12, f"{Y}:69 num_iterations"),
        minibatches=(1, "every segment of the batch in each update (the reference: one parent's per update)"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(16, f"{Y}:72-74 leaves: num_tree_samples 4 x tree_branch_factor 4^(contraction 2 - 1)"),
        batch_prompts=(32, f"{Y}:41 4 prompts/device x 8 GPUs (accelerate.yaml), one tree search each"),
        temperature=(0.9, "d-TreeRPO diffu_grpo_config.py temperature default 0.9 (not set in the yaml)"),
        gen_length=(256, f"{Y}:59 max_completion_length"),
        steps=(128, f"{Y}:62 diffusion_steps"),
        block_length=(32, f"{Y}:61 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{Y}:10 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{Y}:11 lora_alpha"),
        dropout=(0.05, f"{Y}:12 lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "dtreerpo_train.py:90 target_modules q_proj..gate_proj, mapped per "
                                          "architecture (lora_targets.py)"))
    tree_samples: int | None = knob(None, "branches from the fully masked root (None: group_size / "
                                          "branch^(levels - 1), the recipe's 16 / 4 = 4)",
                                    source=f"{Y}:74 num_tree_samples 4", low=1)
    branch: int = knob(4, "branches from every later node", source=f"{Y}:72 tree_branch_factor", low=1)
    contraction: int = knob(2, "s: tree levels; branch points at every N/s decoding steps",
                            source=f"{Y}:73 tree_contraction_factor", low=1)
    beta: float = knob(0.01, "k3 KL coefficient against the reference (0: no reference forward)",
                       source=f"{Y}:67 beta", low=0.0)
    epsilon: float = knob(0.4, "symmetric token-level PPO clip", source=f"{Y}:68 epsilon", low=0.0)
    self_distill: bool = knob(True, "add the time-scheduled self-distillation loss",
                              source=f"{Y}:77 enable_self_distillation_loss")
    distill_lambda_max: float = knob(3e-3, "lambda_max", source=f"{Y}:79 self_distillation_lambda_max", low=0.0)
    distill_gamma: float = knob(2.0, "gamma of lambda's rise", source=f"{Y}:80 self_distillation_gamma",
                                low=0.0, low_open=True)
    distill_tau_max: float = knob(2.0, "tau_max", source=f"{Y}:81 self_distillation_tau_max", low=0.0, low_open=True)
    distill_tau_power: float = knob(0.7, "b in tau(t) = tau_max (1 - t/T)^b", source=f"{Y}:82 self_distillation_beta",
                                    low=0.0)
    distill_horizon: int = knob(30000, "T of the schedules, in optimizer updates", source=f"{Y}:78 max_steps", low=1)


def segment_bounds(steps: int, s: int) -> list[int]:
    """Decoding steps where the tree branches, 0 and N included (the reference's branch points, counted forwards)."""
    return sorted({0, steps} | {int(k * steps / s) for k in range(1, s + 1)})


def distillation_kl(logp: torch.Tensor, tokens: torch.Tensor, active: torch.Tensor, adv: torch.Tensor, tau: float,
                    eps: float = 1e-8) -> tuple[torch.Tensor, int]:
    """Sum over positions of KL(q || p_parent) for one parent's children with positive advantage, and the
    number of positions with any: q = the children's tokens weighted by softmax(A / tau); logp [C, G] is
    each child's log-prob of its own token given the parent state (the same state for all)."""
    pos = adv > 0
    if int(pos.sum()) == 0 or adv.numel() <= 1:
        return logp.new_zeros(()), 0
    lp, t, a = logp[pos], tokens[pos], active[pos].to(logp.dtype)
    w = torch.softmax(adv[pos].to(logp.dtype) / tau, 0)[:, None] * a            # [C, G]
    total = w.sum(0)                                                               # [G]
    same = (t[:, None, :] == t[None, :, :]).to(logp.dtype)                         # [C, C, G]
    q = (same * w[None]).sum(1) / (total + eps)                                    # q of each child's token
    kl = (w / (total + eps) * (torch.log(q + eps) - lp)).sum(0)
    return (kl * (total > 0)).sum(), int((total > 0).sum())


@dataclass(kw_only=True)
class DTreeRPOCache(SampleCache):
    """One sample per tree node; `rows` is the first leaf of its parent's subtree, so all children of a
    parent (a self-distillation group) travel together in a micro-batch."""
    completion: torch.Tensor               # [R, G] a leaf under the node (its state is where step < end)
    masks: torch.Tensor                    # [R, G] undecoded in the parent state
    targets: torch.Tensor                  # [R, G] decoded in the segment, up to the node's first end-of-text
    adv: torch.Tensor                      # [R]
    parent: torch.Tensor                   # [R] id of the parent node (within the batch)
    old: torch.Tensor | None = None
    ref: torch.Tensor | None = None
    n_samples: int = 0                     # nodes in the whole batch
    n_pairs: int = 0                       # (parent, position) pairs of the self-distillation mean


@register_method
class DTreeRPO(Method):
    name = "dtreerpo"
    Config = DTreeRPOConfig
    profile = Profile(family="trajectory RL", reference="frozen (the recipe: the base, adapter disabled)",
                      estimator="segment transitions: a tree node's tokens given its parent's state, one forward",
                      forwards=1.25, forwards_note="20 nodes per tree of 16 leaves, all in one backward")
    needs_reference = True
    needs_trajectory = True
    pad_steps = True
    fidelity = (
        Deviation("one parent's children per optimizer update, 12 times each (num_iterations), 5 parents per tree "
                  "search", "every node of the batch in each of the 12 updates", "kept",
                  "tests/test_dtreerpo.py::test_micro_batch_of_one_matches_whole_batch"),
        Deviation("a branch's random draws come from the global RNG", "each node from a generator seeded by (its "
                  "first leaf's rollout seed, depth): a tree does not depend on batching", "kept",
                  "tests/test_dtreerpo.py::test_tree_rollouts"),
        Deviation("self-distillation over T = max_steps 30000 optimizer steps", "distill_horizon (the same default; "
                  "a short run keeps lambda near 0)", "fixed", "tests/test_dtreerpo.py::test_loss_by_hand"),
        Deviation("KL reference: the base with the adapter disabled", "a frozen copy of the base model", "fixed",
                  "tests/test_dtreerpo.py::test_loss_by_hand"),
    )

    def __init__(self, config=None, policy=None):
        super().__init__(config, policy)
        cfg = self.config
        below = cfg.branch ** (len(segment_bounds(cfg.rollout.steps, cfg.contraction)) - 2)   # leaves per root branch
        roots = cfg.tree_samples if cfg.tree_samples is not None else cfg.rollout.group_size // below
        if roots < 1 or cfg.rollout.group_size != roots * below:
            raise UserError(f"dtreerpo: a tree has tree_samples x branch^(levels - 1) leaves = {roots} x {below}; "
                            f"set group_size={max(1, roots) * below} (or tree_samples=None with a multiple of {below})")
        self.roots = roots
        self.needs_reference = cfg.beta != 0.0
        self.opt_step = 0

    def branching(self) -> list[int]:
        cfg = self.config
        levels = len(segment_bounds(cfg.rollout.steps, cfg.contraction)) - 1
        return [self.roots] + [cfg.branch] * (levels - 1)

    def after_update(self, opt_step: int, policy, ref) -> None:
        self.opt_step = opt_step

    def sample_rollouts(self, dlm, prompts, scfg, seeds, score, chunk) -> Sampled:
        """Decode the trees level by level; returns the leaves in depth-first order, G per prompt. Each
        node's forward passes count toward the first leaf under it."""
        G, bounds, branching = self.config.rollout.group_size, segment_bounds(scfg.resolved().steps,
                                                                                  self.config.contraction), self.branching()
        P, W = len(prompts) // G, scfg.gen_length
        tokens = torch.full((P, 1, W), dlm.mask_id, dtype=torch.long)
        step_map = torch.full((P, 1, W), -1, dtype=torch.long)
        nfe = torch.zeros(P * G, dtype=torch.long)
        for d, k in enumerate(branching, start=1):
            n = tokens.shape[1] * k                                     # nodes per prompt at depth d
            span = G // n
            first = [p * G + a * span for p in range(P) for a in range(n)]
            parent = [(p, a // k) for p in range(P) for a in range(n)]
            done = []
            for s in range(0, len(first), chunk):
                part = list(range(s, min(len(first), s + chunk)))
                resume = Partial(torch.stack([tokens[parent[i]] for i in part]),
                                 torch.stack([step_map[parent[i]] for i in part]), bounds[d - 1])
                done += sample(dlm, [prompts[first[i]] for i in part], scfg,
                               make_generators([derive_seed(seeds[first[i]], d) for i in part], dlm.device),
                               resume=resume, until=bounds[d])
            tokens = torch.tensor([c.tokens for c in done]).reshape(P, n, W)
            step_map = torch.tensor([c.step_map for c in done]).reshape(P, n, W)
            nfe[first] += torch.tensor([c.nfe for c in done])
        for c, f in zip(done, nfe.tolist()):
            c.nfe = f
        return Sampled(done, score(list(range(len(done))), [c.text for c in done]))

    def select(self, rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
        return select_samples(rollouts, idx)

    def loss_count(self, rollouts: Rollouts) -> float:
        c = rollouts.cache
        return float(len(c.rows)) if isinstance(c, DTreeRPOCache) else float(rollouts.rewards.numel())

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        dev, G = batch.completion.device, cfg.rollout.group_size
        N = rollouts.rewards.numel()
        if N % G or not torch.equal(rollouts.groups.cpu(), rollouts.groups.cpu().reshape(-1, G)[:, :1].repeat(1, G).reshape(-1)):
            raise ValueError("dtreerpo: rollouts must come as whole trees, G consecutive rows per prompt")
        P, branching = N // G, self.branching()
        bounds = segment_bounds(cfg.rollout.steps, cfg.contraction)
        advs = tree_advantages(rollouts.rewards.reshape(P, G).cpu(), branching)
        home, rep, first, last, adv, parent = [], [], [], [], [], []
        n_prev, pid = 1, 0
        for d, k in enumerate(branching, start=1):
            n, span_prev = n_prev * k, G // n_prev
            for p in range(P):
                for a in range(n):
                    home.append(p * G + (a // k) * span_prev)
                    rep.append(p * G + a * (G // n))
                    first.append(bounds[d - 1])
                    last.append(bounds[d])
                    adv.append(float(advs[d - 1][p, a]))
                    parent.append(pid + p * n_prev + a // k)
            pid += P * n_prev
            n_prev = n
        t = lambda v: torch.tensor(v, device=dev)   # noqa: E731
        rep_t, first_t, last_t = t(rep), t(first), t(last)
        masks, seg = state_masks(rollouts.step_map.to(dev), batch.valid, rep_t, first_t, last_t)
        comp, sm = batch.completion[rep_t], rollouts.step_map.to(dev)[rep_t]
        state = torch.where((sm >= 0) & (sm < last_t[:, None]), comp, policy.mask_id)     # the node's window
        is_eos = state == policy.eos_id
        end = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), torch.full_like(first_t, comp.shape[1]))
        targets = seg & (torch.arange(comp.shape[1], device=dev)[None, :] <= end[:, None])
        c = rollouts.cache = DTreeRPOCache(rows=t(home), completion=comp, masks=masks, targets=targets,
                                           adv=t(adv).float(), parent=t(parent), n_samples=len(home))
        with torch.no_grad():
            c.old = self._logp(policy, rollouts).detach()
            if cfg.beta != 0.0:
                c.ref = self._logp(ref, rollouts).detach()
            if cfg.self_distill:
                c.n_pairs = sum(distillation_kl(c.old[i], c.completion[i], c.targets[i], c.adv[i], 1.0)[1]
                                for i in self._groups(c))

    @staticmethod
    def _groups(c: DTreeRPOCache) -> list[torch.Tensor]:
        return [(c.parent == g).nonzero(as_tuple=True)[0] for g in torch.unique(c.parent)]

    def _logp(self, dlm, rollouts: Rollouts) -> torch.Tensor:
        c = rollouts.cache
        return sample_logprobs(dlm, rollouts.batch, c.rows, c.completion, c.masks, c.targets)

    def schedule(self) -> tuple[float, float]:
        """(lambda(t), tau(t)) after `opt_step` updates."""
        cfg = self.config
        prog = min(1.0, max(0.0, self.opt_step / cfg.distill_horizon))
        lam = cfg.distill_lambda_max * (math.exp(cfg.distill_gamma * prog) - 1.0) / (math.exp(cfg.distill_gamma) - 1.0)
        return lam, max(cfg.distill_tau_max * (1.0 - prog) ** cfg.distill_tau_power, 1e-6)

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg = self.config
        c = self.prepared(rollouts, policy, ref)
        if len(c.rows) == 0:    # a micro-batch of leaves that head no parent's children: weight 0 in the loop
            return torch.zeros((), device=rollouts.batch.completion.device, requires_grad=True), \
                {"reward_mean": float(rollouts.rewards.float().mean())}
        logp = self._logp(policy, rollouts)
        t = c.targets.to(logp.dtype)
        n = t.sum(-1).clamp(min=1)
        a = c.adv.to(logp.dtype)[:, None]
        ratio = torch.exp(logp - c.old.to(logp.dtype))
        per = -torch.min(ratio * a, ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon) * a)
        sample = (per * t).sum(-1) / n
        stats = {"pg_loss": float(sample.detach().mean())}
        if c.ref is not None:
            kl = (k3(logp, c.ref.to(logp.dtype)) * t).sum(-1) / n
            sample = sample + cfg.beta * kl
            stats["kl_k3"] = float(kl.detach().mean())
        loss = sample.mean()
        if cfg.self_distill and c.n_pairs:
            lam, tau = self.schedule()
            kl_sum = sum(distillation_kl(logp[i], c.completion[i], c.targets[i], c.adv[i], tau)[0]
                         for i in self._groups(c))
            # a mean over the whole batch's pairs: scaled so that the loop's per-sample weighting restores it
            sd = kl_sum * c.n_samples / max(1, len(c.rows)) / c.n_pairs
            loss = loss + lam * sd
            stats.update(distill_kl=float(sd.detach()) if torch.is_tensor(sd) else 0.0, distill_lambda=lam)
        stats.update(loss=float(loss.detach()), reward_mean=float(rollouts.rewards.float().mean()),
                     adv_abs_mean=float(c.adv.abs().mean()))
        return loss, stats
