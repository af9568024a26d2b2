"""`dlm-bench train METHOD --task T --model PATH [--out DIR] [--config FILE.yaml] [--train-steps N] [--set k=v ...]`,
or `--pairs FILE.jsonl` in place of `--task`: preference pairs as the rollouts (dlm_bench.training.pairs).

Settings, later ones winning: the method's defaults (its per-task recipe when it has one), the YAML
file, the flags, then `--set`. A key (in YAML or `--set`) is routed by name: `sampler.X` -> sampler
field X; a setting of the method's config (its own knobs, BLOCK.FIELD such as optim.lr, or the flat
aliases lr, group_size, lora_r, gen_length, train_steps, ...) -> the method; a TrainConfig field (seed, save_every, micro_prompts, ...) -> the loop. YAML may also hold
`overrides:` and `sampler:` mappings. Values are parsed as YAML (`--set adam_betas=[0.9,0.99]`).
Multi-GPU: `torchrun --nproc_per_node N -m dlm_bench.cli train ...`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from dlm_bench.errors import UserError
from dlm_bench.runs import tracking


def add_arguments(parser) -> None:
    parser.add_argument("method", help="training method (see `dlm-bench methods`)")
    parser.add_argument("--task", default=None, help="task whose train split gives prompts and rewards")
    parser.add_argument("--pairs", default=None, metavar="FILE.jsonl",
                        help="train on preference pairs (one JSON object per line: prompt, chosen, rejected) "
                             "instead of the task's rollouts; replaces --task")
    parser.add_argument("--model", default=None, help="base model directory")
    parser.add_argument("--out", default=None, help="output directory (default results/train/METHOD-TASK)")
    parser.add_argument("--config", default=None, help="YAML file of settings")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="number of rollout batches (overrides the method's); --set steps=N is the "
                             "denoising steps, as --steps everywhere else")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--control", default=None, choices=["none", "base"],
                        help="base: also log the base model's reward on the same prompts and rollout seeds "
                             "(reward_minus_control in log.jsonl; one extra rollout per step)")
    parser.add_argument("--data-dir", default=None, help="folder holding the benchmark data")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="any method, loop or sampler.* setting; repeatable")
    parser.add_argument("--report-to", default=None, help=tracking.HELP + " (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="on a GPU, do not refuse settings the memory model predicts will not fit (docs/memory.md)")


def parse_value(text: str):
    import yaml
    for conv in (int, float):            # YAML 1.1 reads "1e-4" as a string
        try:
            return conv(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _route(key: str, value, method_fields: set, train_fields: set, cfg: dict) -> None:
    if isinstance(value, dict) and any(f.startswith(key + ".") for f in method_fields):
        for sub_key, sub_value in value.items():        # a block as a mapping: optim: {lr: 1e-5}
            _route(f"{key}.{sub_key}", sub_value, method_fields, train_fields, cfg)
        return
    if key.startswith("sampler."):
        cfg["sampler"][key.split(".", 1)[1]] = value
    elif key in method_fields:
        cfg["overrides"][key] = value
    elif key in train_fields and key not in ("overrides", "sampler", "method"):
        cfg[key] = value
    else:
        raise UserError(f"unknown setting {key!r}: not a field of the method's config, of the loop "
                        f"({', '.join(sorted(train_fields - {'overrides', 'sampler', 'method'}))}) "
                        f"nor sampler.*")


def build_config(args):
    from dlm_bench.methods import get_method
    from dlm_bench.training.loop import TrainConfig

    cls = get_method(args.method)
    from dlm_bench.config import known_settings
    method_fields = set(known_settings(cls.Config))     # flat aliases (lr, lora_r, ...) and BLOCK.FIELD
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg: dict = {"overrides": {}, "sampler": {}}
    if args.config:
        import yaml
        p = Path(args.config)
        if not p.is_file():
            raise UserError(f"config file {args.config!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{args.config} is not valid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(data, dict):
            raise UserError(f"{args.config} must hold a mapping of settings")
        for section in ("overrides", "sampler"):
            sub = data.pop(section, None) or {}
            if not isinstance(sub, dict):
                raise UserError(f"{args.config}: {section} must be a mapping")
            cfg[section].update(sub)
        data.pop("method", None)             # the command line names the method
        for k, v in data.items():
            _route(str(k), v, method_fields, train_fields, cfg)
    for flag, key in (("task", "task"), ("model", "model"), ("out", "out"), ("train_steps", "train_steps"),
                      ("seed", "seed"), ("device", "device"), ("data_dir", "data_dir"),
                      ("report_to", "report_to"), ("control", "control")):
        v = getattr(args, flag, None)
        if v is not None:
            cfg[key] = v
    if getattr(args, "no_memory_check", False):
        cfg["memory_check"] = False
    for item in args.sets:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        _route(k.strip(), parse_value(v), method_fields, train_fields, cfg)
    if getattr(args, "pairs", None) is not None:
        cfg["pairs"] = args.pairs
    if cfg.get("pairs"):                 # the file stands in for the task
        if cfg.get("task") not in (None, "pairs"):
            raise UserError("--pairs gives the prompts and completions: leave --task out")
        cfg["task"] = "pairs"
    for key in ("train_steps", "optim.train_steps"):
        if key in cfg["overrides"] and "train_steps" not in cfg:
            cfg["train_steps"] = cfg["overrides"].pop(key)
    if not cfg.get("task"):
        raise UserError("--task is required")
    if not cfg.get("model"):
        raise UserError("--model is required")
    cfg.setdefault("out", f"results/train/{args.method}-{cfg['task']}")
    try:
        out = TrainConfig(method=args.method, **cfg).validate()
    except TypeError as e:
        raise UserError(str(e)) from e
    cls.config_for(out.task, dict(out.overrides))      # every method setting checked before any file
    return out


def run(args) -> int:
    from dlm_bench.checks import model_weights, writable_dir
    from dlm_bench.training.loop import train
    cfg = build_config(args)
    writable_dir(cfg.out)            # cheap checks first: the model is loaded only after them
    model_weights(cfg.model)
    path = train(cfg, progress=not args.no_progress)
    print(path)
    return 0
