"""`dlm-bench memory`: the project's own code run at full size under fake tensors, stage by stage.

Training (a method that trains): `training.loop.plan` and `build` (policy, LoRA, reference, method,
AdamW; FSDP2 or DDP for a world size above 1, over a fake process group, this process as rank 0), then
`prepare_micro` and `update` on one synthetic micro-batch, twice (the first update is not the peak:
AdamW makes its moments at its first step), then one rollout sampler step with the policy as it is
after the updates (gradients and moments resident). Evaluation (`base`): the model as `passk` loads it
and one sampler step of the evaluation batch. A sampler step is `sampler.sample` stopped by its
progress hook after the first denoising step, which is the first block's full forward pass plus the
step's sampling: every later step has the same shapes.

Synthetic inputs: prompts of `prompt_length` ordinary tokens (no padding), completions of the full
window with every token valid (the most the gathered head can hold) and a decoding order per block,
rewards alternating 1, 0 so that every group has an advantage. The weights are what the model's
class initialises (`hf.weights_from_config`); the load-time probes are answered by a tiny random
model of the same code (`probe_answers`).
"""
from __future__ import annotations

import contextlib
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dlm_bench.errors import UserError
from dlm_bench.memory.fake import counting
from dlm_bench.memory.tracker import StagePeak
from dlm_bench.models.hf import weights_from_config
from dlm_bench.sampler import Completion, SamplerConfig, make_generators, sample, transfer_schedule
from dlm_bench.training.loop import Batch, TrainConfig, build, plan, prepare_micro, sampler_rows, update


@dataclass
class Measurement:
    """What one run measured: the stages in order, and what the numbers rest on."""
    title: str
    stages: list[StagePeak]
    notes: list[str] = field(default_factory=list)
    placeholders: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> StagePeak:
        return max(self.stages, key=lambda s: s.peak)

    def stage(self, prefix: str) -> StagePeak:
        return next(s for s in self.stages if s.name.startswith(prefix))


class _FirstStep(Exception):
    """Raised by the sampler's progress hook after its first step: the measurement has what it needs."""


def _stop(total: int) -> None:
    raise _FirstStep


# ----------------------------------------------------------------------------- inputs

def ordinary_ids(dlm) -> list[int]:
    """Token ids that are no special token of the tokenizer nor of the model (mask, stops, pad)."""
    special = set(dlm.tokenizer.all_special_ids) | {dlm.mask_id, dlm.pad_id, *dlm.stops()}
    return [i for i in range(min(len(dlm.tokenizer), 1 << 20)) if i not in special]


def synthetic_prompts(dlm, n: int, length: int, seed: int) -> list[list[int]]:
    ids, rng = ordinary_ids(dlm), random.Random(seed)
    return [[rng.choice(ids) for _ in range(length)] for _ in range(n)]


def synthetic_completions(dlm, n: int, scfg: SamplerConfig, seed: int) -> list[Completion]:
    """n completions filling the window, each token decoded at a step of its own block's schedule."""
    scfg = scfg.resolved()
    ids, rng = ordinary_ids(dlm), random.Random(seed)
    blocks = scfg.gen_length // scfg.block_length
    per_block = scfg.steps // blocks
    steps = [s for s, k in enumerate(transfer_schedule(scfg.block_length, per_block)) for _ in range(k)]
    out = []
    for _ in range(n):
        step_map = []
        for b in range(blocks):
            order = rng.sample(steps, len(steps))
            step_map += [b * per_block + s for s in order]
        out.append(Completion([rng.choice(ids) for _ in range(scfg.gen_length)], "", step_map, 0,
                              scfg.gen_length))
    return out


def sampler_step(dlm, rows: int, prompt_length: int, scfg: SamplerConfig, seed: int = 0) -> None:
    """`sample` over `rows` synthetic prompts, stopped after its first denoising step."""
    prompts = synthetic_prompts(dlm, rows, prompt_length, seed)
    try:
        sample(dlm, prompts, scfg, make_generators(list(range(seed, seed + rows)), dlm.device), progress=_stop)
    except _FirstStep:
        pass


# ----------------------------------------------------------------------------- load-time probes

def probe_answers(model_dir: str) -> dict:
    """What `load_model`'s probes (does the model honour left padding? can scores apply the head at the
    masked positions only?) answer for this model's code, from a tiny random model of the same code:
    they compare logits, which fake tensors do not have, and depend on the code, not the size."""
    import json

    from dlm_bench.models import families, load_model
    from dlm_bench.models.random_init import build_tiny
    model_type = str(json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "")).lower()
    family = families.by_model_type(model_type)
    with tempfile.TemporaryDirectory() as tmp:
        if family.tiny_sizes:
            path = build_tiny(model_dir, Path(tmp) / family.name)
        elif any(Path(model_dir).glob("*.safetensors")) or any(Path(model_dir).glob("*.bin")):
            path = model_dir           # weights on disk (the built-in tiny model): probe it as it is
        else:
            raise UserError(f"no tiny sizes for model type {model_type!r} (models/families.py), so the "
                            f"load-time probes cannot be answered for {model_dir}")
        dlm = load_model(str(path), device="cpu", dtype=torch.float32)
    return {"honours_padding": dlm.honours_padding, "gather_logits": dlm.gather_logits}


# ----------------------------------------------------------------------------- process group

@contextlib.contextmanager
def fake_world(world: int):
    """A fake process group of `world` ranks with this process as rank 0 (collectives return at once,
    with tensors of the right shapes), so FSDP2/DDP shard and wrap as they would on rank 0."""
    if world <= 1:
        yield
        return
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    if dist.is_initialized():
        raise UserError("a process group is already initialised; run `dlm-bench memory` without torchrun")
    dist.init_process_group(backend="fake", rank=0, world_size=world, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- what is alive

def _local(t: torch.Tensor) -> torch.Tensor:
    return getattr(t, "_local_tensor", t)          # a DTensor's shard on this rank (FSDP2)


def storage_kinds(modules, opt=None, gathered: bool = False) -> dict[int, str]:
    """{storage key: kind} for what `LiveBytes` reports at a peak: the optimizer's parameters
    (trainable; FSDP2: this rank's shards) with their gradients and state, the other parameters of
    `modules` (frozen weights; with `gathered`, FSDP2's unsharded copies of the policy's parameters,
    which stand in the modules' places while they compute)."""
    kinds: dict[int, str] = {}
    for i, m in enumerate(modules):
        for p in m.parameters():
            kinds[_local(p).untyped_storage()._cdata] = "gathered parameters" if gathered and i == 0 \
                else "frozen weights"
    for g in (opt.param_groups if opt is not None else ()):
        for p in g["params"]:
            kinds[_local(p).untyped_storage()._cdata] = "trainable parameters"
            if p.grad is not None:
                kinds[_local(p.grad).untyped_storage()._cdata] = "gradients"
    for state in (opt.state.values() if opt is not None else ()):
        for v in state.values():
            if isinstance(v, torch.Tensor):
                kinds[_local(v).untyped_storage()._cdata] = "optimizer state"
    return kinds


# ----------------------------------------------------------------------------- the two measurements

def measure_training(cfg: TrainConfig, *, prompt_length: int = 256, rows: int | None = None, world: int = 1,
                     chunks: int | None = None, fake: bool = True, probes: dict | None = None,
                     progress=None) -> Measurement:
    """Build, prepare + update twice, then one rollout sampler step, each a counted stage.
    `rows`: completions in the sampler call (default: the loop's, `sampler_rows`). Each measured
    update is one optimizer step (the first of the mu passes; the others repeat its shapes) over
    the micro-batch's backward chunks, the first `chunks` of them if given (from the second chunk on,
    each repeats the one before with the gradients already accumulated)."""
    from dlm_bench.distributed import Dist
    from dlm_bench.training.parallel import gathered, is_sharded
    cfg.dtype, cfg.device = cfg.dtype or "bfloat16", "cpu"    # bfloat16: what `load_model` picks on a GPU
    p = plan(cfg, problems=[None])
    if p is None:
        raise UserError(f"method {cfg.method!r} does not train; measure evaluation with --method base")
    _refuse_ddp(cfg, p.mcfg, world)
    probes = probes if probes is not None else probe_answers(cfg.model)
    G, n_prompts = p.mcfg.rollout.group_size, min(cfg.micro_prompts, p.mcfg.rollout.batch_prompts)
    rows = rows or sampler_rows(cfg, G)
    tick = progress or (lambda name: None)
    with fake_world(world), counting(fake) as (tracker, shadows):
        tick("build")
        with tracker.stage("build"), weights_from_config(probes):
            run = build(p, Dist(0, world, 0), torch.device("cpu"), None, {"step": 0, "opt_step": 0})
        ref_model = getattr(run.ref, "model", None) if run.ref is not None and not run.lora else None
        modules = [run.dlm.model, run.method.extra_modules] + ([ref_model] if ref_model is not None else [])
        sharded = is_sharded(run.dlm.model)
        built = storage_kinds(modules, run.opt)      # kept: a module swapped out for a moment stays named
        tracker.kinds = lambda: {**built, **storage_kinds(modules, run.opt, gathered=sharded)}
        pids = synthetic_prompts(run.dlm, n_prompts, prompt_length, seed=1)
        comps = synthetic_completions(run.dlm, n_prompts * G, p.scfg, seed=2)
        rewards = [float(i % 2 == 0) for i in range(n_prompts * G)]
        for i, what in ((1, "first: AdamW has no moments yet"), (2, "steady state")):
            run.dlm.model.eval()
            run.method.extra_modules.eval()
            tick(f"prepare {i}")
            with tracker.stage(f"prepare {i}"), gathered(run.dlm.model):
                ro = prepare_micro(run, 0, list(range(n_prompts)), pids, comps, rewards)
            tick(f"update {i}")
            with tracker.stage(f"update {i} ({what})"), _one_pass(p.mcfg.optim):
                update(run, Batch([(0, _first_chunks(run, ro, chunks))], [], [], 0))
        run.dlm.model.eval()
        tick("rollout sampler step")
        with tracker.stage(f"rollout sampler step ({rows} rows, steady state)"), gathered(run.dlm.model):
            sampler_step(run.dlm, rows, prompt_length, p.scfg)
    notes = _training_notes(run, p, cfg, n_prompts, rows, prompt_length, world, probes)
    return Measurement(f"{cfg.method} on {cfg.model}", tracker.stages, notes,
                       dict(shadows.placeholders) if shadows else {})


def measure_eval(model: str, scfg: SamplerConfig, *, rows: int = 16, prompt_length: int = 256,
                 dtype: torch.dtype = torch.bfloat16, fake: bool = True, probes: dict | None = None,
                 progress=None) -> Measurement:
    """The model as evaluation loads it, then one sampler step of `rows` prompts."""
    from dlm_bench.models import load_model
    probes = probes if probes is not None else probe_answers(model)
    tick = progress or (lambda name: None)
    with counting(fake) as (tracker, shadows):
        tick("load")
        with tracker.stage("load"), weights_from_config(probes):
            dlm = load_model(model, dtype=dtype, device="cpu")
        built = storage_kinds([dlm.model])
        tracker.kinds = lambda: {**built, **storage_kinds([dlm.model])}
        tick("eval sampler step")
        with tracker.stage(f"eval sampler step ({rows} rows)"):
            sampler_step(dlm, rows, prompt_length, scfg)
    notes = [f"{dlm.num_parameters() / 1e9:.2f} B parameters in {str(dtype).replace('torch.', '')}; "
             f"P {prompt_length} + G {scfg.gen_length}, block {scfg.block_length}, T {scfg.temperature:g}, "
             f"noise {scfg.noise_dtype}", _probe_note(probes)]
    return Measurement(f"evaluation of {model}", tracker.stages, notes,
                       dict(shadows.placeholders) if shadows else {})


def _refuse_ddp(cfg: TrainConfig, mcfg, world: int) -> None:
    """DDP's C++ reducer reads parameter data at construction, which fake tensors do not have."""
    from dlm_bench.training.policy import lora_spec
    lora = lora_spec(mcfg.lora) is not None
    if world > 1 and (cfg.parallel == "ddp" or (cfg.parallel == "auto" and lora)):
        raise UserError("DDP (LoRA under torchrun) cannot run under fake tensors; a DDP rank holds what one process "
                        "holds plus DDP's gradient buckets (one more copy of the trainable gradients): measure "
                        "--world-size 1, or --set parallel=fsdp")


def _first_chunks(run, ro, chunks: int | None):
    """The micro-batch cut to its first `chunks` backward chunks (the method's own row selection)."""
    n, size = ro.rewards.numel(), run.cfg.micro_batch_size
    if chunks is None or chunks * size >= n:
        return ro
    return run.method.select(ro, torch.arange(chunks * size))


@contextlib.contextmanager
def _one_pass(optim):
    """`update` makes one pass over the batch (mu = 1): `prepare` has already made what later passes
    read (old scores for mu > 1), and every pass has the same shapes."""
    was = optim.inner_updates
    optim.inner_updates = 1
    try:
        yield
    finally:
        optim.inner_updates = was


def _probe_note(probes: dict) -> str:
    yes = {True: "yes", False: "no"}
    return (f"load-time probes (a tiny random model of the same code): honours left padding "
            f"{yes[probes['honours_padding']]}, scores apply the head at masked positions only "
            f"{yes[probes['gather_logits']]}")


def _training_notes(run, p, cfg: TrainConfig, n_prompts: int, rows: int, prompt_length: int, world: int,
                    probes: dict) -> list[str]:
    trainable = sum(q.numel() for q in run.params)
    lora = p.mcfg.lora
    how = f"LoRA r {lora.r} (adapters in fp32, peft's default)" if run.lora else "full fine-tuning"
    par = "" if world == 1 else f"; rank 0 of {world} (FSDP2 over a fake process group; DDP is refused)"
    return [f"{run.dlm.num_parameters() / 1e9:.2f} B parameters ({cfg.dtype}), {how}: {trainable / 1e6:.1f} M "
            f"trainable{par}",
            f"one micro-batch of {n_prompts} prompt(s) x G {p.mcfg.rollout.group_size}, P {prompt_length} + "
            f"G {p.scfg.gen_length}, backward chunks of {cfg.micro_batch_size} completions, gradient "
            f"checkpointing {'on' if run.dlm.extra.get('gradient_checkpointing') else 'off'}; sampler call "
            f"{rows} rows, T {p.scfg.temperature:g}, noise {p.scfg.noise_dtype}",
            _probe_note(probes)]
