"""`make demo` and every protocol YAML (configs/*.yaml): pre-train (or reuse) the base model, post-train
each method, sweep Pass@k, report. Every stage resumes where a killed run stopped.

A protocol file is parsed into the typed sections below (`load_protocol`): an unknown key (with the
closest valid name), a wrong type, a value out of range or a setting that would be ignored stops the
run with one line before anything runs. `dlm-bench protocol --check FILE` / `--show FILE` do the same
checks, or print the file resolved with its defaults.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from dlm_bench.config import closest, from_mapping, knob
from dlm_bench.errors import UserError

REQUIRED = ("task", "results", "report", "base", "methods", "train", "eval")
STAGES = ("train", "eval", "report")
HERE = "protocol default"


@dataclass
class Deterministic:
    threads: int = knob(2, "intra-op threads of the deterministic mode every stage runs in", source=HERE, low=1)


@dataclass
class BaseSection:
    checkpoint: str = knob("", "the base model directory every method starts from", source=HERE)
    pretrain: dict | None = knob(None, "settings that re-create `checkpoint` by pre-training (`make base`; "
                                       "dlm_bench.training.pretrain.PretrainConfig fields)", source=HERE)


@dataclass
class TrainSection:
    steps: int | None = knob(None, "rollout batches per method (None: each method's recipe)", source=HERE, low=1)
    seed: int | None = knob(None, "the one training seed (0 when neither seed nor seeds is set)", source=HERE,
                            low=0)
    seeds: list[int] | None = knob(None, "train and sweep each method once per seed, in METHOD/seed-K "
                                         "folders (the layout of the seed-level statistics)", source=HERE)
    save_every: int = knob(10, "optimizer steps between checkpoints", source=HERE, low=0)
    overrides: dict = knob({}, "method settings for every method (the names `--set` takes)", source=HERE)
    per_method: dict = knob({}, "METHOD: {settings} applied over `overrides`", source=HERE)
    sampler: dict = knob({}, "rollout sampler settings for every method (`train --set sampler.X`): remasking, "
                         "threshold, ...", source=HERE)


@dataclass
class EvalSection:
    tasks: list[str] | None = knob(None, "tasks to sweep (None: the training task)", source=HERE)
    n: int = knob(16, "samples per problem", source="paper: Pass@k up to k = 16", low=1)
    ks: list[int] = knob([1, 5, 16], "k values of Pass@k", source=HERE)
    temperatures: list[float] = knob([0.3, 0.6, 0.9], "sampling temperatures", source="paper Fig. 1")
    lengths: list[int] = knob([256, 512], "generation lengths", source="LLaDA's evaluation lengths")
    block_length: int = knob(32, "decoding block length (clamped to the length)", source="LLaDA generate.py",
                             low=1)
    steps: int | None = knob(None, "denoising steps (None: steps_per_token x length)", source=HERE, low=1)
    steps_per_token: float = knob(1.0, "denoising steps per generated token", source="LLaDA: one per token",
                                  low=0.0, low_open=True)
    remasking: str = knob("low_confidence", "which masked tokens a step commits", source="LLaDA generate.py",
                          choices=("low_confidence", "random"))
    threshold: float | None = knob(None, "parallel decoding threshold (None: the fixed schedule)",
                                   source="NVlabs/Fast-dLLM", low=0.0, high=1.0)
    cache: str = knob("none", "block KV cache: none | prefix | dual", source="exact decoding",
                      choices=("none", "prefix", "dual"))
    noise_dtype: str = knob("float64", "Gumbel noise precision", source="LLaDA generate.py",
                            choices=("float64", "float32", "bfloat16"))
    answer_mode: str = knob("flexible", "'strict': only the answer form the prompt asks for", source=HERE,
                            choices=("flexible", "strict"))
    split: str | None = knob(None, "evaluation split (None: the task's)", source=HERE)
    limit: int | None = knob(None, "the first N problems only", source=HERE, low=1)
    batch_size: int = knob(16, "rows per sampler call", source=HERE, low=1)
    seed: int = knob(0, "base sampling seed (part of every cell's hash)", source=HERE, low=0)


@dataclass
class Protocol:
    task: str = knob("", "training task (train split)", source=HERE)
    results: str = knob("", "training runs and Pass@k records", source=HERE)
    report: str = knob("", "figures and report.md", source=HERE)
    base: BaseSection = dataclasses.field(default_factory=BaseSection)
    methods: list[str] = knob([], "methods to train and sweep, in order", source=HERE)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    name: str = knob("demo", "shown in the report's title", source=HERE)
    deterministic: Deterministic | None = knob(None, "run every stage in deterministic mode", source=HERE)
    data_dir: str | None = knob(None, "folder holding the benchmark data", source=HERE)


def read_yaml(path: str) -> dict:
    """The file as a plain mapping, with every required section present (not yet typed)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of sections")
    for key in REQUIRED:
        if key not in data:
            raise UserError(f"{path}: missing section {key!r}")
    return data


def load_protocol(path: str) -> Protocol:
    """`path` parsed, typed and checked (see the module docstring); nothing is run or written."""
    proto = from_mapping(Protocol, read_yaml(path), path)
    check(proto, path)
    return proto


def check(proto: Protocol, where: str) -> None:
    """What the types cannot say: names that exist, settings each method accepts, nothing ignored."""
    from dlm_bench.methods import get_method, method_names
    from dlm_bench.tasks import task_names
    for m in [*proto.methods, *proto.train.per_method]:
        if m not in method_names():
            raise UserError(f"{where}: unknown method {m!r}{closest(m, method_names())}")
    for t in [proto.task, *(proto.eval.tasks or [])]:
        if t not in task_names():
            raise UserError(f"{where}: unknown task {t!r}{closest(t, task_names())}")
    if proto.train.seeds is not None:
        if proto.train.seed is not None:
            raise UserError(f"{where}: train.seed would be ignored beside train.seeds; keep one of them")
        if not proto.train.seeds or len(set(proto.train.seeds)) != len(proto.train.seeds) \
                or min(proto.train.seeds) < 0:
            raise UserError(f"{where}: train.seeds must be a list of distinct non-negative integers, "
                            f"got {proto.train.seeds!r}")
    for m in sorted(set(proto.methods) | set(proto.train.per_method)):
        if get_method(m).trains:                         # every setting valid for the method it goes to
            try:
                get_method(m).config_for(proto.task, method_overrides(proto, m))
            except UserError as e:
                raise UserError(f"{where}: train.overrides / train.per_method.{m}: {e}") from None
        elif proto.train.per_method.get(m):
            raise UserError(f"{where}: train.per_method.{m} would be ignored: {m} does not train")
    if proto.train.sampler:
        _rollout_sampler(proto, where)
    if proto.base.pretrain is not None:
        _pretrain_config(proto, where)
    try:
        sweep_config(proto, "check", ".", proto.task, ".").validated()
    except UserError as e:
        raise UserError(f"{where}: eval: {e}") from None


def _rollout_sampler(proto: Protocol, where: str) -> None:
    from dlm_bench.sampler import SamplerConfig
    from dlm_bench.training.loop import TrainConfig
    try:
        TrainConfig(model="check", sampler=dict(proto.train.sampler)).validate()
        SamplerConfig(**proto.train.sampler).resolved()
    except UserError as e:
        raise UserError(f"{where}: train.sampler: {e}") from None


def _pretrain_config(proto: Protocol, where: str = "the protocol"):
    from dlm_bench.training.pretrain import PretrainConfig
    settings = dict(proto.base.pretrain or {})
    for owned in ("task", "out"):
        if owned in settings:
            raise UserError(f"{where}: base.pretrain.{owned} is set by the protocol (task, results)")
    cfg = from_mapping(PretrainConfig, settings, where, "base.pretrain.")
    return dataclasses.replace(cfg, task=proto.task, out=str(Path(proto.results) / "base-pretrain"),
                               data_dir=cfg.data_dir or proto.data_dir).validate()


def method_overrides(proto: Protocol, method: str) -> dict:
    return {**proto.train.overrides, **proto.train.per_method.get(method, {})}


def training_seeds(proto: Protocol) -> list[int | None]:
    """`train.seeds: [0, 1, 2]` trains and sweeps every method once per seed, in folders
    METHOD/seed-K (the layout the seed-level statistics read); `train.seed: K` (one run) keeps the
    flat layout. None stands for that single run."""
    return list(proto.train.seeds) if proto.train.seeds is not None else [None]


def deterministic_threads(proto: Protocol) -> int | None:
    """`deterministic: {threads: N}` -> N (the whole protocol runs in deterministic mode); absent -> None."""
    return proto.deterministic.threads if proto.deterministic else None


def shown(proto: Protocol) -> str:
    """The protocol resolved with every default, as YAML (`dlm-bench protocol --show`)."""
    return yaml.safe_dump(dataclasses.asdict(proto), sort_keys=False, default_flow_style=None, width=110)


def base_model(proto: Protocol, force: bool = False) -> str:
    """The committed base checkpoint, or pre-train it from the recorded settings."""
    from dlm_bench.training.pretrain import pretrain

    ckpt = Path(proto.base.checkpoint)
    if (ckpt / "config.json").is_file() and not force:
        return str(ckpt)
    if proto.base.pretrain is None:
        raise UserError(f"base checkpoint {str(ckpt)!r} not found and the config has no base.pretrain settings")
    out = pretrain(_pretrain_config(proto))
    if ckpt.exists():
        shutil.rmtree(ckpt)
    shutil.copytree(out, ckpt, ignore=shutil.ignore_patterns("trainer_state.pt"))
    return str(ckpt)


def _seeded(folder: Path, seed: int | None) -> Path:
    return folder if seed is None else folder / f"seed-{seed}"


def train_method(proto: Protocol, method: str, base: str, seed: int | None = None) -> str:
    from dlm_bench.methods import get_method
    from dlm_bench.training.loop import TrainConfig, train

    t = proto.train
    overrides = method_overrides(proto, method) if get_method(method).trains else {}
    out = _seeded(Path(proto.results) / "train" / method, seed)
    return str(train(TrainConfig(method=method, task=proto.task, model=base, out=str(out),
                                 seed=(t.seed or 0) if seed is None else seed, train_steps=t.steps,
                                 overrides=overrides, sampler=dict(t.sampler), save_every=t.save_every,
                                 data_dir=proto.data_dir)))


def sweep_config(proto: Protocol, method: str, model: str, task: str, out: str):
    """One task's sweep: every eval setting passed on (none is read and then dropped)."""
    from dlm_bench.evaluate import SweepConfig
    e = proto.eval
    return SweepConfig(model=model, method=method, task=task, ks=tuple(e.ks), n=e.n,
                       temperatures=tuple(e.temperatures), lengths=tuple(e.lengths), block_length=e.block_length,
                       steps=e.steps, steps_per_token=e.steps_per_token, remasking=e.remasking,
                       batch_size=e.batch_size, seed=e.seed, limit=e.limit, split=e.split,
                       answer_mode=e.answer_mode, threshold=e.threshold, cache=e.cache, noise_dtype=e.noise_dtype,
                       data_dir=proto.data_dir, out=out)


def sweep(proto: Protocol, method: str, model: str, seed: int | None = None) -> None:
    """Pass@k on the training task, or on every task in eval.tasks (transfer protocols)."""
    from dlm_bench.evaluate import run_sweep

    tasks = proto.eval.tasks or [proto.task]
    for task in tasks:
        out = _seeded(Path(proto.results) / "passk" / method, seed)
        run_sweep(sweep_config(proto, method, model, task, str(out if len(tasks) == 1 else out / task)))


def run_demo(path: str, only: str | None = None, methods: str | None = None,
             stages: tuple[str, ...] = STAGES) -> Path | None:
    """Base model, then per method: train (resumes; a finished run returns at once), sweep; then report.
    With a `deterministic:` section the whole run is in deterministic mode (`dlm_bench.environment`)."""
    proto = load_protocol(path)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
    from dlm_bench.environment import deterministic
    with deterministic(deterministic_threads(proto)):     # a --deterministic on the command line wins
        return _run(proto, only, methods, stages)


def _chosen(proto: Protocol, methods: str | None) -> list[str]:
    from dlm_bench.methods import method_names
    if methods == "all":
        return method_names()
    chosen = methods.split(",") if methods else proto.methods
    for m in chosen:
        if m not in method_names():
            raise UserError(f"unknown method {m!r}{closest(m, method_names())}")
    return chosen


def _run(proto: Protocol, only: str | None, methods: str | None, stages: tuple[str, ...]) -> Path | None:
    from dlm_bench.methods import get_method
    from dlm_bench.report.build import ReportConfig, build_report

    start = time.monotonic()
    chosen = _chosen(proto, methods)
    base = base_model(proto, force=only == "base")
    if only == "base":
        print(f"base checkpoint: {base}")
        return None
    seeds = training_seeds(proto)
    if "train" in stages or "eval" in stages:
        for m in chosen:
            # an untrained method is the same model for every seed: one run, outside the seed folders
            for seed in (seeds if get_method(m).trains else [None]):
                tag = "" if seed is None else f" seed {seed}"
                print(f"== {m}{tag}: train ({time.monotonic() - start:.0f}s so far)", flush=True)
                model = train_method(proto, m, base, seed)
                if "eval" in stages:
                    print(f"== {m}{tag}: Pass@k sweep ({time.monotonic() - start:.0f}s so far)", flush=True)
                    sweep(proto, m, model, seed)
    if "report" not in stages:
        return None
    out = build_report(ReportConfig(runs=str(Path(proto.results) / "passk"), out=proto.report,
                                    title=f"dlm-bench {proto.name}: {proto.task}"))
    print(f"report: {out}  ({time.monotonic() - start:.0f}s in all)")
    return out
