"""`make demo`: pre-train (or reuse) the base model, post-train each method, sweep Pass@k, report.

Driven by a YAML file (configs/demo.yaml). Every stage resumes where a killed run stopped.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from dlm_bench.errors import UserError


def load_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path!r} does not exist")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    for key in ("task", "results", "report", "base", "methods", "train", "eval"):
        if key not in (cfg or {}):
            raise UserError(f"{path}: missing section {key!r}")
    deterministic_threads(cfg, path)
    return cfg


def deterministic_threads(cfg: dict, path: str = "the config") -> int | None:
    """`deterministic: {threads: N}` -> N (the whole protocol runs in deterministic mode); absent or
    false -> None."""
    d = cfg.get("deterministic")
    if not d:
        return None
    threads = d.get("threads") if isinstance(d, dict) else None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"{path}: deterministic must be a mapping with a positive integer 'threads', got {d!r}")
    return threads


def base_model(cfg: dict, force: bool = False) -> str:
    """The committed base checkpoint, or pre-train it from the recorded settings."""
    from dlm_bench.training.pretrain import PretrainConfig, pretrain

    ckpt = Path(cfg["base"]["checkpoint"])
    if (ckpt / "config.json").is_file() and not force:
        return str(ckpt)
    if "pretrain" not in cfg["base"]:
        raise UserError(f"base checkpoint {str(ckpt)!r} not found and the config has no base.pretrain settings")
    run = Path(cfg["results"]) / "base-pretrain"
    out = pretrain(PretrainConfig(task=cfg["task"], out=str(run), **cfg["base"]["pretrain"]))
    if ckpt.exists():
        shutil.rmtree(ckpt)
    shutil.copytree(out, ckpt, ignore=shutil.ignore_patterns("trainer_state.pt"))
    return str(ckpt)


def training_seeds(cfg: dict) -> list[int | None]:
    """`train.seeds: [0, 1, 2]` trains and sweeps every method once per seed, in folders
    METHOD/seed-K (the layout the seed-level statistics read); `train.seed: K` (one run) keeps the
    flat layout. None stands for that single run."""
    t = cfg["train"]
    if "seeds" not in t:
        return [None]
    seeds = t["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise UserError(f"train.seeds must be a list of distinct non-negative integers, got {seeds!r}")
    return seeds


def _seeded(folder: Path, seed: int | None) -> Path:
    return folder if seed is None else folder / f"seed-{seed}"


def train_method(cfg: dict, method: str, base: str, seed: int | None = None) -> str:
    from dlm_bench.methods import get_method
    from dlm_bench.training.loop import TrainConfig, train

    t = cfg["train"]
    overrides = {**t.get("overrides", {}), **t.get("per_method", {}).get(method, {})}
    if not get_method(method).trains:  # `base`: nothing to configure
        overrides = {}
    out = _seeded(Path(cfg["results"]) / "train" / method, seed)
    return str(train(TrainConfig(method=method, task=cfg["task"], model=base, out=str(out),
                                 seed=t.get("seed", 0) if seed is None else seed, train_steps=t["steps"],
                                 overrides=overrides, save_every=t.get("save_every", 10))))


def sweep(cfg: dict, method: str, model: str, seed: int | None = None) -> None:
    """Pass@k on the training task, or on every task in eval.tasks (transfer protocols)."""
    from dlm_bench.evaluate import SweepConfig, run_sweep

    e = cfg["eval"]
    tasks = e.get("tasks", [cfg["task"]])
    for task in tasks:
        out = _seeded(Path(cfg["results"]) / "passk" / method, seed)
        run_sweep(SweepConfig(model=model, method=method, task=task, ks=tuple(e["ks"]), n=e["n"],
                              temperatures=tuple(e["temperatures"]), lengths=tuple(e["lengths"]),
                              block_length=e["block_length"], steps_per_token=e.get("steps_per_token", 1.0),
                              batch_size=e["batch_size"], seed=e.get("seed", 0), limit=e.get("limit"),
                              out=str(out if len(tasks) == 1 else out / task)))


STAGES = ("train", "eval", "report")


def run_demo(path: str, only: str | None = None, methods: str | None = None,
             stages: tuple[str, ...] = STAGES) -> Path | None:
    """Base model, then per method: train (resumes; a finished run returns at once), sweep; then report.
    With a `deterministic:` section the whole run is in deterministic mode (`dlm_bench.environment`)."""
    cfg = load_config(path)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
    from dlm_bench.environment import deterministic
    with deterministic(deterministic_threads(cfg)):     # a --deterministic on the command line wins
        return _run(cfg, only, methods, stages)


def _run(cfg: dict, only: str | None, methods: str | None, stages: tuple[str, ...]) -> Path | None:
    from dlm_bench.methods import method_names
    from dlm_bench.report.build import ReportConfig, build_report

    start = time.monotonic()
    base = base_model(cfg, force=only == "base")
    if only == "base":
        print(f"base checkpoint: {base}")
        return None
    chosen = method_names() if methods == "all" else (methods.split(",") if methods else cfg["methods"])
    from dlm_bench.methods import get_method
    seeds = training_seeds(cfg)
    if "train" in stages or "eval" in stages:
        for m in chosen:
            # an untrained method is the same model for every seed: one run, outside the seed folders
            for seed in (seeds if get_method(m).trains else [None]):
                tag = "" if seed is None else f" seed {seed}"
                print(f"== {m}{tag}: train ({time.monotonic() - start:.0f}s so far)", flush=True)
                model = train_method(cfg, m, base, seed)
                if "eval" in stages:
                    print(f"== {m}{tag}: Pass@k sweep ({time.monotonic() - start:.0f}s so far)", flush=True)
                    sweep(cfg, m, model, seed)
    if "report" not in stages:
        return None
    out = build_report(ReportConfig(runs=str(Path(cfg["results"]) / "passk"), out=cfg["report"],
                                    title=f"dlm-bench {cfg.get('name', 'demo')}: {cfg['task']}"))
    print(f"report: {out}  ({time.monotonic() - start:.0f}s in all)")
    return out
