"""`dlm-bench info MODEL`: architecture, parameter count, vocabulary, mask and stop ids of a local DLM
(a model directory or a LoRA adapter folder)."""


def add_arguments(p):
    p.add_argument("model", help="a local Hugging Face model directory or LoRA adapter folder")


def run(args):
    from dlm_bench.models import load_model
    dlm = load_model(args.model, device="cpu")
    cfg = dlm.model.config
    rows = [("path", args.model)]
    if dlm.extra.get("adapter"):
        rows.append(("LoRA base", dlm.extra["base_model"]))
    rows += [("architecture", ", ".join(getattr(cfg, "architectures", None) or [type(dlm.model).__name__])),
             ("model type", cfg.model_type), ("parameters", f"{dlm.num_parameters():,}"),
             ("layers", getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", "?")),
             ("hidden size", getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", "?")),
             ("vocabulary", len(dlm.tokenizer)), ("mask id", dlm.mask_id), ("end-of-text id", dlm.eos_id),
             ("stop ids", ", ".join(map(str, sorted(dlm.stops())))),
             ("attention mask", "honoured" if dlm.honours_padding else "ignored (rows are not padded)"),
             ("logits", "shifted (position i-1 predicts i)" if dlm.shift_logits else "unshifted"),
             ("attention", f"block-causal, block size {dlm.block_size}" if dlm.family.block_causal
              else "full (bidirectional)"),
             ("family", dlm.family.name + (", mixture of experts" if dlm.family.moe else "")),
             ("chat template", "yes" if getattr(dlm.tokenizer, "chat_template", None) else "no")]
    if dlm.extra.get("fallbacks"):
        rows.append(("fallbacks", "; ".join(dlm.extra["fallbacks"])))
    for k, v in rows:
        print(f"{k:>15}: {v}")
