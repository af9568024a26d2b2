"""GPU check: sampler throughput and peak memory on a randomly initialised LLaDA-8B-shaped model.

The built-in architecture is LLaDA's (bidirectional, RoPE, RMSNorm, SwiGLU, mask token), so at
LLaDA-8B's dimensions (hidden 4096, 32 layers, 32 heads, MLP 12288, vocabulary 126464) it is an
8B-parameter model built from a config, with no weights to download.

GPU:  python bench/gpu_llada_shape.py                 (gen 256, block 32, steps 256, batch 1 and 8)
CPU smoke run: python bench/gpu_llada_shape.py --scale 0.02 --gen-length 32 --steps 32 --batches 1
"""
import argparse
import time

import torch

from dlm_bench.models import DLM
from dlm_bench.models.tiny import TinyDLMConfig, TinyDLMForMaskedLM
from dlm_bench.sampler import SamplerConfig, make_generators, sample

LLADA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=12288,
                vocab_size=126464, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081)


class _NoTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="shrink width/depth (CPU smoke runs)")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt-length", type=int, default=128)
    args = ap.parse_args()
    dims = dict(LLADA_8B)
    if args.scale != 1.0:
        heads = max(2, int(32 * args.scale))
        dims.update(num_attention_heads=heads, hidden_size=heads * 128 // 4,
                    num_hidden_layers=max(1, int(32 * args.scale)), intermediate_size=max(64, int(12288 * args.scale)))
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    with torch.device(device):
        model = TinyDLMForMaskedLM(TinyDLMConfig(**dims)).to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    dlm = DLM(model=model, tokenizer=_NoTokenizer(), mask_id=dims["mask_token_id"], eos_id=dims["eos_token_id"],
              pad_id=dims["pad_token_id"])
    cfg = SamplerConfig(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                        temperature=0.6, stop_at_eos=False)
    print(f"{params / 1e9:.2f}B parameters, {dtype}, {device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else ""))
    for b in map(int, args.batches.split(",")):
        prompts = [torch.randint(0, 126000, (args.prompt_length,)).tolist() for _ in range(b)]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t = time.perf_counter()
        sample(dlm, prompts, cfg, make_generators(range(b), device))
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        peak = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
        print(f"batch {b}: {dt:.1f} s, {b * args.gen_length / dt:.1f} generated tokens/s{peak}")


if __name__ == "__main__":
    main()
