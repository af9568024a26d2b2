"""`dlm-bench info MODEL`: architecture, parameter count, vocabulary and mask id of a local DLM."""


def add_arguments(p):
    p.add_argument("model", help="a local Hugging Face model directory")


def run(args):
    from dlm_bench.models import load_model  # torch: only when the command runs
    dlm = load_model(args.model, device="cpu")
    cfg = dlm.model.config
    rows = [("path", args.model), ("architecture", ", ".join(getattr(cfg, "architectures", None) or
                                                              [type(dlm.model).__name__])),
            ("model type", cfg.model_type), ("parameters", f"{dlm.num_parameters():,}"),
            ("layers", getattr(cfg, "num_hidden_layers", "?")), ("hidden size", getattr(cfg, "hidden_size", "?")),
            ("vocabulary", len(dlm.tokenizer)), ("mask id", dlm.mask_id), ("end-of-text id", dlm.eos_id),
            ("chat template", "yes" if getattr(dlm.tokenizer, "chat_template", None) else "no")]
    for k, v in rows:
        print(f"{k:>15}: {v}")
