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

Data parallel (torchrun, WORLD_SIZE > 1): each rank takes a contiguous share of the micro-batches,
gradients are summed across ranks (all_reduce), so 1 and N processes make the same update up to float
summation order. Only rank 0 writes logs and checkpoints.

Checkpoints are atomic (`dlm_bench.checkpoint`) and hold the model (the adapter under LoRA), the
optimizer, the method's own modules and the step; all randomness derives from (seed, step, ...), so a
resumed run continues exactly as an uninterrupted one. Ctrl-C saves unless it lands inside an update.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dlm_bench import checkpoint
from dlm_bench.errors import UserError

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
RESULT = "train_result.json"


@dataclass
class TrainConfig:
    method: str = "espo"
    task: str = "testbed"
    model: str = ""                       # base model directory (Hugging Face layout)
    out: str = "results/train"
    seed: int = 0
    train_steps: int | None = None        # overrides the method's train_steps (None: the method's)
    overrides: dict = field(default_factory=dict)   # method Config fields (lr, group_size, beta, ...)
    sampler: dict = field(default_factory=dict)     # extra SamplerConfig fields (remasking, threshold, ...)
    split: str | None = None              # training split (None: the task's train_split, else "train")
    save_every: int = 50                  # optimizer steps between checkpoints (0: only at the end)
    data_dir: str | None = None
    device: str | None = None             # None: cuda if available, else cpu (per rank under torchrun)
    dtype: str | None = None              # None: bf16 on GPU, fp32 on CPU
    rollout_chunk: int = 64               # completions per sampler call (memory only; no effect on results)
    micro_prompts: int = 1                # prompts (whole groups) per rollout/prepare micro-batch
    micro_batch_size: int = 4             # completions (each with all its mask draws) per backward
    minutes: float | None = None          # stop (and save) after this much wall-clock time
    gradient_checkpointing: bool | None = None   # None: on for models other than the built-in tiny one

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

def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def step_prompts(n_problems: int, batch: int, seed: int, step: int) -> list[int]:
    """Problem indices of `step`: consecutive slices of a per-epoch shuffle seeded by (seed, epoch)."""
    out, pos = [], step * batch
    while len(out) < batch:
        epoch, off = divmod(pos, n_problems)
        perm = list(range(n_problems))
        random.Random(derive_seed(seed, epoch, 7)).shuffle(perm)
        take = min(batch - len(out), n_problems - off)
        out += perm[off:off + take]
        pos += take
    return out


def lr_multiplier(schedule: str, step: int, total: int, warmup: int) -> float:
    """Hugging Face `get_scheduler` semantics at optimizer step `step` (0-based)."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def loss_count(method, rollouts) -> float:
    """How many terms the method's loss averages over for this micro-batch: micro-batch m gets weight
    count_m / sum(count), which makes the summed gradient equal to that of one loss over the whole
    batch. A method may define `loss_count(rollouts)` itself; the default is rows (mean over rows)."""
    if hasattr(method, "loss_count"):
        return float(method.loss_count(rollouts))
    cfg = method.config
    if method.name == "justgrpo":
        norm = getattr(cfg, "loss_norm", "seq_mean")
        if norm == "justgrpo":       # sum / (window * #rows with nonzero advantage)
            return float((rollouts.cache["adv"] != 0).sum())
        if norm == "token_mean":
            return float(rollouts.batch.valid.sum())
    return float(rollouts.rewards.numel())


def row_chunks(method, rollouts, size: int) -> list:
    """A prepared micro-batch cut into backward chunks of at most `size` completions (`method.select`).
    Everything the loss normalises by was computed in `prepare` on the whole batch, and `loss_count`
    weights each chunk, so the summed gradient equals one backward over the whole batch."""
    n = rollouts.rewards.numel()
    if n <= size:
        return [rollouts]
    return [method.select(rollouts, torch.arange(s, min(n, s + size))) for s in range(0, n, size)]


def method_config(cls, task: str, overrides: dict):
    from dlm_bench.methods import make_config
    overrides = dict(overrides)
    defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    for k, v in overrides.items():      # YAML/CLI spellings: "1e-4" -> 1e-4, [0.9, 0.99] -> tuple
        d = defaults.get(k)
        if isinstance(v, list) and isinstance(d, tuple):
            overrides[k] = tuple(v)
        elif isinstance(d, float) and isinstance(v, (str, int)) and not isinstance(v, bool):
            try:
                overrides[k] = float(v)
            except ValueError:
                raise UserError(f"{cls.name}: {k} must be a number, got {v!r}") from None
    if hasattr(cls, "config_for"):
        return cls.config_for(task, overrides)
    return make_config(cls, overrides)


# ----------------------------------------------------------------------------- distribution

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed(device: str | None) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), dev


def shard(n: int, d: Dist) -> range:
    """Contiguous share of n items for this rank (the first n % world ranks get one more)."""
    base, rem = divmod(n, d.world)
    lo = d.rank * base + min(d.rank, rem)
    return range(lo, lo + base + (1 if d.rank < rem else 0))


def all_sum(values: list[float], d: Dist, device) -> list[float]:
    if d.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- models

class AdapterDisabled:
    """The frozen reference under LoRA: the policy with its adapter switched off (peft disable_adapter)."""

    def __init__(self, dlm):
        self._dlm = dlm

    def __getattr__(self, name):
        return getattr(self._dlm, name)

    def logits(self, *a, **k):
        with self._dlm.model.disable_adapter():
            return self._dlm.logits(*a, **k)

    def hidden(self, *a, **k):
        with self._dlm.model.disable_adapter():
            return self._dlm.hidden(*a, **k)


def _lora_spec(mcfg):
    from dlm_bench.models import LoraSpec
    r = int(getattr(mcfg, "lora_r", 0) or 0)
    if r <= 0:
        return None
    return LoraSpec(r=r, alpha=int(getattr(mcfg, "lora_alpha", r) or r),
                    dropout=float(getattr(mcfg, "lora_dropout", 0.0) or 0.0))


def _load_policy(cfg: TrainConfig, mcfg, device, ckpt: Path | None):
    """(policy, lora?) from the base model (+ fresh adapter), or from a checkpoint when resuming."""
    from dlm_bench.models import load_model
    lora = _lora_spec(mcfg)
    torch.manual_seed(derive_seed(cfg.seed, 0xADA))      # same fresh adapter on every rank
    if ckpt is None or lora is not None:
        dlm = load_model(cfg.model, lora=lora, dtype=cfg.dtype, device=device)
    else:
        dlm = load_model(str(ckpt), dtype=cfg.dtype, device=device)
    if ckpt is not None and lora is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        f = ckpt / "adapter_model.safetensors"
        if not f.is_file():
            raise UserError(f"{ckpt} has no adapter_model.safetensors to resume the LoRA run from")
        set_peft_model_state_dict(dlm.model, load_file(str(f), device=str(device)))
    dlm.path = cfg.model
    return dlm, lora is not None


def _reference(cfg: TrainConfig, policy, lora: bool, resumed: bool):
    import copy
    if lora:
        return AdapterDisabled(policy)
    if resumed:       # the policy has moved: the reference is the base model as loaded
        from dlm_bench.models import load_model
        ref = load_model(cfg.model, dtype=cfg.dtype, device=policy.device)
    else:
        ref = dataclasses.replace(policy, model=copy.deepcopy(policy.model))
    ref.model.eval()
    for p in ref.model.parameters():
        p.requires_grad_(False)
    return ref


# ----------------------------------------------------------------------------- the loop

def _identity(config: dict) -> dict:
    """Settings a resumed run must share (its length, budget, checkpointing and device may change)."""
    return {k: v for k, v in config.items()
            if k not in ("train_steps", "save_every", "minutes", "device", "rollout_chunk", "out",
                         "gradient_checkpointing")}


def _flat(config: dict) -> dict:
    """{"overrides": {"lr": 1}} -> {"overrides.lr": 1}: a changed setting is named by its own key."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _num_steps(cfg: TrainConfig, mcfg, n_problems: int) -> int:
    if cfg.train_steps is not None:
        return cfg.train_steps
    if getattr(mcfg, "train_steps", None):
        return int(mcfg.train_steps)
    return max(1, math.ceil(n_problems / mcfg.batch_prompts))      # one pass over the split


def _sampler_config(cfg: TrainConfig, m, rollout_order: str):
    from dlm_bench.checks import finite
    from dlm_bench.sampler import SamplerConfig
    finite([m.temperature], "temperature")
    order = "left_to_right" if rollout_order == "left_to_right" else "diffusion"
    scfg = SamplerConfig(gen_length=m.gen_length, block_length=m.block_length, steps=m.steps,
                         temperature=m.temperature, order=order, **cfg.sampler)
    scfg.resolved()                      # validate now, not at the first rollout
    return scfg


def _record_base(cfg: TrainConfig) -> Path:
    if not Path(cfg.model).is_dir():
        raise UserError(f"model directory {cfg.model!r} does not exist")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = {"method": "base", "task": cfg.task, "model": str(Path(cfg.model).resolve()), "trained": False}
    tmp = out / f".{RESULT}.tmp"
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    os.replace(tmp, out / RESULT)
    return Path(cfg.model)


def _rollout(dlm, prompts_ids, scfg, cfg: TrainConfig, step: int, global_idx: list[int], G: int):
    """G completions per prompt; completion (i, j) seeded by (seed, step, global prompt index i, j)."""
    from dlm_bench.sampler import make_generators, sample
    rows = [(p, derive_seed(cfg.seed, step, gi, j)) for p, gi in zip(prompts_ids, global_idx) for j in range(G)]
    out = []
    for s in range(0, len(rows), cfg.rollout_chunk):
        chunk = rows[s:s + cfg.rollout_chunk]
        out += sample(dlm, [r[0] for r in chunk], scfg, make_generators([r[1] for r in chunk], dlm.device))
    return out


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Run (or resume) training; returns the final checkpoint directory (the base model for `base`)."""
    from dlm_bench.likelihood import ScoredBatch
    from dlm_bench.methods import Rollouts, get_method
    from dlm_bench.tasks import get_task

    cfg.validate()
    cls = get_method(cfg.method)
    mcfg = method_config(cls, cfg.task, cfg.overrides)
    task = get_task(cfg.task, data_dir=cfg.data_dir)
    if not cls.trains:
        return _record_base(cfg)
    sched = getattr(mcfg, "lr_schedule", "constant")
    if sched not in SCHEDULES:
        raise UserError(f"lr_schedule must be one of {SCHEDULES}, got {sched!r}")
    split = cfg.split or getattr(task, "train_split", None) or "train"
    try:
        problems = task.load(split)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"task {cfg.task!r} split {split!r}: {e}") from e
    if not problems:
        raise UserError(f"task {cfg.task!r} split {split!r} is empty")
    P, G = int(mcfg.batch_prompts), int(mcfg.group_size)
    if P <= 0 or G <= 0 or mcfg.inner_updates < 0:
        raise UserError(f"batch_prompts and group_size must be positive, got {P} and {G}")
    mu = max(1, int(mcfg.inner_updates))
    _sampler_config(cfg, mcfg, cls.rollout_order)        # block length, steps, temperature: before loading

    d, device = init_distributed(cfg.device)
    out = Path(cfg.out)
    resumed = checkpoint.load_state(out) if d.main else None
    d.barrier()
    if not d.main:
        resumed = checkpoint.load_state(out)
    state = resumed[1] if resumed else {"step": 0, "opt_step": 0}
    config_dict = dataclasses.asdict(cfg)
    if resumed and _identity(state["config"]) != _identity(config_dict):
        was, now = _flat(_identity(state["config"])), _flat(_identity(config_dict))
        diff = "; ".join(f"{k}: {was.get(k)!r} there, {now.get(k)!r} now"
                         for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
        raise UserError(f"{out} holds a run with other settings ({diff}); use a new --out or the same settings")

    dlm, lora = _load_policy(cfg, mcfg, device, resumed[0] if resumed else None)
    dlm.bound_memory(cfg.gradient_checkpointing, cfg.micro_batch_size)     # memory only (docs/memory.md)
    torch.manual_seed(derive_seed(cfg.seed, 0x2E7))       # method modules: same init on every rank
    method = cls(mcfg, policy=dlm)
    # The instance decides: some methods need a reference only for some settings (TraceRL's KL anchor).
    ref = _reference(cfg, dlm, lora, bool(resumed)) if method.needs_reference else None
    method.extra_modules.to(device)
    if next(dlm.model.parameters()).dtype == torch.float64:     # an exact-arithmetic run: heads too
        method.extra_modules.double()
    if resumed and state.get("extra_modules"):
        method.extra_modules.load_state_dict(state["extra_modules"])
    scfg = _sampler_config(cfg, method.config, method.rollout_order)

    policy_params = [p for p in dlm.model.parameters() if p.requires_grad]
    groups = [{"params": policy_params, "lr": mcfg.lr, "weight_decay": mcfg.weight_decay}]
    groups += method.param_groups()
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, lr=mcfg.lr, betas=tuple(mcfg.adam_betas), weight_decay=mcfg.weight_decay)
    if resumed:
        opt.load_state_dict(state["optimizer"])
    params = [p for g in opt.param_groups for p in g["params"]]
    if d.world > 1 and not resumed:     # belt and braces: identical start on every rank
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, 0)

    steps = _num_steps(cfg, mcfg, len(problems))
    total_updates = steps * mu
    warmup = math.ceil(getattr(mcfg, "warmup_ratio", 0.0) * total_updates)
    prompt_cache: dict[int, list[int]] = {}
    step, opt_step = int(state["step"]), int(state["opt_step"])
    start = time.monotonic()
    log = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(
            {"train": config_dict, "method": dataclasses.asdict(mcfg), "sampler": dataclasses.asdict(scfg),
             "steps": steps, "world_size": d.world, "lora": lora}, indent=2, default=str) + "\n")
        log = open(out / "log.jsonl", "a")
    bar = tqdm(total=steps, initial=step, desc=f"train {cfg.method}", disable=not (progress and d.main), unit="step")
    dirty = False       # inside an update: the weights no longer match `step`

    def save():
        if d.main:
            checkpoint.save(out, dlm, {"step": step, "opt_step": opt_step, "optimizer": opt.state_dict(),
                                       "extra_modules": method.extra_modules.state_dict(), "config": config_dict,
                                       "method_config": dataclasses.asdict(mcfg), "base_model": cfg.model,
                                       "lora": lora})
            rec = {"method": cfg.method, "task": cfg.task, "base_model": str(Path(cfg.model).resolve()),
                   "checkpoint": str((out / "checkpoint").resolve()), "lora": lora, "step": step,
                   "steps": steps, "trained": True}
            (out / f".{RESULT}.tmp").write_text(json.dumps(rec, indent=2) + "\n")
            os.replace(out / f".{RESULT}.tmp", out / RESULT)
        d.barrier()

    saved_at = step if resumed else -1
    try:
        while step < steps:
            if cfg.minutes is not None and time.monotonic() - start > 60 * cfg.minutes:
                break
            t0 = time.monotonic()
            idx = step_prompts(len(problems), P, cfg.seed, step)
            n_micro = math.ceil(P / cfg.micro_prompts)
            mine = shard(n_micro, d)
            # ---- rollouts for this rank's micro-batches
            dlm.model.eval()
            method.extra_modules.eval()
            micro, texts_by, rewards_by, nfe = [], [], [], 0
            for m in mine:
                gidx = list(range(m * cfg.micro_prompts, min(P, (m + 1) * cfg.micro_prompts)))
                probs = [problems[idx[i]] for i in gidx]
                pids = []
                for i in gidx:
                    if idx[i] not in prompt_cache:
                        prompt_cache[idx[i]] = dlm.prompt_ids(task.prompt(problems[idx[i]]))
                    pids.append(prompt_cache[idx[i]])
                comps = _rollout(dlm, pids, scfg, cfg, step, gidx, G)
                texts = [c.text for c in comps]
                rewards = task.rewards([p for p in probs for _ in range(G)], texts)
                batch = ScoredBatch.build(dlm, [p for p in pids for _ in range(G)], [c.tokens for c in comps])
                ro = Rollouts(batch=batch, rewards=torch.tensor(rewards, dtype=torch.float32),
                              groups=torch.tensor([i for i in gidx for _ in range(G)], dtype=torch.long),
                              step_map=torch.tensor([c.step_map for c in comps], dtype=torch.long),
                              seed=derive_seed(cfg.seed, step, m, 0x5EED))
                with torch.no_grad():
                    method.prepare(ro, dlm, ref)
                micro.append(ro)
                texts_by.append(texts)
                rewards_by.append(rewards)
                nfe += sum(c.nfe for c in comps)
            parts = [(m, k, sub) for m, ro in zip(mine, micro)
                     for k, sub in enumerate(row_chunks(method, ro, cfg.micro_batch_size))]
            counts = [loss_count(method, sub) for _, _, sub in parts]
            rows = [float(sub.rewards.numel()) for _, _, sub in parts]
            total, total_rows = all_sum([sum(counts), sum(rows)], d, device)
            weights = [c / total if total > 0 else 0.0 for c in counts]     # loss weights
            stat_w = [r / total_rows for r in rows]                          # stats: mean over rows
            # ---- mu inner updates, each over the whole (global) batch
            dlm.model.train()
            method.extra_modules.train()
            stat_sums: dict[str, float] = {}
            grad_norms = []
            for j in range(mu):
                opt.zero_grad(set_to_none=True)
                for k, (m, c, ro) in enumerate(parts):
                    torch.manual_seed(derive_seed(cfg.seed, step, j, m, c, 0xD20))   # dropout, same on any world size
                    loss, stats = method.loss(ro, dlm, ref)
                    dirty = True
                    (loss * weights[k]).backward()
                    if j == mu - 1:
                        for key, v in stats.items():
                            if isinstance(v, (int, float)) and key != "inner_iter":
                                stat_sums[key] = stat_sums.get(key, 0.0) + stat_w[k] * float(v)
                grad_norms.append(_sync_and_step(opt, params, mcfg, d, device, opt_step, total_updates, warmup, sched))
                opt_step += 1
            step += 1
            dirty = False
            # ---- metrics (global)
            flat_r = [r for rs in rewards_by for r in rs]
            per_group_dc = []
            for ts, rs in zip(texts_by, rewards_by):
                for g0 in range(0, len(ts), G):
                    per_group_dc.append(len({t.strip() for t, r in zip(ts[g0:g0 + G], rs[g0:g0 + G]) if r >= 1.0}))
            keys = sorted(stat_sums)
            if d.world > 1:
                gathered = [None] * d.world
                torch.distributed.all_gather_object(gathered, stat_sums)
                keys = sorted({k for s in gathered for k in s})
                stat_vals = [sum(s.get(k, 0.0) for s in gathered) for k in keys]
            else:
                stat_vals = [stat_sums[k] for k in keys]
            n, s1, s2, dc, ng, nf = all_sum([len(flat_r), sum(flat_r), sum(r * r for r in flat_r),
                                             sum(per_group_dc), len(per_group_dc), nfe], d, device)
            mean = s1 / max(n, 1)
            row = {"step": step, "reward_mean": round(mean, 6),
                   "reward_std": round(math.sqrt(max(0.0, s2 / max(n, 1) - mean * mean)), 6),
                   "distinct_correct_per_group": round(dc / max(ng, 1), 4),
                   "nfe": int(nf), "nfe_per_completion": round(nf / max(n, 1), 2),
                   "lr": opt.param_groups[0]["lr"], "grad_norm": round(grad_norms[-1], 6),
                   "seconds": round(time.monotonic() - t0, 3)}
            row.update({k: v for k, v in zip(keys, stat_vals)})
            if d.main:
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(reward=f"{mean:.3f}", loss=f"{row.get('loss', float('nan')):.4f}")
            if cfg.save_every and step % cfg.save_every == 0:
                save()
                saved_at = step
    except KeyboardInterrupt:
        if not dirty and saved_at != step:
            save()
        elif dirty and d.main:
            print(f"interrupted inside an update: kept the checkpoint of step {saved_at}", flush=True)
        raise
    finally:
        if log is not None:
            log.close()
        bar.close()
    if saved_at != step:
        save()
    return out / "checkpoint"


def _sync_and_step(opt, params, mcfg, d: Dist, device, opt_step, total_updates, warmup, sched) -> float:
    """Sum gradients over ranks, clip, set the scheduled LR and step; returns the pre-clip grad norm."""
    if d.world > 1:
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MAX)
        for p, h in zip(params, has.tolist()):
            if h:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
    with_grad = [p for p in params if p.grad is not None]
    clip = getattr(mcfg, "max_grad_norm", None)
    if with_grad and clip:
        norm = float(torch.nn.utils.clip_grad_norm_(with_grad, clip))
    elif with_grad:
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in with_grad])))
    else:
        norm = 0.0
    mult = lr_multiplier(sched, opt_step, total_updates, warmup)
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * mult
    opt.step()
    return norm
