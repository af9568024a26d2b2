"""The one RL post-training loop; every method (`dlm_bench.methods`) runs through it.

One step:
  1. prompts: `batch_prompts` problems of the task's train split, from a shuffle seeded by
     (seed, epoch), so step s always sees the same prompts;
  2. rollouts: G completions per prompt from the sampler in the method's `rollout_order` at its
     temperature; completion (prompt i, sample j) of step s has its own generator seeded by
     (seed, s, i, j), so a completion never depends on batching, chunking or the number of processes;
  3. rewards from `task.rewards`;
  4. the rollouts are cut into micro-batches of `micro_prompts` whole groups; each is one `Rollouts`
     (its own mask seed from (seed, s, micro-batch index)) and is `prepare`d once under no_grad with
     the policy in eval mode;
  5. each prepared micro-batch is cut into backward chunks of `micro_batch_size` completions (each
     with all its mask draws / trace samples; `Method.select` slices the cache, whose group statistics
     were computed on the whole batch);
  6. `inner_updates` (mu) optimizer updates: every chunk's loss is back-propagated with weight
     count_c / count_total (the number of terms its mean runs over, see `loss_count`), so the summed
     gradient is the gradient of the whole batch's loss (tests/test_micro_batch.py, per method, in
     float64); then clip, AdamW, LR schedule. Dropout masks are drawn per chunk, so with dropout > 0
     a different micro_batch_size is a different (equally valid) draw.

Data parallel (torchrun, WORLD_SIZE > 1, `dlm_bench.distributed`): each rank takes a contiguous share
of the micro-batches, gradients are summed across ranks, so 1 and N processes make the same update up
to float summation order. Only rank 0 writes logs and checkpoints, under the run folder's lock.

The stages, in the order `train` runs them: `plan` (every check that needs no model), `resume`,
`build` (policy, reference, method, optimizer), then per step `rollout`, `update`, `step_metrics`,
and `save`.

Checkpoints are atomic (`dlm_bench.training.checkpoint`) and hold the model (the adapter under LoRA), the
optimizer, the method's own modules and the step; all randomness derives from (seed, step, ...), so a
resumed run continues exactly as an uninterrupted one. Ctrl-C saves unless it lands inside an update.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dlm_bench.training import checkpoint, model_card, pairs
from dlm_bench.checks import TRAIN_RESULT
from dlm_bench.config import derive_seed, knob
from dlm_bench.distributed import (Dist, accumulating, all_sum, broadcast_params, init_distributed, is_sharded,
                                   lockstep, not_replicated, replicate, shard, sum_gradients, sum_over_ranks)
from dlm_bench.errors import UserError
from dlm_bench.training.fit import check_fits
from dlm_bench.training.control import CONTROLS, control_model, control_rewards
from dlm_bench.training.schedule import lr_multiplier, step_prompts, warmup_updates
from dlm_bench.training.parallel import grad_norm_and_clip, loss_scale, plain_params
from dlm_bench.runs import tracking
from dlm_bench.runs.files import append_lines, atomic_write, write_json

RESULT = TRAIN_RESULT
__all__ = ["TrainConfig", "train", "derive_seed", "step_prompts", "lr_multiplier", "shard", "Dist"]


HARNESS = "harness default"
MEMORY = "harness default; memory and speed only, no effect on the update (docs/memory.md)"


@dataclass
class TrainConfig:
    """The loop's own settings (`--set NAME=VALUE` beside the method's; `dlm-bench methods -v` lists them)."""
    method: str = knob("espo", "training method (dlm-bench methods)", source=HARNESS)
    task: str = knob("testbed", "task whose train split gives prompts and rewards", source=HARNESS)
    model: str = knob("", "base model directory (Hugging Face layout)", source=HARNESS)
    out: str = knob("results/train", "run folder: checkpoint/, log.jsonl, config.json", source=HARNESS)
    seed: int = knob(0, "training seed: prompt order, rollout seeds, mask draws", source=HARNESS, low=0)
    train_steps: int | None = knob(None, "rollout batches to train on (None: the method's optim.train_steps)",
                                   source=HARNESS, low=1)
    overrides: dict = knob({}, "method settings (lr, group_size, beta, optim.lr, ...)", source=HARNESS)
    sampler: dict = knob({}, "extra SamplerConfig fields for rollouts (sampler.remasking, ...)", source=HARNESS)
    split: str | None = knob(None, "training split (None: the task's train split, else 'train')", source=HARNESS)
    pairs: str | None = knob(None, "preference pairs file (JSONL: prompt, chosen, rejected) whose two completions "
                                   "per prompt (rewards 1, 0) replace the task's rollouts; task must be 'pairs' "
                                   "(dlm_bench.training.pairs)", source=HARNESS)
    save_every: int = knob(50, "optimizer steps between checkpoints (0: only at the end)", source=HARNESS, low=0)
    data_dir: str | None = knob(None, "folder holding the benchmark data (default: the search order)",
                                source=HARNESS)
    device: str | None = knob(None, "cpu, cuda, cuda:1 (None: cuda if available; per rank under torchrun)",
                              source=HARNESS)
    dtype: str | None = knob(None, "model dtype (None: bf16 on GPU, fp32 on CPU)", source=HARNESS)
    # 64: its sampler call at P 256 + G 512 measured by `dlm-bench memory` (docs/memory.md) is 27.0 GiB
    # (LLaDA-8B) / 28.7 GiB (Dream-7B) allocated, + a LoRA run's resident state (about 5 GiB): about 37 GB
    # with the assumed overhead; rule: a power of two that fits 80 GB at that prompt length.
    rollout_chunk: int = knob(64, "completions per sampler call", source=MEMORY + "; 64 fits 80 GB at "
                              "P 256 + G 512 (dlm-bench memory)", low=1)
    micro_prompts: int = knob(1, "prompts (whole groups) per rollout/prepare micro-batch", source=MEMORY, low=1)
    micro_batch_size: int = knob(4, "completions (each with all its mask draws) per backward", source=MEMORY,
                                 low=1)
    minutes: float | None = knob(None, "stop (and save) after this much wall-clock time", source=HARNESS,
                                 low=0.0, low_open=True)
    gradient_checkpointing: bool | None = knob(None, "recompute activations in the backward (None: on for "
                                                     "every model but the built-in tiny one)", source=MEMORY)
    parallel: str = knob("auto", "several processes: fsdp for full fine-tuning, ddp for LoRA (auto), or forced",
                         source=HARNESS, choices=("auto", "ddp", "fsdp"))
    memory_check: bool = knob(True, "on a GPU, refuse settings the memory model predicts will not fit "
                                    "(training/fit.py)", source=HARNESS)
    report_to: str = knob("none", tracking.HELP, source="harness default (TRL's report_to)")
    control: str = knob("none", "'base': also log the base model's reward on each step's prompts and rollout "
                                "seeds (control_reward_mean, reward_minus_control; one extra rollout per step, "
                                "training/control.py)", source=HARNESS, choices=CONTROLS)

    def validate(self) -> "TrainConfig":
        if not self.model and self.method != "base":
            raise UserError("a model directory is required (--model PATH)")
        for name in ("rollout_chunk", "micro_prompts", "micro_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.train_steps is not None and (not isinstance(self.train_steps, int) or self.train_steps <= 0):
            raise UserError(f"train_steps must be a positive integer, got {self.train_steps!r}")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            raise UserError(f"save_every must be a non-negative integer, got {self.save_every!r}")
        if self.parallel not in ("auto", "ddp", "fsdp"):
            raise UserError(f"parallel must be auto, ddp or fsdp, got {self.parallel!r}")
        tracking.parse_report_to(self.report_to)
        if self.control not in CONTROLS:
            raise UserError(f"control must be one of {', '.join(CONTROLS)}, got {self.control!r}")
        if not isinstance(self.overrides, dict) or not isinstance(self.sampler, dict):
            raise UserError("overrides and sampler must be mappings")
        from dlm_bench.sampler import SamplerConfig
        known = {f.name for f in dataclasses.fields(SamplerConfig)}
        owned = {"gen_length", "steps", "block_length", "temperature", "order"}
        bad = sorted(set(self.sampler) - (known - owned))
        if bad:
            raise UserError(f"unknown or method-owned sampler field(s) {', '.join(bad)}; set gen_length, steps, "
                            f"block_length, temperature as method fields; sampler fields: "
                            f"{', '.join(sorted(known - owned))}")
        return self


# ----------------------------------------------------------------------------- pure helpers

def row_chunks(method, rollouts, size: int) -> list:
    """A prepared micro-batch cut into backward chunks of at most `size` completions (`method.select`).
    Everything the loss normalises by was computed in `prepare` on the whole batch, and
    `method.loss_count` weights each chunk, so the summed gradient equals one backward over the batch."""
    n = rollouts.rewards.numel()
    if n <= size:
        return [rollouts]
    return [method.select(rollouts, torch.arange(s, min(n, s + size))) for s in range(0, n, size)]


def _identity(config: dict) -> dict:
    """Settings a resumed run must share (its length, budget, checkpointing and device may change)."""
    return {k: v for k, v in config.items()
            if k not in ("train_steps", "save_every", "minutes", "device", "rollout_chunk", "out", "parallel",
                         "gradient_checkpointing", "report_to",
                         "memory_check", "control")}


def _flat(config: dict) -> dict:
    """{"overrides": {"lr": 1}} -> {"overrides.lr": 1}: a changed setting is named by its own key."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- stage: plan

@dataclass
class Plan:
    """Everything decided before a model is loaded: a bad setting fails here, in seconds."""
    cfg: TrainConfig
    cls: type
    mcfg: object
    task: object
    problems: list
    steps: int
    scfg: object                     # the rollout SamplerConfig
    reward_kind: str = "binary"      # what task.rewards is asked for (tasks.reward_kind)
    split: str = "train"             # the task split the prompts come from

    @property
    def n_micro(self) -> int:
        return _micro_batches(self.cfg, self.mcfg.rollout)


def _micro_batches(cfg: TrainConfig, rollout) -> int:
    """Micro-batches of whole prompt groups in one rollout batch."""
    return math.ceil(rollout.batch_prompts / cfg.micro_prompts)


def _sampler_config(cfg: TrainConfig, rollout, cls):
    from dlm_bench.checks import finite
    from dlm_bench.sampler import SamplerConfig
    finite([rollout.temperature], "temperature")
    order = "left_to_right" if cls.rollout_order == "left_to_right" else "diffusion"
    # a loss that orders pads by their decoding step needs each decoded at its own step, as the reference
    pads = {"stop_at_eos": False} if cls.pad_steps else {}
    scfg = SamplerConfig(gen_length=rollout.gen_length, block_length=rollout.block_length, steps=rollout.steps,
                         temperature=rollout.temperature, order=order, **{**pads, **cfg.sampler})
    scfg.resolved()                      # validate now, not at the first rollout
    return scfg


def plan(cfg: TrainConfig, problems: list | None = None) -> Plan | None:
    """Validate every setting and load the prompts (or take `problems`: `dlm-bench memory` needs no
    benchmark data); None for a method that does not train."""
    from dlm_bench.methods import get_method
    from dlm_bench.tasks import get_task, reward_kind
    cfg.validate()
    cls = get_method(cfg.method)
    mcfg = cls.config_for(cfg.task, dict(cfg.overrides))
    if cfg.pairs:
        task, problems, kind = _pairs_task(cfg, cls, mcfg)      # the file in the task's place
    else:
        task = get_task(cfg.task, data_dir=cfg.data_dir)
    if not cls.trains:
        return None
    split = "pairs" if cfg.pairs else cfg.split or getattr(task, "train_split", None) or "train"
    if not cfg.pairs:
        kind = reward_kind(task, getattr(mcfg, "code_reward", "binary"))  # a kind the task lacks fails here
        problems = _problems(cfg, task, split) if problems is None else problems
    n_micro = _micro_batches(cfg, mcfg.rollout)
    if mcfg.optim.minibatches > n_micro:     # a minibatch is at least one micro-batch of whole groups
        print(f"note: {cfg.method}: {mcfg.optim.minibatches} minibatches requested, a batch has {n_micro} "
              f"micro-batches (batch_prompts / micro_prompts): using {n_micro}", file=sys.stderr, flush=True)
        mcfg.optim.minibatches = n_micro
    steps = cfg.train_steps or mcfg.optim.train_steps or \
        max(1, mcfg.optim.epochs * math.ceil(len(problems) / mcfg.rollout.batch_prompts))
    scfg = _sampler_config(cfg, mcfg.rollout, cls)
    return Plan(cfg, cls, mcfg, task, problems, int(steps), scfg, kind, split)


def _problems(cfg: TrainConfig, task, split: str) -> list:
    try:
        problems = task.load(split)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"task {cfg.task!r} split {split!r}: {e}") from e
    if not problems:
        raise UserError(f"task {cfg.task!r} split {split!r} is empty")
    return problems


def _pairs_task(cfg: TrainConfig, cls, mcfg):
    """A pairs file as the task: its problems, group size 2 (chosen, rejected), binary rewards."""
    if cfg.task != "pairs":
        raise UserError(f"--pairs gives the prompts and completions: leave --task out (got task {cfg.task!r})")
    if cls.needs_trajectory or cls.pad_steps:
        raise UserError(f"{cfg.method} scores decoding steps, which a pairs file does not have")
    if mcfg.rollout.source != "online":
        raise UserError("--pairs and rollout.source=offline both replace the rollouts; choose one")
    if mcfg.rollout.group_size != 2:
        print(f"note: {cfg.method}: a pairs file gives 2 completions per prompt: group_size "
              f"{mcfg.rollout.group_size} -> 2", file=sys.stderr, flush=True)
        mcfg.rollout.group_size = 2
    task = pairs.PairsFile(cfg.pairs)
    return task, task.load(), "binary"


def _record_base(cfg: TrainConfig) -> Path:
    if not Path(cfg.model).is_dir():
        raise UserError(f"model directory {cfg.model!r} does not exist")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = {"method": "base", "task": cfg.task, "model": str(Path(cfg.model).resolve()), "seed": None,
           "trained": False}
    write_json(out / RESULT, rec)
    return Path(cfg.model)


# ----------------------------------------------------------------------------- stage: resume

def resume(cfg: TrainConfig, d: Dist) -> tuple[Path | None, dict]:
    """(checkpoint, trainer state) of an earlier run in cfg.out, refused if its settings differ."""
    out = Path(cfg.out)
    found = checkpoint.load_state(out) if d.main else None
    d.barrier()
    if not d.main:
        found = checkpoint.load_state(out)
    if found is None:
        return None, {"step": 0, "opt_step": 0}
    ckpt, state = found
    now = dataclasses.asdict(cfg)
    if _identity(state["config"]) != _identity(now):
        was, now = _flat(_identity(state["config"])), _flat(_identity(now))
        diff = "; ".join(f"{k}: {was.get(k)!r} there, {now.get(k)!r} now"
                         for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
        raise UserError(f"{out} holds a run with other settings ({diff}); use a new --out or the same settings")
    return ckpt, state


# ----------------------------------------------------------------------------- stage: build

@dataclass
class Run:
    """The live state of a run: models, method, optimizer and counters."""
    plan: Plan
    d: Dist
    device: torch.device
    dlm: object
    lora: bool
    method: object
    ref: object
    opt: torch.optim.Optimizer
    step: int
    opt_step: int
    prompt_cache: dict = field(default_factory=dict)
    trajectories: dict | None = None      # (problem, sample) -> Trajectory, for offline rollouts
    control: object | None = None         # the frozen base model of `--set control=base`

    @property
    def cfg(self) -> TrainConfig:
        return self.plan.cfg

    def prompt_ids(self, i: int) -> list[int]:
        """Token ids of training problem i's prompt, encoded once per run."""
        if i not in self.prompt_cache:
            self.prompt_cache[i] = self.dlm.prompt_ids(self.plan.task.prompt(self.plan.problems[i]))
        return self.prompt_cache[i]

    @property
    def params(self) -> list:
        return [p for g in self.opt.param_groups for p in g["params"]]

    @property
    def total_updates(self) -> int:
        o = self.plan.mcfg.optim
        return self.plan.steps * o.inner_updates * o.minibatches


def build(p: Plan, d: Dist, device, ckpt: Path | None, state: dict) -> Run:
    """Policy (+ adapter), method (its own modules seeded alike on every rank), reference, AdamW."""
    from dlm_bench.training.policy import frozen_reference, load_policy, train_block_size
    cfg, mcfg, resumed = p.cfg, p.mcfg, ckpt is not None
    dlm, lora = load_policy(cfg.model, mcfg.lora, cfg.seed, cfg.dtype, device, ckpt)
    train_block_size(dlm, mcfg.rollout.block_length)
    dlm.bound_memory(cfg.gradient_checkpointing, cfg.micro_batch_size)     # memory only (docs/memory.md)
    torch.manual_seed(derive_seed(cfg.seed, 0x2E7))
    method = p.cls(mcfg, policy=dlm)
    # The instance decides: some methods need a reference only for some settings (TraceRL's KL anchor).
    ref = frozen_reference(cfg.model, dlm, lora, resumed, cfg.dtype) if method.needs_reference else None
    if resumed and state.get("reference") is not None:
        ref.model.load_state_dict(state["reference"])
        method.reference_moved = True
    control = control_model(cfg, dlm, lora, resumed)     # before FSDP shards the policy
    method.extra_modules.to(device)
    if next(dlm.model.parameters()).dtype == torch.float64:     # an exact-arithmetic run: heads too
        method.extra_modules.double()
    if resumed and state.get("extra_modules"):
        method.extra_modules.load_state_dict(state["extra_modules"])
    if not resumed:                     # belt and braces: identical start on every rank
        broadcast_params(list(dlm.model.parameters()) + list(method.extra_modules.parameters()), d)
    fsdp = d.world > 1 and (cfg.parallel == "fsdp" or (cfg.parallel == "auto" and not lora))
    if fsdp:                            # after the reference copy: only the policy is sharded
        from dlm_bench.training.parallel import shard_model
        shard_model(dlm, d.world, device)
    o = mcfg.optim
    groups = [{"params": [q for q in dlm.model.parameters() if q.requires_grad], "lr": o.lr,
               "weight_decay": o.weight_decay}] + method.param_groups()
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.adam_betas), weight_decay=o.weight_decay)
    if resumed and bool(state.get("optimizer_by_name")) != fsdp:
        raise UserError(f"{cfg.out} was checkpointed {'with' if state.get('optimizer_by_name') else 'without'} "
                        f"FSDP; resume it with the same parallel mode (--set parallel=...)")
    if resumed and fsdp:
        from dlm_bench.training.parallel import load_optimizer_state
        load_optimizer_state(dlm.model, method.extra_modules, opt, state["optimizer"])
    elif resumed:
        opt.load_state_dict(state["optimizer"])
    if d.world > 1 and not fsdp:
        replicate(dlm, d, device)       # DDP wraps the policy alone
    return Run(p, d, device, dlm, lora, method, ref, opt, int(state["step"]), int(state["opt_step"]),
               control=control)


# ----------------------------------------------------------------------------- stage: rollout

@dataclass
class Batch:
    """One rank's share of a rollout batch: prepared micro-batches and what the log reports."""
    micro: list                       # (micro-batch index, prepared Rollouts)
    texts: list[list[str]]
    rewards: list[list[float]]
    nfe: int
    control: list[list[float]] = field(default_factory=list)   # the base model's rewards (control=base)


def sampler_rows(cfg: TrainConfig, group_size: int) -> int:
    """The most completions one rollout `sample` call decodes at once: a micro-batch's
    `micro_prompts` x G, cut at `rollout_chunk`."""
    return min(cfg.micro_prompts * group_size, cfg.rollout_chunk)


def rollout_seeds(cfg: TrainConfig, step: int, global_idx: list[int], G: int) -> list[int]:
    """Completion (i, j) of a rollout step draws from (seed, step, global prompt index i, j)."""
    return [derive_seed(cfg.seed, step, gi, j) for gi in global_idx for j in range(G)]


def _sample(dlm, prompts_ids, scfg, cfg: TrainConfig, step: int, global_idx: list[int], G: int):
    """G completions per prompt, one plain decode each, seeded as `rollout_seeds` (the control's decoder)."""
    from dlm_bench.sampler import sample_seeded
    return sample_seeded(dlm, [q for q in prompts_ids for _ in range(G)], scfg, rollout_seeds(cfg, step, global_idx, G),
                         cfg.rollout_chunk)


def rollout(run: Run) -> Batch:
    """This rank's micro-batches of the current step: sample, reward, build, `prepare` (no grad)."""
    from dlm_bench.training.parallel import gathered
    p, cfg = run.plan, run.cfg
    idx = step_prompts(len(p.problems), p.mcfg.rollout.batch_prompts, cfg.seed, run.step)
    run.dlm.model.eval()
    run.method.extra_modules.eval()
    out = Batch([], [], [], 0)
    with gathered(run.dlm.model):       # FSDP: sampling and `prepare` run with local forward passes
        for m in shard(p.n_micro, run.d):
            _rollout_micro(run, m, idx, out)
    return out


def _rollout_micro(run: Run, m: int, idx: list[int], out: Batch) -> None:
    """Micro-batch m into `out`: its prompts' G completions, rewards and the prepared `Rollouts`."""
    from dlm_bench.tasks import training_rewards
    p, cfg, dlm, step = run.plan, run.cfg, run.dlm, run.step
    P, G = p.mcfg.rollout.batch_prompts, p.mcfg.rollout.group_size
    gidx = list(range(m * cfg.micro_prompts, min(P, (m + 1) * cfg.micro_prompts)))
    probs = [p.problems[idx[i]] for i in gidx]
    pids = [run.prompt_ids(idx[i]) for i in gidx]
    trace = None
    if run.trajectories is not None:    # offline: the base model's stored decodes of these problems
        comps = [run.trajectories[(idx[i], j)] for i in gidx for j in range(G)]
        rewards = [c.reward for c in comps]
    else:                               # completion (i, j) seeded by (seed, step, global prompt index i, j)
        row_probs = [q for q in probs for _ in range(G)]

        def score(rows, texts):
            return training_rewards(p.task, [row_probs[r] for r in rows], texts, p.reward_kind)
        got = run.method.sample_rollouts(dlm, [q for q in pids for _ in range(G)], p.scfg,
                                         rollout_seeds(cfg, step, gidx, G), score, cfg.rollout_chunk)
        comps, rewards, trace = got.completions, got.rewards, got.trace
    texts = [c.text for c in comps]
    out.micro.append((m, prepare_micro(run, m, gidx, pids, comps, rewards, trace)))
    out.texts.append(texts)
    out.rewards.append(rewards)
    if run.control is not None:
        out.control.append(control_rewards(run, probs, pids, gidx, _sample))
    out.nfe += sum(c.nfe for c in comps)


def prepare_micro(run: Run, m: int, gidx: list[int], pids: list[list[int]], comps: list, rewards: list[float],
                  trace: dict | None = None):
    """Micro-batch m as the method sees it: prompts `pids` (global indices `gidx`), G completions each
    (`tokens` and `step_map`), their rewards and what the method recorded while sampling (`trace`);
    `prepare`d under no_grad."""
    from dlm_bench.likelihood import ScoredBatch
    from dlm_bench.methods import Rollouts
    G = run.plan.mcfg.rollout.group_size
    lengths = [getattr(c, "scored", None) or len(c.tokens) for c in comps]   # a pair scores its own tokens
    batch = ScoredBatch.build(run.dlm, [q for q in pids for _ in range(G)], [c.tokens for c in comps], lengths)
    ro = Rollouts(batch=batch, rewards=torch.tensor(rewards, dtype=torch.float32),
                  groups=torch.tensor([i for i in gidx for _ in range(G)], dtype=torch.long),
                  step_map=torch.tensor([c.step_map for c in comps], dtype=torch.long),
                  seed=derive_seed(run.cfg.seed, run.step, m, 0x5EED), trace=trace)
    with torch.no_grad():
        run.method.prepare(ro, run.dlm, run.ref)
    return ro


# ----------------------------------------------------------------------------- stage: update

def update(run: Run, batch: Batch) -> tuple[dict[str, float], float]:
    """mu passes over the (global) batch, each `minibatches` optimizer updates; returns the row-weighted
    stats of the last pass (summed over this rank's rows) and the last pre-clip gradient norm."""
    method, cfg, o = run.method, run.cfg, run.plan.mcfg.optim
    # minibatch i holds the micro-batches m with m % minibatches == i, on whichever rank they are
    minis = [[(m, ro) for m, ro in batch.micro if m % o.minibatches == i] for i in range(o.minibatches)]
    filler = batch.micro[0][1]          # a rank always holds a micro-batch (fewer are refused)
    plans = [_backward_plan(run, mb, filler) for mb in minis]
    run.dlm.model.train()
    method.extra_modules.train()
    stat_sums: dict[str, float] = {}
    norm = 0.0
    if o.reset_each_step:       # as a recipe whose every RL step is a new training job
        run.opt.state.clear()
    for j in range(o.inner_updates):
        for parts, weights, stat_w in plans:
            run.opt.zero_grad(set_to_none=True)
            for k, (m, c, ro) in enumerate(parts):
                torch.manual_seed(derive_seed(cfg.seed, run.step, j, m, c, 0xD20))   # dropout, same on any world size
                with accumulating(run.dlm.model, last=k == len(parts) - 1):
                    loss, stats = method.loss(ro, run.dlm, run.ref)
                    (loss * weights[k]).backward()
                if j == o.inner_updates - 1:
                    for key, v in stats.items():
                        if isinstance(v, (int, float)) and key != "inner_iter":
                            stat_sums[key] = stat_sums.get(key, 0.0) + stat_w[k] * float(v)
            norm = _optimizer_step(run)
            run.opt_step += 1
            method.after_update(run.opt_step, run.dlm, run.ref)
    return stat_sums, norm


def _backward_plan(run: Run, micro: list, filler) -> tuple[list, list[float], list[float]]:
    """One optimizer update's backward chunks (micro-batch, chunk, rows) with their loss weights
    (count / global count: the summed gradient is the update's whole-batch gradient) and stat weights.
    With several processes every rank runs as many chunks as the busiest one (DDP and FSDP reduce in
    the backward pass): the others add one-row chunks of `filler` at weight 0, each its own selection
    so that its use leaves the real chunks' state (e.g. mask-draw counters) untouched."""
    method, d = run.method, run.d
    parts = [(m, k, sub) for m, ro in micro for k, sub in enumerate(row_chunks(method, ro, run.cfg.micro_batch_size))]
    counts = [float(method.loss_count(sub)) for _, _, sub in parts]
    rows = [float(sub.rewards.numel()) for _, _, sub in parts]
    total, total_rows = all_sum([sum(counts), sum(rows)], d, run.device)
    scale = loss_scale(run.dlm.model, d.world)
    weights = [scale * c / total if total > 0 else 0.0 for c in counts]
    stat_w = [r / total_rows / run.plan.mcfg.optim.minibatches for r in rows]   # stats: mean over all rows
    if d.world > 1:
        extra = lockstep(len(parts), d, run.device)
        parts += [(-1, -1, method.select(filler, torch.arange(1))) for _ in range(extra)]
        weights += [0.0] * extra
        stat_w += [0.0] * extra
    return parts, weights, stat_w


def _optimizer_step(run: Run) -> float:
    """Sum gradients over ranks, clip, set the scheduled LR and step; returns the pre-clip grad norm."""
    o = run.plan.mcfg.optim
    params = run.params
    if is_sharded(run.dlm.model):      # FSDP reduced the policy's gradients; the heads are summed here
        sum_gradients(plain_params(params), run.d, run.device)
        norm = grad_norm_and_clip(params, o.max_grad_norm)
    else:
        sum_gradients(not_replicated(params, run.dlm.model), run.d, run.device)
        with_grad = [p for p in params if p.grad is not None]
        if with_grad and o.max_grad_norm:
            norm = float(torch.nn.utils.clip_grad_norm_(with_grad, o.max_grad_norm))
        elif with_grad:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in with_grad])))
        else:
            norm = 0.0
    mult = lr_multiplier(o.lr_schedule, run.opt_step, run.total_updates, warmup_updates(o, run.total_updates))
    for g in run.opt.param_groups:
        g["lr"] = g["base_lr"] * mult
    run.opt.step()
    return norm


# ----------------------------------------------------------------------------- stage: log and save

def step_metrics(run: Run, batch: Batch, stat_sums: dict, grad_norm: float, seconds: float) -> dict:
    """The step's row of log.jsonl, over all ranks."""
    G = run.plan.mcfg.rollout.group_size
    flat_r = [r for rs in batch.rewards for r in rs]
    per_group_dc = [len({t.strip() for t, r in zip(ts[g0:g0 + G], rs[g0:g0 + G]) if r >= 1.0})
                    for ts, rs in zip(batch.texts, batch.rewards) for g0 in range(0, len(ts), G)]
    stats = sum_over_ranks(stat_sums, run.d)
    n, s1, s2, dc, ng, nf = all_sum([len(flat_r), sum(flat_r), sum(r * r for r in flat_r),
                                     sum(per_group_dc), len(per_group_dc), batch.nfe], run.d, run.device)
    mean = s1 / max(n, 1)
    row = {"step": run.step, "reward_mean": round(mean, 6),
           "reward_std": round(math.sqrt(max(0.0, s2 / max(n, 1) - mean * mean)), 6),
           "distinct_correct_per_group": round(dc / max(ng, 1), 4),
           "nfe": int(nf), "nfe_per_completion": round(nf / max(n, 1), 2),
           "lr": run.opt.param_groups[0]["lr"], "grad_norm": round(grad_norm, 6),
           "seconds": round(seconds, 3)}
    if run.control is not None:
        cn, cs = all_sum([sum(len(c) for c in batch.control), sum(map(sum, batch.control))], run.d, run.device)
        row["control_reward_mean"] = round(cs / max(cn, 1), 6)
        row["reward_minus_control"] = round(mean - cs / max(cn, 1), 6)
    row.update({k: stats[k] for k in sorted(stats)})
    return row


def save(run: Run) -> None:
    """Checkpoint (atomic) and `train_result.json` of the current step; rank 0 writes, all wait."""
    cfg = run.cfg
    out = Path(cfg.out)
    model, optimizer = run.dlm, None
    if is_sharded(run.dlm.model):      # every rank takes part in gathering the whole state
        from dlm_bench.training.parallel import SavesState, full_optimizer_state, full_state
        model, optimizer = SavesState(run.dlm, full_state(run.dlm.model)), full_optimizer_state(run.dlm.model, run.method.extra_modules, run.opt)
    if run.d.main:
        checkpoint.save(out, model, {
            "step": run.step, "opt_step": run.opt_step, "optimizer_by_name": optimizer is not None,
            "optimizer": run.opt.state_dict() if optimizer is None else optimizer,
            "extra_modules": run.method.extra_modules.state_dict(), "config": dataclasses.asdict(cfg),
            # a reference the method has moved (ESPO's sync) cannot be re-made from the base model
            "reference": run.ref.model.state_dict() if run.method.reference_moved else None,
            "method_config": dataclasses.asdict(run.plan.mcfg), "base_model": cfg.model, "lora": run.lora},
            card=model_card.training_card(run))
        rec = {"method": cfg.method, "task": cfg.task, "base_model": str(Path(cfg.model).resolve()),
               "checkpoint": str((out / "checkpoint").resolve()), "lora": run.lora, "step": run.step,
               "steps": run.plan.steps, "seed": cfg.seed, "trained": True}
        write_json(out / RESULT, rec)
    run.d.barrier()


def open_log(run: Run) -> tuple[Path, tracking.Tracker]:
    """log.jsonl to append to, after dropping rows past the resumed step (they were written after the
    last checkpoint and will be written again, identically, so a reader never sees a step twice), and
    the run's trackers (`report_to`), given the resolved config."""
    out = Path(run.cfg.out)
    resolved = {"train": dataclasses.asdict(run.cfg), "method": dataclasses.asdict(run.plan.mcfg),
                "sampler": dataclasses.asdict(run.plan.scfg), "steps": run.plan.steps, "world_size": run.d.world,
                "lora": run.lora}
    write_json(out / "config.json", resolved)
    path = out / "log.jsonl"
    if path.is_file():
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= run.step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                pass                       # a torn last line of a killed run
        atomic_write(path, "".join(k + "\n" for k in keep))
    return path, tracking.Tracker(run.cfg.report_to, out, resolved, resume_step=run.step)


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Run (or resume) training; returns the final checkpoint directory (the base model for `base`)."""
    from dlm_bench.runs.locks import folder_lock
    p = plan(cfg)
    if p is None:
        return _record_base(cfg)
    d, device = init_distributed(cfg.device)
    n_micro = p.n_micro
    if n_micro < d.world:               # a rank without rows would never join the gradient all-reduce
        raise UserError(f"{d.world} processes need at least {d.world} micro-batches per step; this run has "
                        f"{n_micro} (batch_prompts / micro_prompts): raise batch_prompts or lower micro_prompts")
    with (folder_lock(cfg.out, what="training folder") if d.main else contextlib.nullcontext()):
        ckpt, state = resume(cfg, d)
        run = build(p, d, device, ckpt, state)
        offline = p.mcfg.rollout.source == "offline"       # the base model's trajectories: rollout_chunk per call
        check_fits(run, cfg.rollout_chunk if offline else sampler_rows(cfg, p.mcfg.rollout.group_size))
        if p.mcfg.rollout.source == "offline":
            from dlm_bench.training.trajectories import collect
            run.trajectories = collect(run)
        if cfg.pairs:
            run.trajectories = pairs.trajectories(run.dlm, p.problems, p.mcfg.rollout.gen_length)
        log, tracker = open_log(run) if d.main else (None, tracking.Tracker("none", cfg.out, {}))
        bar = tqdm(total=p.steps, initial=run.step, desc=f"train {cfg.method}", unit="step",
                   disable=not (progress and d.main))
        start, saved_at, dirty = time.monotonic(), (run.step if ckpt else -1), False
        try:
            while run.step < p.steps:
                if cfg.minutes is not None and time.monotonic() - start > 60 * cfg.minutes:
                    break
                t0 = time.monotonic()
                batch = rollout(run)
                dirty = True                 # from the first backward the weights no longer match `step`
                stats, norm = update(run, batch)
                run.step += 1
                dirty = False
                row = step_metrics(run, batch, stats, norm, time.monotonic() - t0)
                if d.main:
                    append_lines(log, [json.dumps(row)])
                    tracker.log(row, run.step)
                    bar.update(1)
                    bar.set_postfix(reward=f"{row['reward_mean']:.3f}", loss=f"{row.get('loss', float('nan')):.4f}")
                if cfg.save_every and run.step % cfg.save_every == 0:
                    save(run)
                    saved_at = run.step
        except KeyboardInterrupt:
            if not dirty and saved_at != run.step:
                save(run)
            elif dirty and d.main:
                print(f"interrupted inside an update: kept the checkpoint of step {saved_at}", flush=True)
            raise
        finally:
            bar.close()
            tracker.close()
        if saved_at != run.step:
            save(run)
    return Path(cfg.out) / "checkpoint"

