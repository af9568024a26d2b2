"""`dlm-bench memory MODEL_DIR [--method M] [--set KEY=VALUE ...] [--batch N] [--gen-length L] [--world-size W]`.

Will it fit? The project's own code (train's build, `prepare`, two updates with AdamW, a rollout
sampler step; or, for `--method base`, the model as `passk` loads it and one evaluation sampler step)
runs at full size under fake tensors on the CPU: nothing is allocated and no GPU is needed, only the
model's config.json and code. Prints the peak of every stage in allocated bytes, the three largest
tensors at each peak, and the GPU overhead it cannot see, stated as an assumption (dlm_bench/memory/).
Settings as for `train` (the method's defaults, `--config`, `--set`); bf16 weights, as on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from dlm_bench.errors import UserError

EVAL_ROWS, EVAL_LENGTH, EVAL_TEMPERATURE = 16, 512, 0.9     # passk's batch, the paper's longer length, T > 0


def add_arguments(p) -> None:
    p.add_argument("model", help="a model directory (config.json and code; weights are not read)")
    p.add_argument("--method", default="trafl", help="a training method, or 'base' for one evaluation step")
    p.add_argument("--task", default="gsm8k", help="the task whose recipe the method's defaults follow")
    p.add_argument("--config", default=None, help="YAML file of settings (as for train)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any method, loop or sampler.* setting, as for train; repeatable")
    p.add_argument("--batch", type=int, default=None,
                   help=f"rows in the sampler call (default: base {EVAL_ROWS}, passk's batch; training: "
                        f"the loop's, micro_prompts x G cut at rollout_chunk)")
    p.add_argument("--gen-length", type=int, default=None,
                   help=f"completion window, steps = window (default: base {EVAL_LENGTH}; training: the method's)")
    p.add_argument("--prompt-length", type=int, default=256, help="tokens per synthetic prompt")
    p.add_argument("--world-size", type=int, default=1,
                   help="processes under torchrun: measures rank 0 (FSDP2 for full fine-tuning, DDP for LoRA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive(args) -> None:
    for name in ("batch", "gen_length", "prompt_length", "world_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if not (Path(args.model) / "config.json").is_file():
        raise UserError(f"{args.model!r} is not a model directory with a config.json")


def _train_config(args):
    from dlm_bench.commands.train import build_config
    sets = list(args.sets)
    if args.gen_length is not None:
        sets.append(f"gen_length={args.gen_length}")
        if not any(s.split("=", 1)[0].strip() in ("steps", "rollout.steps") for s in args.sets):
            sets.append(f"steps={args.gen_length}")
    ns = argparse.Namespace(method=args.method, task=args.task, model=args.model, out=None, config=args.config,
                            train_steps=None, seed=None, device=None, data_dir=None, sets=sets)
    return build_config(ns)


def _eval_sampler(args):
    from dlm_bench.commands.train import parse_value
    from dlm_bench.sampler import SamplerConfig
    fields = {}
    for item in args.sets:
        key, _, value = item.partition("=")
        if not key.startswith("sampler.") or not value:
            raise UserError(f"--method base takes only sampler.* settings, got {item!r}")
        fields[key.split(".", 1)[1]] = parse_value(value)
    length = args.gen_length or EVAL_LENGTH
    base = dict(gen_length=length, block_length=min(32, length), steps=length, temperature=EVAL_TEMPERATURE)
    try:
        return SamplerConfig(**{**base, **fields}).resolved()
    except TypeError as e:
        raise UserError(f"unknown sampler setting: {e}") from e


@contextlib.contextmanager
def _untraceable(model: str):
    """Code that moves a tensor computed from model outputs to numpy (LLaDA2's MoE router counts its
    tokens per expert with `.cpu().numpy()`) cannot run under fake tensors: one line, not a traceback."""
    try:
        yield
    except RuntimeError as e:
        if "not supported for tensor subclasses" not in str(e):
            raise
        raise UserError(f"{model}: its code reads a value computed from the model's outputs through numpy "
                        f"({str(e).splitlines()[0]}), which fake tensors cannot answer; this model's memory "
                        f"cannot be traced") from e


def run(args) -> int:
    from tqdm.auto import tqdm

    from dlm_bench.memory.measure import measure_eval, measure_training
    from dlm_bench.memory.report import render
    _positive(args)
    with tqdm(desc="memory", disable=args.no_progress, bar_format="{desc} [{elapsed}]") as bar, \
            _untraceable(args.model):
        def tick(name):
            bar.set_description_str(f"memory: {name}")
        if args.method == "base":
            if args.world_size != 1:
                raise UserError("--world-size applies to training; evaluation ranks each hold the whole model")
            m = measure_eval(args.model, _eval_sampler(args), rows=args.batch or EVAL_ROWS,
                             prompt_length=args.prompt_length, progress=tick)
        else:
            m = measure_training(_train_config(args), prompt_length=args.prompt_length, rows=args.batch,
                                 world=args.world_size, progress=tick)
    print(render(m))
    return 0
