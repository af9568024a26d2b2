"""`dlm-bench pretrain`: masked-diffusion pre-training / SFT on a task's reference answers (resumable)."""
import dataclasses

from dlm_bench.training.pretrain_config import PretrainConfig


def add_arguments(p):
    for f in dataclasses.fields(PretrainConfig):
        # --steps means denoising steps in every other command; here the field counts optimizer steps
        flag = "--train-steps" if f.name == "steps" else "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=__import__("argparse").BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            if str(f.type).startswith("float | None"):
                kind = float
            p.add_argument(flag, dest=f.name, type=kind, default=f.default)
    p.add_argument("--device", default="cpu")


def run(args):
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    from dlm_bench.training.pretrain import pretrain      # torch: only when a run starts
    path = pretrain(cfg, device=args.device)
    print(f"checkpoint: {path}")
