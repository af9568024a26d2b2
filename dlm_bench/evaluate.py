"""Pass@k sweeps: (model, task) x temperature x length x n samples -> generations -> grades -> records.

Each cell (temperature, gen_length) has a resolved config (model identity, task, split, prompt
template, sampler settings, base seed, grader version and answer mode) whose stable hash goes on every
record. The seed of sample s of problem p is hash(sampling hash, p, s) -> 63-bit int, where the
sampling hash leaves the grader out (a grader change re-grades the same samples), so records do not
depend on batch size, rank
count or how often the run was killed and resumed. Records go through `dlm_bench.runs.store`; the run ends
with `results.json`: Pass@k per cell (via `dlm_bench.stats.metrics`), mean NFE and completion length.

torchrun: with WORLD_SIZE > 1 rank r takes problems r::world and writes its own shard; after a
barrier rank 0 merges the shards and writes the results.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from dlm_bench.checks import TRAIN_RESULT, model_weights
from dlm_bench.errors import UserError
from dlm_bench.runs.locks import folder_lock
from dlm_bench.sampler import SamplerConfig
from dlm_bench.runs.store import Store
from dlm_bench.runs.files import write_json

HASH_LEN = 16
_FINGERPRINT_BYTES = 1 << 20


@dataclass(frozen=True)
class SweepConfig:
    model: str                                  # local Hugging Face model directory
    method: str                                 # label recorded as `method` (e.g. "base", "espo")
    task: str
    ks: tuple[int, ...] = (1, 5, 16)
    n: int = 16                                 # samples per problem
    temperatures: tuple[float, ...] = (0.3, 0.6, 0.9)
    lengths: tuple[int, ...] = (256, 512)
    block_length: int = 32                      # clamped to gen_length
    steps: int | None = None                    # None: steps_per_token * gen_length
    steps_per_token: float = 1.0
    remasking: str = "low_confidence"
    # 32: the most rows whose sampler call fits 80 GB on LLaDA-8B and Dream-7B at the longest prompt of
    # the paper's tasks (MBPP, 3,829 tokens) + 512 + a block of 32 (docs/memory.md: per row (width + block)
    # x vocab x 2 B, measured by `dlm-bench memory`; Dream: 1.24 GiB/row, 45 rows; LLaDA: 53 rows)
    batch_size: int = 32
    seed: int = 0                               # base seed, part of the config hash
    out: str = "results/passk"
    data_dir: str | None = None
    limit: int | None = None                    # first N problems (quick runs)
    split: str | None = None                    # default: the task's eval split
    device: str | None = None
    answer_mode: str = "flexible"               # "strict": only the answer form the prompt asks for
    threshold: float | None = None              # parallel decoding threshold (None: the fixed schedule)
    cache: str = "none"                         # block KV cache: none | prefix | dual
    noise_dtype: str = "float64"                # Gumbel noise precision (hashed only when not float64)
    memory_check: bool = True                   # on a GPU, refuse a batch predicted not to fit (models/footprint.py)
    stop_at_eos: bool = True                    # False: decode past end-of-text (methods whose rollouts do)

    def validated(self) -> "SweepConfig":
        ks = tuple(sorted({int(k) for k in self.ks}))
        temps = tuple(float(t) for t in self.temperatures)
        lengths = tuple(int(x) for x in self.lengths)
        if not ks or ks[0] < 1:
            raise UserError(f"k values must be positive integers, got {list(self.ks)}")
        if self.n < 1:
            raise UserError(f"n must be >= 1, got {self.n}")
        if ks[-1] > self.n:
            raise UserError(f"k={ks[-1]} needs at least {ks[-1]} samples per problem; n is {self.n}")
        if not temps or any(not t >= 0 or t == float("inf") for t in temps):  # nan and inf too
            raise UserError(f"temperatures must be a non-empty list of finite values >= 0, got {list(temps)}")
        if not lengths or any(x < 1 for x in lengths):
            raise UserError(f"lengths must be a non-empty list of positive integers, got {list(lengths)}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be >= 1, got {self.limit}")
        if self.steps is None and not 0 < self.steps_per_token < float("inf"):
            raise UserError(f"steps per token must be > 0, got {self.steps_per_token}")
        if len(set(temps)) != len(temps) or len(set(lengths)) != len(lengths):
            raise UserError("temperatures and lengths must not repeat")
        out = replace(self, ks=ks, temperatures=temps, lengths=lengths)
        for t in temps:
            for g in lengths:
                out.sampler(t, g)  # raises UserError on an impossible block/steps combination
        return out

    def sampler(self, temperature: float, gen_length: int) -> SamplerConfig:
        steps = self.steps if self.steps is not None else max(1, round(self.steps_per_token * gen_length))
        cfg = SamplerConfig(gen_length=gen_length, block_length=min(self.block_length, gen_length),
                            steps=steps, temperature=float(temperature), remasking=self.remasking,
                            threshold=self.threshold, cache=self.cache, noise_dtype=self.noise_dtype,
                            stop_at_eos=self.stop_at_eos)
        return cfg.resolved()


# --------------------------------------------------------------------------- the rollout decoder

DECODERS = ("protocol", "rollout")       # a sweep's own settings, or the decoder the model was trained with


@dataclass(frozen=True)
class Decoder:
    """How a training run decoded its rollouts, as sweep settings (one temperature, one length)."""
    name: str                   # a folder name: l2r-T1-L12, b12-T0.6-L12, ...
    description: str            # for people: "left-to-right, T = 1, 12 tokens"
    temperature: float
    gen_length: int
    block_length: int
    steps: int
    remasking: str = "low_confidence"
    noise_dtype: str = "float64"
    stop_at_eos: bool = True


def decoder_of(sampler: SamplerConfig) -> Decoder:
    """The sweep settings that decode exactly as `sampler` (left-to-right order is LLaDA decoding
    with blocks of one token, one step each); sampler features a sweep lacks are refused."""
    r = sampler.resolved()
    odd = {k: v for k, v in (("cfg_scale", r.cfg_scale), ("logits_eos_inf", r.logits_eos_inf),
                             ("confidence_eos_eot_inf", r.confidence_eos_eot_inf), ("threshold", r.threshold),
                             ("cache", r.cache if r.cache != "none" else None)) if v}
    if odd:
        raise UserError(f"the rollout decoder uses {odd}, which a Pass@k sweep does not reproduce")
    l2r = r.block_length == 1 and r.steps == r.gen_length
    order = "l2r" if l2r else f"b{r.block_length}" + ("" if r.steps == r.gen_length else f"-s{r.steps}")
    extra = [x for x in (r.remasking if r.remasking != "low_confidence" else "",
                         r.noise_dtype if r.noise_dtype != "float64" else "", "" if r.stop_at_eos else "pads") if x]
    name = "-".join([order, f"T{r.temperature:g}", f"L{r.gen_length}", *extra])
    what = ("left-to-right" if l2r else f"blocks of {r.block_length}" if r.block_length < r.gen_length
            else "one block") + ("" if l2r else f", {r.remasking.replace('_', '-')} order")
    return Decoder(name, f"{what}, T = {r.temperature:g}, {r.gen_length} tokens, {r.steps} steps"
                   + "".join(f", {x}" for x in extra), r.temperature, r.gen_length, r.block_length, r.steps,
                   r.remasking, r.noise_dtype, r.stop_at_eos)


def rollout_decoder(run: str) -> Decoder:
    """The decoder of a training run's rollouts, read from its resolved config (RUN/config.json);
    `run` is the run folder or its checkpoint."""
    folder = Path(run)
    if not (folder / TRAIN_RESULT).is_file() and (folder.parent / TRAIN_RESULT).is_file():
        folder = folder.parent          # the run's checkpoint (its config.json is the model's)
    path = folder / "config.json"
    try:
        sampler = json.loads(path.read_text())["sampler"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{str(run)!r} is not a dlm-bench training run (no {path} with its rollout sampler); "
                        "the rollout decoder is read from the run a model was trained in") from None
    known = {f.name for f in fields(SamplerConfig)}
    return decoder_of(SamplerConfig(**{k: v for k, v in sampler.items() if k in known}))


def with_decoder(cfg: SweepConfig, dec: Decoder) -> SweepConfig:
    """`cfg` decoding with `dec` (its one temperature and length) instead of its own sampler settings."""
    return replace(cfg, temperatures=(dec.temperature,), lengths=(dec.gen_length,), block_length=dec.block_length,
                   steps=dec.steps, remasking=dec.remasking, noise_dtype=dec.noise_dtype,
                   stop_at_eos=dec.stop_at_eos, threshold=None, cache="none")


# --------------------------------------------------------------------------- hashes and seeds

# the one config hash and the per-sample seed live in the config layer
from dlm_bench.config import sample_seed, stable_hash  # noqa: E402,F401


def prompt_hash(token_ids: list[int]) -> str:
    return stable_hash([int(t) for t in token_ids])


def model_fingerprint(path: str) -> dict:
    """Identity of a model directory by content, not by path: config and tokenizer files hashed whole,
    weight files by name, size and hashes of their first and last MiB (cheap on 16 GB checkpoints).
    README.md (the model card: documentation, with a version and commit) is left out."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"model directory {str(path)!r} does not exist")
    files = {}
    for f in sorted(p.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name == "README.md":   # a model card is not the model
            continue
        h = hashlib.sha256()
        size = f.stat().st_size
        with open(f, "rb") as fh:
            if size <= 2 * _FINGERPRINT_BYTES:
                h.update(fh.read())
            else:
                h.update(fh.read(_FINGERPRINT_BYTES))
                fh.seek(size - _FINGERPRINT_BYTES)
                h.update(fh.read())
        files[f.name] = f"{size}:{h.hexdigest()[:16]}"
    if not files:
        raise UserError(f"model directory {str(path)!r} is empty")
    out = {"name": p.resolve().name, "files": files, "hash": stable_hash(files)}
    if "adapter_config.json" in files and "config.json" not in files:   # LoRA: the base is part of it
        from dlm_bench.models.hf import ADAPTER_CONFIG, adapter_base
        base = model_fingerprint(str(adapter_base(p, json.loads((p / ADAPTER_CONFIG).read_text()))))
        out["base"] = {k: base[k] for k in ("name", "hash", "base") if k in base}
    return out


def cell_config(cfg: SweepConfig, task, split: str, model_id: dict, temperature: float,
                gen_length: int) -> dict:
    """The resolved config of one cell: everything that can change a record's text. `n`, `limit`,
    batch size, ranks and the method label are not in it (they do not change any sample)."""
    return {
        "model": {k: model_id[k] for k in ("name", "hash", "base") if k in model_id},
        "task": task.name,
        "split": split,
        "prompt_template": task.prompt_template,
        # hashed(): without `cache` when it is "none", so default hashes (and seeds) never changed
        "sampler": cfg.sampler(temperature, gen_length).hashed(),
        "seed": int(cfg.seed),
        "grader": task.grader_id(),
    }


def sampling_hash(cell_cfg: dict) -> str:
    """Hash of what decides a sample's text: the cell config without its grader. Seeds come from it,
    so a new grader version or answer mode re-grades the very same samples under a new config hash."""
    return stable_hash({k: v for k, v in cell_cfg.items() if k != "grader"})


def versions() -> dict:
    from dlm_bench.environment import versions as _versions
    return _versions()


# --------------------------------------------------------------------------- the sweep

@dataclass
class _Cell:
    temperature: float
    gen_length: int
    config: dict
    hash: str
    sampler: SamplerConfig = field(repr=False, default=None)
    seed_hash: str = ""


def _rank_world(rank, world) -> tuple[int, int, bool]:
    """(rank, world, distributed): explicit arguments win; else torchrun's environment."""
    if rank is not None or world is not None:
        return int(rank or 0), int(world or 1), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world, world > 1


def _init_dist(device) -> bool:
    """Join torchrun's process group; True when this call created it (and so must destroy it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return True


def _default_device(cfg: SweepConfig, distributed: bool) -> str:
    import torch

    if cfg.device:
        return cfg.device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if distributed else "cuda"
    return "cpu"


def plan(cfg: SweepConfig, task=None):
    """(validated cfg, task, split, problems, cells) without loading the model."""
    from dlm_bench.tasks import get_task

    cfg = cfg.validated()
    task = task or get_task(cfg.task, cfg.data_dir, cfg.answer_mode)
    split = cfg.split or task.eval_split
    problems = task.load(split)
    if cfg.limit is not None:
        problems = problems[:cfg.limit]
    if not problems:
        raise UserError(f"task {cfg.task!r} split {split!r} has no problems")
    model_id = model_fingerprint(cfg.model)
    cells = []
    for t in cfg.temperatures:
        for g in cfg.lengths:
            cc = cell_config(cfg, task, split, model_id, t, g)
            cells.append(_Cell(t, g, cc, stable_hash(cc), cfg.sampler(t, g), sampling_hash(cc)))
    return cfg, task, split, problems, cells


def run_sweep(cfg: SweepConfig, *, wait: bool = False, rank: int | None = None, world: int | None = None,
              **kw) -> dict | None:
    """Run (or resume) a sweep; returns the results dict on the process that finalizes, else None.

    Rank 0 holds the run folder's writer lock throughout (a second writer is refused with a UserError
    naming the holder, or queues with `wait=True`); the other ranks write only their own shards.
    The config, task, data and model folder are checked before the folder is created or locked.
    Keyword arguments: see `_sweep`.
    """
    if _rank_world(rank, world)[0] != 0:
        return _sweep(cfg, rank=rank, world=world, **kw)
    cfg, _, _, _, cells = plan(cfg)
    model_weights(cfg.model)        # a truncated weight file fails here, before the folder is made
    with folder_lock(cfg.out, wait=wait):
        from dlm_bench.runs.index import record_cells
        record_cells(cfg.out, cfg.method, cells, cfg.model)    # which model each config hash stands for
        return _sweep(cfg, rank=rank, world=world, **kw)


def _sweep(cfg: SweepConfig, *, dlm=None, rank: int | None = None, world: int | None = None,
           max_batches: int | None = None, on_batch: Callable[[int], None] | None = None,
           progress: bool = True, finalize: bool | None = None) -> dict | None:
    """The sweep itself. `dlm`: an already loaded model (else `cfg.model` is loaded). `rank`/`world`:
    simulate ranks in one process (no barrier, no automatic merge unless `finalize=True`); left out,
    torchrun's environment decides. `max_batches` / `on_batch(batches_done)`: test hooks that stop a
    run early."""
    from dlm_bench.sampler import make_generators, sample

    rank, world, distributed = _rank_world(rank, world)
    if not 0 <= rank < world:
        raise UserError(f"rank {rank} is outside world size {world}")
    device = _default_device(cfg, distributed)
    if distributed and str(device).startswith("cuda"):
        import torch
        torch.cuda.set_device(torch.device(device))
    owns_group = _init_dist(device) if distributed else False
    cfg, task, split, problems, cells = plan(cfg)
    store = Store(cfg.out, rank=rank if world > 1 else None).open()
    mine = problems[rank::world]

    _grade_orphans(store, task, mine, cfg.method, {c.hash for c in cells})
    done_gen = store.done_keys("generations")
    todo = []  # (cell, problem, sample) not yet generated, in a fixed order
    for c in cells:
        for p in mine:
            for s in range(cfg.n):
                if (cfg.method, c.hash, p.id, s) not in done_gen:
                    todo.append((c, p, s))

    if todo and dlm is None:
        from dlm_bench.models import load_model
        dlm = load_model(cfg.model, device=device)
    if todo and rank == 0:
        _record_model(store.dir, dlm)
    prompt_cache: dict[str, list[int]] = {}
    if todo and cfg.memory_check and dlm.device.type == "cuda":
        _check_fits(dlm, task, cfg, mine, cells, prompt_cache)

    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), unit="sample", desc=f"{cfg.method}/{cfg.task}", dynamic_ncols=True,
                   disable=rank != 0 and distributed)
    batches = 0
    try:
        i = 0
        while i < len(todo):
            c = todo[i][0]
            j = i
            while j < len(todo) and j - i < cfg.batch_size and todo[j][0] is c:
                j += 1  # one batch never spans two cells
            batch = todo[i:j]
            if bar is not None:
                bar.set_postfix_str(f"T={c.temperature:g} L={c.gen_length} "
                                    f"cell {cells.index(c) + 1}/{len(cells)}")
            _run_batch(store, dlm, task, cfg, c, batch, prompt_cache, sample, make_generators)
            if bar is not None:
                bar.update(len(batch))
            i = j
            batches += 1
            if on_batch is not None:
                on_batch(batches)
            if max_batches is not None and batches >= max_batches:
                return None
    finally:
        if bar is not None:
            bar.close()

    if distributed:
        import torch.distributed as dist
        dist.barrier()
    if finalize is None:
        finalize = rank == 0 and (world == 1 or distributed)
    result = finalize_run(cfg, task=task) if finalize else None
    if distributed:
        dist.barrier()
        if owns_group:
            dist.destroy_process_group()
    return result


def training_run(model_path) -> dict | None:
    """The training run a checkpoint came from (method, training seed, step), read from the
    `train_result.json` beside it; None for a model that no dlm-bench run produced."""
    p = Path(str(model_path))
    rec = p.parent / "train_result.json"
    if p.name != "checkpoint" or not rec.is_file():
        return None
    try:
        data = json.loads(rec.read_text())
    except (OSError, ValueError):
        return None
    state = p / "trainer_state.pt"
    return {"run": str(p.parent.resolve()), "method": data.get("method"), "seed": data.get("seed"),
            "step": data.get("step"), "steps": data.get("steps"), "complete": data.get("step") == data.get("steps"),
            "has_state": state.is_file()}


def _record_model(out: Path, dlm) -> None:
    """What the loaded model looked like at run time (not part of any hash: none of it changes a sample)."""
    from dlm_bench.environment import note
    dtype = str(next(dlm.model.parameters()).dtype).removeprefix("torch.")
    info = {"path": dlm.path, "base_model": dlm.extra.get("base_model"), "adapter": dlm.extra.get("adapter"),
            "honours_padding": dlm.honours_padding, "stop_ids": sorted(dlm.stops()), "dtype": dtype,
            "versions": versions(), "training": training_run(dlm.path)}
    if dlm.extra.get("fallbacks"):      # e.g. flash_attn's kernels replaced by plain torch (models/flash_fallback.py)
        info["fallbacks"] = dlm.extra["fallbacks"]
    note(out, dlm.device, dtype)        # environment.jsonl: every environment that wrote records here
    write_json(out / "model.json", info)


def _check_fits(dlm, task, cfg, problems, cells, prompt_cache) -> None:
    """Refuse a batch size the memory model predicts will not fit the GPU (`models/footprint.py`):
    the batch's rows at the longest prompt of this run plus its longest window."""
    from dlm_bench.models.footprint import parameter_bytes, refuse_unless_fits, sampler_bytes
    for p in problems:
        if p.id not in prompt_cache:
            prompt_cache[p.id] = dlm.prompt_ids(task.prompt(p))
    rows = min(cfg.batch_size, len(problems) * cfg.n)
    width = max(len(v) for v in prompt_cache.values()) + max(c.gen_length for c in cells)
    block = max(c.sampler.block_length for c in cells)
    need = parameter_bytes(dlm.model) + sampler_bytes(dlm, rows, width, block, cfg.noise_dtype)
    refuse_unless_fits(need, dlm.device, f"a batch of {rows} samples of {width} tokens",
                       "lower --batch-size", "--no-memory-check")


def _run_batch(store, dlm, task, cfg, cell, batch, prompt_cache, sample, make_generators) -> None:
    prompts, seeds = [], []
    for _, p, s in batch:
        if p.id not in prompt_cache:
            prompt_cache[p.id] = dlm.prompt_ids(task.prompt(p))
        prompts.append(prompt_cache[p.id])
        seeds.append(sample_seed(cell.seed_hash, p.id, s))
    t0 = time.perf_counter()
    comps = sample(dlm, prompts, cell.sampler, make_generators(seeds, dlm.device))
    seconds = (time.perf_counter() - t0) / len(batch)
    gens = []
    for (_, p, s), seed, prompt, comp in zip(batch, seeds, prompts, comps):
        gens.append({"method": cfg.method, "task": task.name, "temperature": cell.temperature,
                     "gen_length": cell.gen_length, "problem_id": p.id, "sample": s, "seed": seed,
                     "config_hash": cell.hash, "prompt_hash": prompt_hash(prompt), "text": comp.text,
                     "tokens": comp.tokens, "nfe": comp.nfe, "length": comp.length,
                     "seconds": round(seconds, 6)})
        if comp.unknown:    # ids the tokenizer has no token for, left out of the text (DLM.decode_completion)
            gens[-1]["unknown_tokens"] = comp.unknown
    store.append("generations", gens)
    _grade_and_store(store, task, [p for _, p, _ in batch], gens)


def _grade_and_store(store, task, problems, gens) -> None:
    grades = task.grade_many(problems, [g["text"] for g in gens])
    scores = [{**g, "correct": bool(gr.correct), "extracted": gr.extracted, "reason": gr.reason,
               "isolation": getattr(gr, "isolation", None)}  # code tasks: how the program was confined
              for g, gr in zip(gens, grades)]
    store.append("scores", scores)


def _grade_orphans(store, task, problems, method, hashes) -> None:
    """Grade generations that a kill left without a score (no re-sampling needed)."""
    scored = store.done_keys("scores")
    by_id = {p.id: p for p in problems}
    orphans = [g for g in store.read("generations")
               if g["method"] == method and g["config_hash"] in hashes and g["problem_id"] in by_id
               and (g["method"], g["config_hash"], g["problem_id"], g["sample"]) not in scored]
    if orphans:
        _grade_and_store(store, task, [by_id[g["problem_id"]] for g in orphans], orphans)


# --------------------------------------------------------------------------- results

def finalize_run(cfg: SweepConfig, task=None) -> dict:
    """Merge shards, then write results.json from the stored records of this sweep's cells only."""
    cfg, task, split, problems, cells = plan(cfg, task)
    store = Store(cfg.out)
    with folder_lock(cfg.out):           # re-entrant: run_sweep already holds it
        store.merge()
        results = summarize(cfg, store, problems, cells)
        results["config"] = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                             "split": split}
        if task.result_note():            # e.g. LiveCodeBench graded on public tests only
            results["note"] = task.result_note()
        results["versions"] = versions()
        from dlm_bench.environment import environment, history
        runtime = json.loads((store.dir / "model.json").read_text()) if (store.dir / "model.json").is_file() else {}
        if runtime:
            results["model_runtime"] = runtime
        results["environment"] = environment(_default_device(cfg, False), runtime.get("dtype"))
        # Not in any hash: records written under several environments agree statistically, not bitwise.
        results["environments"] = history(store.dir)
        store.write_results(results)
    return results


def sweep_frames(store: Store, cfg: SweepConfig, problems, cells):
    """(scores, generations) DataFrames restricted to this sweep: its method, cells, problems, n."""
    from dlm_bench.runs.store import read_generations, read_scores

    ids = {p.id for p in problems}
    hashes = {c.hash for c in cells}
    out = []
    for df in (read_scores(store.dir), read_generations(store.dir)):
        if not df.empty:
            df = df[(df["method"] == cfg.method) & df["config_hash"].isin(hashes)
                    & df["problem_id"].isin(ids) & (df["sample"] < cfg.n)]
        out.append(df)
    return out[0], out[1]


def summarize(cfg: SweepConfig, store: Store, problems, cells) -> dict:
    from dlm_bench.stats import metrics

    scores, gens = sweep_frames(store, cfg, problems, cells)
    complete = not scores.empty and len(scores) == len(problems) * cfg.n * len(cells)
    table = metrics.passk_table(scores, ks=cfg.ks) if not scores.empty else None
    out_cells = []
    for c in cells:
        sc = scores[scores["config_hash"] == c.hash] if not scores.empty else scores
        ge = gens[gens["config_hash"] == c.hash] if not gens.empty else gens
        row = {"temperature": c.temperature, "gen_length": c.gen_length, "config_hash": c.hash,
               "n_problems": int(sc["problem_id"].nunique()) if len(sc) else 0,
               "n_records": int(len(sc)),
               "mean_nfe": float(ge["nfe"].mean()) if len(ge) else None,
               "mean_length": float(ge["length"].mean()) if len(ge) else None,
               "mean_seconds": float(ge["seconds"].mean()) if len(ge) else None,
               "pass_at_k": {}, "config": c.config}
        if table is not None:
            t = table[(table["temperature"] == c.temperature) & (table["gen_length"] == c.gen_length)
                      & (table["method"] == cfg.method)]
            for r in t.to_dict("records"):
                row["pass_at_k"][str(int(r["k"]))] = {"mean": float(r["pass_at_k"]),
                                                      "se": _nan_none(r["se"]),
                                                      "n_samples": int(r["n_samples"])}
        out_cells.append(row)
    return {"method": cfg.method, "task": cfg.task, "ks": list(cfg.ks), "n": cfg.n,
            "n_problems": len(problems), "complete": complete, "cells": out_cells}


def _nan_none(x):
    x = float(x)
    return None if x != x else x
