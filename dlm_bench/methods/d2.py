"""d2-StepMerge and d2-AnyOrder (arXiv 2509.21474, "d2: Improved Techniques for Training Reasoning Diffusion
Language Models"; code github.com/kuleshov-group/d2 @ 381b9f1: `diffu-grpo/diffu_grpo_trainer.py`
`d2StepMergeTrainer`, `diffu-grpo-ao/diffu_grpo_trainer_ao.py` `d2AnyOrderTrainer`, recipes in their
`bash_scripts/`).

d1's token-level GRPO (clipped ratio, eps 0.5, centred advantages, k3 KL to the reference, token mean over
the completion through its first end-of-text) on a trajectory likelihood: each token's log-probability is
taken at the state the decoding trajectory was in when the token's segment began,

    log pi(y_k | x) ~ log p(y_k | x~, tokens decoded in earlier segments, everything else masked)

(`likelihood.segment_token_logprobs`). d2-StepMerge cuts the rollout's `steps` into `segments` (N) equal
runs of steps (`step_segments`); N = 1 is d1's one-step estimate, more segments follow the trajectory more
closely at one forward each (d2 backpropagates one segment per micro-step; here the segments are
checkpointed one at a time, `bounded`). The prompt is masked with p = 0.15 as in d1, one mask per inner
update shared by every segment and by the old and reference scores.

d2-AnyOrder scores every decoding step on its own (N = steps), the exact likelihood of the trajectory's
token choices. The paper gets it from one forward of an any-order causal LLaDA (d2's fine-tuned
architecture, `SFT_AO/`), whose two-stream attention lets token k see only the tokens decoded before it;
LLaDA and Dream attend bidirectionally, so here the same quantity costs one forward per step (at the
paper's 256 tokens / 128 steps: 128 forwards per completion). Its recipe: no prompt masking, mu = 2,
lr 1e-6, G = 8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob, mask_seed
from dlm_bench.likelihood import segment_token_logprobs, step_segments
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.diffu_grpo import completion_positions, prompt_masks
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import group_advantages, token_grpo_loss
from dlm_bench.methods.profile import Profile

Y = "d2 diffu-grpo/bash_scripts/train.yaml"
S = "d2 diffu-grpo/bash_scripts/gsm8k_d2stepmerge.sh"
AY = "d2 diffu-grpo-ao/bash_scripts/train.yaml"
AS = "d2 diffu-grpo-ao/bash_scripts/anyorder_gsm8k_d2anyorder.sh"
TARGETS = ("q,k,v,o,gate,up,down", "d2 diffu_grpo_train.py:97 target_modules q_proj..gate_proj, mapped per "
                                   "architecture (lora_targets.py)")


@dataclass(kw_only=True)
class D2Cache(MethodCache):
    adv: torch.Tensor                      # [N] centred group advantages
    positions: torch.Tensor                # [N, G] scored positions
    segments: torch.Tensor                 # [N, G] segment of every token (-1: never decoded)
    prompt_masks: list[torch.Tensor]       # per inner update [N, P]
    old_logp: list[torch.Tensor] | None = None   # per update [N, G] (only when the policy moves in a batch)
    ref_logp: list[torch.Tensor] | None = None   # per update [N, G] (only when beta != 0)


@dataclass
class D2StepMergeConfig(MethodConfig):
    """d2-StepMerge's GSM8K recipe (gsm8k_d2stepmerge.sh over train.yaml); `recipe(task)` gives the others."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-6, f"{Y}:34 learning_rate"),
        lr_schedule=("constant_with_warmup", f"{Y}:35 lr_scheduler_type"),
        warmup_ratio=(0.0001, f"{Y}:32 warmup_ratio"),
        weight_decay=(0.1, f"{Y}:25 weight_decay"),
        adam_betas=((0.9, 0.99), f"{Y}:23-24 adam_beta1/2"),
        max_grad_norm=(0.2, f"{Y}:26 max_grad_norm"),
        train_steps=(None, f"{S}:23 num_train_epochs 80; here one pass unless set"),
        inner_updates=(12, f"{S}:4 NUM_ITER=12"),
        minibatches=(1, "trl GRPOTrainer: one optimizer step per generation batch and iteration"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(6, f"{Y}:37 num_generations"),
        batch_prompts=(16, f"{Y}:41 6/device x grad-accum 16 / N 8 generation batches x 8 GPUs / G 6 ({S}:22)"),
        temperature=(0.9, "d2 diffu-grpo/diffu_grpo_config.py:194 temperature default"),
        gen_length=(256, f"{S}:19 max_completion_length"),
        steps=(128, f"{S}:20 diffusion_steps"),
        block_length=(32, f"{Y}:62 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{Y}:10 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{Y}:11 lora_alpha"),
        dropout=(0.05, f"{Y}:12 lora_dropout"),
        targets=TARGETS)
    segments: int = knob(8, "N: trajectory segments of steps / N decoding steps each (one forward each)",
                         source=f"{S}:21 --N 8", low=1)
    beta: float = knob(0.04, "k3 KL coefficient (0: no reference forward)", source=f"{Y}:68 beta", low=0.0)
    epsilon: float = knob(0.5, "symmetric token-level PPO clip", source=f"{Y}:69 epsilon", low=0.0)
    p_mask_prompt: float = knob(0.15, "probability of masking each prompt token in every segment's input",
                                source=f"{Y}:67 p_mask_prompt", low=0.0, high=1.0)
    positions: str = knob("to_eos", "scored positions: 'to_eos' (through the first stop token) | 'window'",
                          choices=("to_eos", "window"),
                          source="d2 diffu_grpo_trainer.py:1116 completion_mask up to the first EOS")
    bounded: bool = knob(True, "recompute each segment's forward in the backward, one segment's activations "
                               "alive at a time (False: all segments in one graph)",
                         source="d2 backpropagates one segment per gradient-accumulation micro-step")


@dataclass
class D2AnyOrderConfig(MethodConfig):
    """d2-AnyOrder's GSM8K recipe (anyorder_gsm8k_d2anyorder.sh over diffu-grpo-ao/bash_scripts/train.yaml)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(1e-6, f"{AS}:20 --learning_rate"),
        lr_schedule=("constant_with_warmup", f"{AY}:35 lr_scheduler_type"),
        warmup_ratio=(0.005, f"{AY}:32 warmup_ratio"),
        weight_decay=(0.1, f"{AY}:25 weight_decay"),
        adam_betas=((0.9, 0.99), f"{AY}:23-24 adam_beta1/2"),
        max_grad_norm=(0.2, f"{AY}:26 max_grad_norm"),
        train_steps=(None, f"{AY}:38 num_train_epochs 10; here one pass unless set"),
        inner_updates=(2, f"{AS}:4 NUM_ITER=2"),
        minibatches=(1, "trl GRPOTrainer: one optimizer step per generation batch and iteration"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(8, f"{AS}:21 --num_generations"),
        batch_prompts=(16, f"{AS}:22 8/device x grad-accum 2 ({AY}:42) x 8 GPUs / G 8"),
        temperature=(0.9, "d2 diffu-grpo-ao/diffu_grpo_config.py temperature default 0.9"),
        gen_length=(256, f"{AS}:18 max_completion_length"),
        steps=(128, "d2AnyOrderTrainer.generate: 2 tokens per step, block_length / 2 steps per block"),
        block_length=(32, f"{AY}:62 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{AY}:10 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{AY}:11 lora_alpha"),
        dropout=(0.05, f"{AY}:12 lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "d2 diffu_grpo_train_ao.py:75 target_modules q_proj..gate_proj"))
    beta: float = knob(0.04, "k3 KL coefficient (0: no reference forward)", source=f"{AY}:68 beta", low=0.0)
    epsilon: float = knob(0.5, "symmetric token-level PPO clip", source=f"{AY}:69 epsilon", low=0.0)
    positions: str = knob("to_eos", "scored positions: 'to_eos' (through the first stop token) | 'window'",
                          choices=("to_eos", "window"), source="d2 diffu_grpo_trainer_ao.py:932-933 completion_mask up to the first EOS")
    bounded: bool = knob(True, "recompute each step's forward in the backward, one step's activations alive "
                               "at a time (False: all steps in one graph)",
                         source="harness: one forward per step on a bidirectional model (see the method's doc)")


class D2(Method):
    """The shared trainer: GRPO on segment log-probabilities; subclasses fix how segments are cut."""
    needs_reference = True
    needs_trajectory = True

    def n_segments(self) -> int:
        raise NotImplementedError

    def prompt_p(self) -> float:
        return 0.0

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        n = self.n_segments()
        pms = [prompt_masks(batch, self.prompt_p(), mask_seed(rollouts.seed, j))[0]
               for j in range(max(1, cfg.optim.inner_updates))]
        c = rollouts.cache = D2Cache(
            adv=group_advantages(rollouts.rewards, rollouts.groups, "center"),
            positions=completion_positions(policy, batch, cfg.positions),
            segments=step_segments(rollouts.step_map.to(batch.completion.device), cfg.rollout.steps, n),
            prompt_masks=pms)
        with torch.no_grad():
            if self.updates_per_batch > 1:
                c.old_logp = [self._logp(policy, rollouts, j, False).detach() for j in range(len(pms))]
            if cfg.beta != 0.0:
                c.ref_logp = [self._logp(ref, rollouts, j, False).detach() for j in range(len(pms))]

    def _logp(self, dlm, rollouts: Rollouts, j: int, bounded: bool) -> torch.Tensor:
        c = rollouts.cache
        return segment_token_logprobs(dlm, rollouts.batch, c.segments, self.n_segments(), c.positions,
                                      c.prompt_masks[j], bounded=bounded)

    def loss_count(self, rollouts: Rollouts) -> float:
        """A token mean over the scored positions of these rows."""
        c = rollouts.cache
        return float(c.positions.sum()) if isinstance(c, D2Cache) else float(rollouts.batch.valid.sum())

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg = self.config
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        pos = c.positions
        logp = self._logp(policy, rollouts, j, cfg.bounded)
        old = c.old_logp[j] if c.old_logp is not None else logp.detach()
        ref_lp = c.ref_logp[j].to(logp.dtype) if c.ref_logp is not None else None
        loss, stats = token_grpo_loss(logp, old.to(logp.dtype), ref_lp, c.adv.to(logp.device, logp.dtype), pos,
                                      cfg.epsilon, cfg.beta)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()))
        return loss, stats


# Per-task overrides of the GSM8K script (diffu-grpo/bash_scripts/{task}_d2stepmerge*.sh)
STEPMERGE_RECIPES: dict[str, dict] = {
    "math": dict(gen_length=512, steps=256, segments=16),                     # math500_d2stepmerge.sh
    "countdown": dict(inner_updates=8, gen_length=128, steps=64, segments=16),  # countdown_d2stepmerge.sh
    # sudoku_d2stepmerge_N16.sh, the middle of the scripts' N = 2..64 ablation
    "sudoku": dict(inner_updates=8, gen_length=128, steps=64, segments=16, temperature=0.3),
}
TASK_RECIPE = {"math500": "math", "minerva": "math"}


@register_method
class D2StepMerge(D2):
    name = "d2_stepmerge"
    Config = D2StepMergeConfig
    profile = Profile(family="trajectory RL", reference="frozen (trl re-syncs it every 64 steps)",
                      estimator="trajectory likelihood, N = 8 merged step segments (one forward each)",
                      forwards=1, forwards_note="1 of the 8 segments at a time")
    fidelity = (
        Deviation("one segment per gradient-accumulation micro-step (GA 16 = N 8 x 2 generation batches)",
                  "every segment of a row in one backward, checkpointed one at a time (`bounded`): the same "
                  "token-mean gradient", "kept",
                  "tests/test_d2.py::test_micro_batch_of_one_matches_whole_batch"),
        Deviation("segment = run of global decoding steps, idle steps included; decoding runs to the last step",
                  "the row's own step count (a row stops at its end-of-text, the rest filled at that step): "
                  "the same cut for every token before the stop", "kept",
                  "tests/test_likelihood_draws.py::test_step_segments_cut_where_d2_cuts"),
        Deviation("trl re-syncs the reference every 64 steps (sync_ref_model)", "the reference is frozen, as for d1",
                  "kept", "tests/test_d2.py::test_loss_by_hand"),
    )

    @classmethod
    def recipe(cls, task: str) -> dict:
        return STEPMERGE_RECIPES.get(TASK_RECIPE.get(task, task), {})

    def n_segments(self) -> int:
        return self.config.segments

    def prompt_p(self) -> float:
        return self.config.p_mask_prompt


@register_method
class D2AnyOrder(D2):
    name = "d2_anyorder"
    Config = D2AnyOrderConfig
    profile = Profile(family="trajectory RL", reference="frozen",
                      estimator="exact trajectory likelihood: every decoding step's tokens at its own state",
                      forwards=1, forwards_note="1 of 128 steps at a time (the paper: 1 two-stream forward, 2L tokens)")
    fidelity = (
        Deviation("an any-order causal LLaDA (d2's SFT_AO checkpoint) scores the whole trajectory in one "
                  "two-stream forward of 2L tokens", "LLaDA and Dream are bidirectional: one forward per decoding "
                  "step gives the same per-step log-probabilities (exact, not an estimate)", "kept",
                  "tests/test_likelihood_draws.py::test_segment_likelihood_one_segment_is_d1s_and_one_step_each_is_exact"),
        Deviation("rollouts from the any-order model's own generate (2 tokens per step, the trajectory reordered)",
                  "the harness's LLaDA sampler at 2 tokens per step (steps = gen_length / 2)", "kept",
                  "tests/test_d2.py::test_recipe_and_flags"),
    )

    def n_segments(self) -> int:
        return self.config.rollout.steps
