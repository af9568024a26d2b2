"""`dlm-bench merge ADAPTER_DIR OUT`: write base model + LoRA adapter as one plain model directory."""
from pathlib import Path

from dlm_bench.errors import UserError
from dlm_bench.training.model_card import CARD, merge_card


def add_arguments(p):
    p.add_argument("adapter", help="a LoRA adapter folder (as `train` writes with LoRA)")
    p.add_argument("out", help="new directory for the merged model")
    p.add_argument("--dtype", default=None, help="weights dtype (default: the base model's loading dtype)")


def run(args):
    from dlm_bench.models import load_model
    from dlm_bench.models.hf import ADAPTER_CONFIG
    src, out = Path(args.adapter), Path(args.out)
    if not (src / ADAPTER_CONFIG).is_file():
        raise UserError(f"{str(src)!r} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{str(out)!r} exists and is not an empty directory")
    dlm = load_model(str(src), device="cpu", dtype=args.dtype)
    dlm.save(str(out))
    (out / CARD).write_text(merge_card(src, dlm.extra["base_model"]), encoding="utf-8")
    from dlm_bench.runs.files import share_tree
    share_tree(out)                  # save_pretrained writes the weights 0600
    print(f"merged {src} into its base {dlm.extra['base_model']}: {out}")
