"""`--set control=base`: the base model's reward on the very prompts of each training step.

A run's training reward rises for two reasons: the policy learns, and the prompts of later steps
happen to be easier (each step draws new ones). On the testbed the second alone moved the base
model's reward from 0.13 (steps 0-9) to 0.18 (steps 30-59) of one seed's prompt order
(../shared/reference/testbed-fidelity.md). The control decodes every step's prompts once more with
the frozen base model, with the rollout decoder and the very generator seeds of the run's own
rollouts (common random numbers: at step 0, before any update, both rewards are equal), and logs
`control_reward_mean` and `reward_minus_control`, which is what the policy has learnt.

Cost: one extra rollout per step (no backward), and under full fine-tuning a frozen copy of the base
model unless the run reloads it (under LoRA the adapter is switched off, at no memory cost).
"""
from __future__ import annotations

from dlm_bench.tasks import training_rewards
from dlm_bench.training.policy import frozen_reference

CONTROLS = ("none", "base")


def control_model(cfg, policy, lora: bool, resumed: bool):
    """The frozen base model the control decodes with, or None when the control is off."""
    if cfg.control == "none":
        return None
    return frozen_reference(cfg.model, policy, lora, resumed, cfg.dtype)


def control_rewards(run, problems: list, prompt_ids: list, global_idx: list[int], sample) -> list[float]:
    """The control model's rewards for G completions of each prompt, decoded with the run's rollout
    sampler and generator seeds (`sample` is the loop's own rollout sampler)."""
    p = run.plan
    G = p.mcfg.rollout.group_size
    comps = sample(run.control, prompt_ids, p.scfg, run.cfg, run.step, global_idx, G)
    return training_rewards(p.task, [q for q in problems for _ in range(G)], [c.text for c in comps], p.reward_kind)
