"""`dlm-bench sample MODEL PROMPTS.jsonl`: completions for prompts, one JSONL row out per row in.

Input rows: {"prompt": "text"} or {"messages": [{"role": ..., "content": ...}, ...]}, optional "id".
Row i, sample j uses the seed hash(--seed, i, j), so outputs do not depend on --batch-size.
"""
import json
import sys
from pathlib import Path

from dlm_bench.errors import UserError


def add_arguments(p):
    p.add_argument("model", help="a local Hugging Face model directory")
    p.add_argument("prompts", help="JSONL file of prompts ('-' for standard input)")
    p.add_argument("-o", "--out", help="output JSONL (default: standard output)")
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: gen length)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random", "sequential"],
                   help="sequential: block-diffusion models only")
    p.add_argument("--order", default="diffusion", choices=["diffusion", "left_to_right"])
    p.add_argument("--cfg-scale", type=float, default=0.0)
    from dlm_bench.commands.passk import add_decoding_arguments
    add_decoding_arguments(p)
    p.add_argument("--num-samples", "--n", dest="n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None)


def seed_for(seed: int, row: int, sample_index: int) -> int:
    from dlm_bench.config import derive_seed
    return derive_seed(seed, row, sample_index)


def _read_prompts(path):
    fh = sys.stdin if path == "-" else None
    try:
        fh = fh or open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    rows = []
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or not ("prompt" in row or "messages" in row):
                raise UserError(f"{path} line {n}: expected an object with 'prompt' or 'messages'")
            rows.append(row)
    if not rows:
        raise UserError(f"{path} has no prompts")
    return rows


def run(args):
    from tqdm.auto import tqdm

    from dlm_bench.sampler import SamplerConfig, make_generators, sample  # torch: only when the command runs
    if args.n <= 0 or args.batch_size <= 0:
        raise UserError("--n and --batch-size must be positive")
    cfg = SamplerConfig(gen_length=args.gen_length, block_length=args.block_length,
                        steps=args.steps or args.gen_length, temperature=args.temperature,
                        remasking=args.remasking, order=args.order, cfg_scale=args.cfg_scale,
                        threshold=args.threshold, cache=args.cache,
                        noise_dtype=args.noise_dtype).resolved()
    from dlm_bench.models.kv_cache import check_model_dir
    check_model_dir(args.model, cfg.cache)
    rows = _read_prompts(args.prompts)
    if args.out:                          # cheap checks before the model is loaded
        from dlm_bench.checks import model_weights, writable_dir
        if Path(args.out).is_dir():
            raise UserError(f"output {args.out!r} is a folder, not a file")
        writable_dir(Path(args.out).parent, "output folder", create=True)
        model_weights(args.model)
    from dlm_bench.models import load_model
    dlm = load_model(args.model, device=args.device)
    jobs = [(i, j) for i in range(len(rows)) for j in range(args.n)]
    ids = [dlm.prompt_ids(r.get("messages") or r["prompt"]) for r in rows]
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for s in tqdm(range(0, len(jobs), args.batch_size), desc="sample", unit="batch", disable=out is sys.stdout):
            chunk = jobs[s:s + args.batch_size]
            gens = make_generators([seed_for(args.seed, i, j) for i, j in chunk], dlm.device)
            for (i, j), c in zip(chunk, sample(dlm, [ids[i] for i, _ in chunk], cfg, gens)):
                row = {"id": rows[i].get("id", i), "sample": j, "completion": c.text, "tokens": c.tokens,
                       "step_map": c.step_map, "nfe": c.nfe, "length": c.length}
                if c.unknown:   # ids the tokenizer has no token for, left out of the completion text
                    row["unknown_tokens"] = c.unknown
                out.write(json.dumps(row) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
