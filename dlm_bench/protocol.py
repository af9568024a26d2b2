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
from dlm_bench.runs.files import write_json
from dlm_bench.runs.index import DECODER_FILE

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
    overrides: dict = knob({}, "method settings for every method (the names `--set` takes), over the method's "
                               "defaults and the task's own scale (Task.train_scale)", source=HERE)
    per_method: dict = knob({}, "METHOD: {settings} applied over `overrides`", source=HERE)
    sampler: dict = knob({}, "rollout sampler settings for every method (`train --set sampler.X`): remasking, "
                         "threshold, ...", source=HERE)
    control: str = knob("none", "'base': log the base model's reward on every step's prompts beside the run's "
                                "(reward_minus_control; one extra rollout per step)", source=HERE,
                        choices=("none", "base"))


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
    schedule: str = knob("uniform", "tokens per step: uniform | ascending (2^i at step i)", source="LLaDA generate.py",
                         choices=("uniform", "ascending"))
    eos_gamma: float | None = knob(None, "EOSER: end-of-text confidence factor rising from this to 1 (None: off)",
                                   source="off, as LLaDA", low=0.0, high=1.0)
    rcr: bool = knob(False, "running-confidence remasking (MDPO)", source="off, as LLaDA")
    answer_mode: str = knob("flexible", "'strict': only the answer form the prompt asks for", source=HERE,
                            choices=("flexible", "strict"))
    split: str | None = knob(None, "evaluation split (None: the task's)", source=HERE)
    limit: int | None = knob(None, "the first N problems only", source=HERE, low=1)
    batch_size: int = knob(16, "rows per sampler call", source=HERE, low=1)
    seed: int = knob(0, "base sampling seed (part of every cell's hash)", source=HERE, low=0)
    decoders: list[str] = knob(["protocol"], "'protocol': the settings above; 'rollout': also each trained "
                                             "model with the decoder it was trained with (its run's block length, "
                                             "order, temperature and length; the base with every such decoder), "
                                             "in RESULTS/passk-rollout/DECODER/", source=HERE)


@dataclass
class Expect:
    method: str = knob("", "the method whose gain is claimed", source=HERE)
    baseline: str = knob("base", "what it is compared with", source=HERE)
    decoder: str = knob("rollout", "the sweep the claim is about: 'rollout' (each model under its training "
                                   "decoder) or 'protocol'", source=HERE, choices=("protocol", "rollout"))
    k: int = knob(1, "the claim is about Pass@k", source=HERE, low=1)
    above: float = knob(0.0, "the seed-level interval of method - baseline must lie above this, in every cell",
                        source=HERE)


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
    expect: Expect | None = knob(None, "a result the run must show (a positive control): checked after the "
                                       "report; `demo` exits 1 when it does not hold", source=HERE)
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
    _check_decoders(proto, where)
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


def _check_decoders(proto: Protocol, where: str) -> None:
    from dlm_bench.evaluate import DECODERS
    d = proto.eval.decoders
    if "protocol" not in d or len(set(d)) != len(d) or set(d) - set(DECODERS):
        raise UserError(f"{where}: eval.decoders must list 'protocol' and may add 'rollout' (each once), got {d!r}")
    e = proto.expect
    if e is None:
        return
    from dlm_bench.methods import get_method
    if e.method not in proto.methods or not get_method(e.method).trains or e.baseline not in proto.methods:
        raise UserError(f"{where}: expect needs a trained method and a baseline from `methods`, "
                        f"got {e.method!r} vs {e.baseline!r}")
    if e.decoder not in d:
        raise UserError(f"{where}: expect.decoder {e.decoder!r} is not swept (eval.decoders: {d})")
    if e.k > proto.eval.n or e.k not in proto.eval.ks:
        raise UserError(f"{where}: expect.k = {e.k} must be one of eval.ks (with k <= n = {proto.eval.n})")


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
    from dlm_bench.training.loop import train

    t = proto.train
    out = _seeded(Path(proto.results) / "train" / method, seed)
    return str(train(train_config(proto, method, base, str(out), (t.seed or 0) if seed is None else seed)))


def train_config(proto: Protocol, method: str, base: str, out: str, seed: int):
    """The protocol's training run of `method` (every train setting passed on)."""
    from dlm_bench.methods import get_method
    from dlm_bench.training.loop import TrainConfig
    t = proto.train
    overrides = method_overrides(proto, method) if get_method(method).trains else {}
    return TrainConfig(method=method, task=proto.task, model=base, out=out, seed=seed, train_steps=t.steps,
                       overrides=overrides, sampler=dict(t.sampler), save_every=t.save_every, data_dir=proto.data_dir,
                       control=t.control)


def rollout_decoders(proto: Protocol, methods: list[str], base: str) -> list:
    """The distinct decoders the trained `methods` roll out with (from their resolved settings, before
    any training), which the base model is swept with under `eval.decoders: [.., rollout]`."""
    from dlm_bench.evaluate import decoder_of
    from dlm_bench.methods import get_method
    from dlm_bench.training.loop import plan
    found = {}
    for m in methods:
        if get_method(m).trains:
            dec = decoder_of(plan(train_config(proto, m, base, ".", 0)).scfg)
            found.setdefault(dec.name, dec)
    return list(found.values())


def sweep_config(proto: Protocol, method: str, model: str, task: str, out: str):
    """One task's sweep: every eval setting passed on (none is read and then dropped)."""
    from dlm_bench.evaluate import SweepConfig
    e = proto.eval
    return SweepConfig(model=model, method=method, task=task, ks=tuple(e.ks), n=e.n,
                       temperatures=tuple(e.temperatures), lengths=tuple(e.lengths), block_length=e.block_length,
                       steps=e.steps, steps_per_token=e.steps_per_token, remasking=e.remasking,
                       batch_size=e.batch_size, seed=e.seed, limit=e.limit, split=e.split,
                       answer_mode=e.answer_mode, threshold=e.threshold, cache=e.cache, noise_dtype=e.noise_dtype,
                       schedule=e.schedule, eos_gamma=e.eos_gamma, rcr=e.rcr, data_dir=proto.data_dir, out=out)


def sweep(proto: Protocol, method: str, model: str, seed: int | None = None, decoders: list | None = None) -> None:
    """Pass@k on the training task, or on every task in eval.tasks (transfer protocols); with
    `eval.decoders: [.., rollout]` also on the training task with the model's own training decoder
    (`decoders`: the ones to use for an untrained model, see `rollout_decoders`)."""
    from dlm_bench.evaluate import rollout_decoder, run_sweep, with_decoder

    tasks = proto.eval.tasks or [proto.task]
    for task in tasks:
        out = _seeded(Path(proto.results) / "passk" / method, seed)
        run_sweep(sweep_config(proto, method, model, task, str(out if len(tasks) == 1 else out / task)))
    if "rollout" not in proto.eval.decoders:
        return
    for dec in (decoders if decoders is not None else [rollout_decoder(model)]):
        folder = matched_root(proto) / dec.name
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / DECODER_FILE, dataclasses.asdict(dec))     # what the report labels it with
        run_sweep(with_decoder(sweep_config(proto, method, model, proto.task, str(_seeded(folder / method, seed))),
                               dec))


def matched_root(proto: Protocol) -> Path:
    """Where the sweeps under each model's training decoder go: one folder per decoder."""
    return Path(proto.results) / "passk-rollout"


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
    # the untrained base is swept with every training decoder of the protocol's methods (all of them, so
    # that runs of a subset of methods still cover the whole study)
    decoders = rollout_decoders(proto, list(dict.fromkeys(proto.methods + chosen)), base) \
        if "rollout" in proto.eval.decoders and "eval" in stages else None
    if "train" in stages or "eval" in stages:
        for m in chosen:
            # an untrained method is the same model for every seed: one run, outside the seed folders
            for seed in (seeds if get_method(m).trains else [None]):
                tag = "" if seed is None else f" seed {seed}"
                print(f"== {m}{tag}: train ({time.monotonic() - start:.0f}s so far)", flush=True)
                model = train_method(proto, m, base, seed)
                if "eval" in stages:
                    print(f"== {m}{tag}: Pass@k sweep ({time.monotonic() - start:.0f}s so far)", flush=True)
                    sweep(proto, m, model, seed, None if get_method(m).trains else decoders)
    if "report" not in stages:
        return None
    matched = matched_root(proto)
    out = build_report(ReportConfig(runs=str(Path(proto.results) / "passk"), out=proto.report,
                                    title=f"dlm-bench {proto.name}: {proto.task}",
                                    matched_runs=str(matched) if "rollout" in proto.eval.decoders else None))
    print(f"report: {out}  ({time.monotonic() - start:.0f}s in all)")
    if proto.expect is not None:
        expectation(proto)
    return out


class ExpectationFailed(Exception):
    """The protocol's `expect:` result did not hold (`demo` exits 1)."""


def expectation(proto: Protocol) -> None:
    """Check `expect:` on the stored records; print the verdict, raise ExpectationFailed when it fails."""
    from dlm_bench.runs.index import decoder_folders, read_scores_by_seed
    from dlm_bench.stats.seed_level import seed_table
    e = proto.expect
    roots = [Path(proto.results) / "passk"] if e.decoder == "protocol" else \
        [d for d, _ in decoder_folders(matched_root(proto)) if (d / e.method).is_dir()]
    rows = []
    for root in roots:
        table = seed_table(read_scores_by_seed(root), e.method, e.baseline, e.k)
        rows += [(root.name, r) for r in table.to_dict("records")]
    lines = [f"{where} T={r['temperature']:g} L={r['gen_length']}: {e.method} - {e.baseline} Pass@{e.k} "
             f"{100 * r['diff']:+.1f} pp [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] "
             f"({r['n_seeds_a']}/{r['n_seeds_b']} seeds, {r['n_problems']} problems)" for where, r in rows]
    ok = bool(rows) and all(r["ci_low"] > e.above for _, r in rows)
    verdict = (f"expect ({proto.name}): {'PASS' if ok else 'FAIL'}: the {e.decoder}-decoder interval of "
               f"{e.method} - {e.baseline} at Pass@{e.k} must lie above {100 * e.above:+.1f} pp")
    print("\n".join([verdict, *[f"  {x}" for x in lines]]) if rows else verdict + " (no records)", flush=True)
    if not ok:
        raise ExpectationFailed(verdict)
