"""GPU check on the real LLaDA-8B-Instruct architecture: its own remote code (the October 2025 mask-fix
snapshot in ../shared/models), full-size config, random weights. Prints sampler tokens/s and peak
memory per batch size, and the ratio to batch 1 measured in the same run.

GPU:  python bench/gpu_real_llada.py                           (gen 256, steps 256, block 32; batch 1, 16, 64)
CPU smoke run: python bench/gpu_real_llada.py --tiny --gen-length 16 --steps 16 --batches 1,2
Fast decoding (issue 13): --caches none,prefix,dual [--threshold 0.9] gives the same table per cache
mode, with the ratio to `none` at the same batch size.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from dlm_bench.tasks.data import models_dir
from dlm_bench.models import DLM
from dlm_bench.models.families import LLADA
from dlm_bench.models.random_init import random_model
from dlm_bench.sampler import SamplerConfig, make_generators, sample

PROMPT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
         "How many clips did Natalia sell altogether in April and May?"


def _model_dir(tiny: bool) -> Path:
    src = (models_dir() or Path("../shared/models")) / "llada-8b-instruct-maskfix"
    if not tiny:
        return src
    tmp = Path(tempfile.mkdtemp()) / "llada"
    shutil.copytree(src, tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    (tmp / "config.json").write_text(json.dumps({**cfg, **LLADA.tiny_sizes}))
    return tmp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny sizes of the same code (CPU smoke run)")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--caches", default="none", help="block KV cache modes, comma-separated")
    ap.add_argument("--threshold", type=float, default=None, help="parallel decoding threshold")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    d = _model_dir(args.tiny)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d, trust_remote_code=True)
    model = random_model(d, seed=0, dtype=dtype).to(device)
    dlm = DLM(model=model, tokenizer=tok, mask_id=126336, eos_id=126081, pad_id=126081, eot_id=126348)
    print(f"LLaDA remote code, {dlm.num_parameters() / 1e9:.2f}B parameters, {dtype}, {device}")
    prompt = dlm.prompt_ids(PROMPT)
    # Random weights rarely emit end-of-text; stop_at_eos=False makes every run decode the whole window.
    none_tps = {}
    for cache in args.caches.split(","):
        cfg = SamplerConfig(gen_length=args.gen_length, block_length=min(args.block_length, args.gen_length),
                            steps=args.steps, temperature=0.6, stop_at_eos=False, cache=cache,
                            threshold=args.threshold)
        base = None
        for b in [int(x) for x in args.batches.split(",")]:
            sample(dlm, [prompt] * b, SamplerConfig(**{**cfg.__dict__, "gen_length": cfg.block_length,
                                                      "steps": cfg.block_length}), make_generators(range(b), device))
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            sample(dlm, [prompt] * b, cfg, make_generators(range(b), device))
            if device == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t
            tps = b * args.gen_length / secs
            base = base or tps
            if cache == "none":
                none_tps[b] = tps
            vs = f", x{tps / none_tps[b]:.2f} of none" if b in none_tps else ""
            mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            print(f"cache {cache:6s} batch {b:3d}: {secs:7.1f} s, {tps:8.1f} tokens/s (x{tps / base:.2f} of batch 1"
                  f"{vs}), peak {mem:.1f} GiB")

if __name__ == "__main__":
    main()
