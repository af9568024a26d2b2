"""Block-diffusion decoding on CPU: the finished-block cache vs re-running the whole prefix at every step.

LLaDA2's hub `generate()` keeps no cache: each denoising step runs the model over the prompt and
every block so far (block-causal mask). dlm-bench's block sampler runs only the current block against
an exact cache of the finished ones (docs/sampler.md). Both decode the same tokens (checked here
too); this prints the wall time of each, side by side in one process, and the ratio. Then the
sampler's throughput at batch 1 and batch N (rows of different prompt lengths).

Model: a tiny random-weight LLaDA2.0-mini built from the real remote code in ../shared/models
(2 layers, hidden 64, 8 experts, the real 157k vocabulary), float32, T = 1 (the reference's greedy
mode does not exist: see docs/sampler.md), threshold 0.95 (generate()'s default), block 32, a prompt
of about --prompt tokens, no stop at end-of-text. Same seed for both.

Run: .venv/bin/python bench/block_sampler.py [--gen 64,256] [--prompt 200] [--batch 8] [--threads 1]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlm_bench.sampler import SamplerConfig, make_generators, sample  # noqa: E402

BLOCK, THRESHOLD = 32, 0.95


def build(tmp: Path):
    from dlm_bench.models import load_model
    from dlm_bench.models.random_init import build_tiny
    from dlm_bench.tasks.data import models_dir
    root = models_dir()
    if root is None or not (root / "llada2-mini" / "config.json").is_file():
        sys.exit("needs ../shared/models/llada2-mini (or $DLM_BENCH_MODELS)")
    dlm = load_model(str(build_tiny(root / "llada2-mini", tmp / "llada2", seed=1)), device="cpu")
    with torch.no_grad():          # a peaked head: decisions do not hang on 1e-9 differences
        dlm.model.get_output_embeddings().weight.mul_(30.0)
    return dlm


def reference(dlm, prompt, gen):
    """The hub generate(), with its bfloat16 block mask cast for the float32 model (values 0 / -inf)."""
    original = dlm.model.forward

    def forward(*a, attention_mask=None, **k):
        return original(*a, attention_mask=attention_mask.to(torch.float32), **k)

    dlm.model.forward = forward
    try:
        torch.manual_seed(0)
        return dlm.model.generate(inputs=torch.tensor([prompt]), temperature=1.0, block_length=BLOCK,
                                  steps=BLOCK, gen_length=gen, threshold=THRESHOLD, eos_id=-1,
                                  mask_id=dlm.mask_id)[0].tolist()
    finally:
        del dlm.model.forward


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", default="64,256")
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dlm = build(Path(tmp))
        words = " ".join(f"step {i} adds {i * 7 % 13} apples to the basket." for i in range(200))
        prompt = dlm.tokenizer(words, add_special_tokens=False)["input_ids"][:args.prompt]
        print(f"tiny LLaDA2 (random weights), prompt {len(prompt)} tokens, block {BLOCK}, threshold {THRESHOLD}, "
              f"T = 1, {args.threads} thread(s)")
        for gen in [int(g) for g in args.gen.split(",")]:
            cfg = SamplerConfig(gen_length=gen, block_length=BLOCK, steps=gen, temperature=1.0, threshold=THRESHOLD,
                                stop_at_eos=False)
            ours, t_ours = timed(lambda: sample(dlm, [prompt], cfg, make_generators([0], "cpu"))[0])
            theirs, t_ref = timed(lambda: reference(dlm, prompt, gen))
            same = ours.tokens == theirs[:gen]
            print(f"gen {gen}: cached {t_ours:.2f} s ({ours.nfe} NFE), whole prefix each step {t_ref:.2f} s "
                  f"-> x{t_ref / t_ours:.2f}; tokens equal: {same}")
            rows = [prompt[:args.prompt - 7 * i] for i in range(args.batch)]
            _, t_one = timed(lambda: [sample(dlm, [r], cfg, make_generators([i], "cpu")) for i, r in enumerate(rows)])
            _, t_batch = timed(lambda: sample(dlm, rows, cfg, make_generators(list(range(len(rows))), "cpu")))
            print(f"gen {gen}: {len(rows)} prompts one at a time {t_one:.2f} s, as one batch {t_batch:.2f} s "
                  f"-> x{t_one / t_batch:.2f}")


if __name__ == "__main__":
    main()
