"""Sampler speed, as ratios against baselines measured in the same run (absolute times are noise here).

1. dlm-bench's sampler vs a literal re-implementation of LLaDA's generate() (tests/llada_reference.py)
   on the same model, prompts and settings: speed-up ratio (>= 1.0 expected).
2. The sampler vs the bare cost of its forward passes (the same number of `logits` calls on the same
   shapes, nothing else): overhead in percent (<= 10% expected).
3. Sequences per second at batch 1 and 64.

Run: .venv/bin/python bench/sampler.py [--size 2m] [--gen-length 32] [--repeats 3]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import llada_reference  # noqa: E402

from dlm_bench.models import DLM  # noqa: E402
from dlm_bench.models.chartok import build_char_tokenizer  # noqa: E402
from dlm_bench.models.tiny import build_tiny  # noqa: E402
from dlm_bench.sampler import SamplerConfig, make_generators, sample  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2m")
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    dlm = DLM(model=build_tiny(tok, args.size).eval(), tokenizer=tok, mask_id=tok.mask_token_id,
              eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    G = args.gen_length
    cfg = SamplerConfig(gen_length=G, block_length=args.block_length, steps=G, temperature=1.0, stop_at_eos=False)
    prompt = dlm.prompt_ids("3 5 7>6:")
    B = args.batch
    print(f"tiny-{args.size}, prompt {len(prompt)} tokens, gen {G}, block {args.block_length}, steps {G}, T=1.0")

    # 1. vs the reference loop, same batch of identical-length prompts (the reference has no per-row RNG).
    ours = best_of(lambda: sample(dlm, [prompt] * B, cfg, make_generators(range(B), "cpu")), args.repeats)
    ref = best_of(lambda: llada_reference.generate(lambda x, m: dlm.logits(x, m), torch.tensor([prompt] * B),
                                                   steps=G, gen_length=G, block_length=args.block_length,
                                                   temperature=1.0, mask_id=dlm.mask_id), args.repeats)
    print(f"[1] batch {B}: reference loop {ref:.3f}s, dlm-bench {ours:.3f}s -> speed-up x{ref / ours:.2f}")

    # 2. vs the bare forward passes it needs.
    x = torch.tensor([prompt + [dlm.mask_id] * G] * B)

    def bare():
        with torch.no_grad():
            for _ in range(G):
                dlm.logits(x, None)
    fwd = best_of(bare, args.repeats)
    print(f"[2] batch {B}: {G} bare forward passes {fwd:.3f}s, sampler {ours:.3f}s -> overhead "
          f"{100 * (ours / fwd - 1):+.1f}%")

    # 3. throughput.
    one = best_of(lambda: sample(dlm, [prompt], cfg, make_generators([0], "cpu")), args.repeats)
    print(f"[3] sequences/s: batch 1 {1 / one:.1f}, batch {B} {B / ours:.1f}")


if __name__ == "__main__":
    main()
