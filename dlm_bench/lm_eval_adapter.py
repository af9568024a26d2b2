"""An lm-evaluation-harness model `dlm` backed by dlm-bench's sampler and ELBO (optional extra `lmeval`).

    dlm-bench lm-eval --model dlm --tasks gsm8k \\
        --model_args pretrained=PATH,gen_length=256,block_length=32,steps=256,seed=1234 \\
        --gen_kwargs do_sample=true,temperature=0.6

(`dlm-bench lm-eval` registers the model, then hands every flag to lm-eval's own CLI: lm-eval 0.4
discovers no model plugins, so a plain `lm_eval --model dlm` cannot find it.) Programmatically:
`import dlm_bench.lm_eval_adapter` (registers the model), then `lm_eval.simple_evaluate(model="dlm",
model_args=...)` or pass a `DLMEvalHarness(dlm=...)` instance. lm-eval's default `device=cuda:0`
falls back to the CPU, with a warning, on a machine without CUDA.

Unlike the public LLaDA wrappers (which hard-code temperature 0, so `repeats: n` gives n identical
samples and Pass@n = Pass@1), `generate_until` honours `gen_kwargs` (temperature, do_sample,
max_gen_toks, until) and gives every request its own seed: a hash of (model seed, task, doc id,
context, repeat index), where the repeat index counts identical requests in order (lm-eval sends
each repeat as the same Instance again). Outputs therefore differ across repeats at T > 0 and are
reproducible for a fixed seed, and — the sampler being batch-invariant — independent of batching.

A task that sets `do_sample: false` (lm-eval's gsm8k) decodes greedily whatever temperature is given,
as in Hugging Face; the adapter warns once when a temperature > 0 is overridden that way
(`--gen_kwargs do_sample=true,temperature=T` samples).

`loglikelihood` is the Monte-Carlo ELBO of the continuation given the context (`mc_num` draws in
coupled pairs, dlm_bench.likelihood), seeded per (seed, context, continuation); `is_greedy` compares
the continuation with a greedy (T = 0) decode of the same length when `greedy_check` is on.
`loglikelihood_rolling` (perplexity) is not supported by a masked diffusion LM and raises.

lm_eval is imported only here and only when this module is imported, so dlm-bench works without it.
"""
from __future__ import annotations

import sys
from collections import defaultdict

import torch

from dlm_bench.errors import UserError

try:  # guarded: the rest of dlm-bench must not need lm-eval
    from lm_eval.api.model import LM as _LMBase
    from lm_eval.api.registry import register_model as _register_model
    LM_EVAL_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without the extra
    _LMBase = object
    LM_EVAL_AVAILABLE = False

    def _register_model(*_names):
        return lambda cls: cls

INSTALL_HINT = 'the lm-eval adapter needs lm-eval: pip install "dlm-bench[lmeval]" (or "lm-eval>=0.4.8")'


from dlm_bench.config import text_seed as derive_seed    # noqa: E402  (JSON-encoded parts: 1 and "1" differ)


def available_device(device: str | None) -> str | None:
    """lm-eval passes `cuda:0` unless told otherwise; without CUDA that means the CPU."""
    if device and str(device).startswith("cuda") and not torch.cuda.is_available():
        print(f"dlm: device={device} requested but CUDA is not available; using the CPU", file=sys.stderr)
        return "cpu"
    return device


def cut_at(text: str, until) -> str:
    """`text` up to the earliest occurrence of any stop string (empty strings ignored)."""
    if isinstance(until, str):
        until = [until]
    cut = len(text)
    for s in until or []:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


@_register_model("dlm")
class DLMEvalHarness(_LMBase):
    def __init__(self, model_path: str | None = None, pretrained: str | None = None, dlm=None,
                 device: str | None = None, dtype: str | None = None, gen_length: int = 256,
                 block_length: int = 32, steps: int | None = None, steps_per_token: float = 1.0,
                 remasking: str = "low_confidence", temperature: float = 0.0, cfg_scale: float = 0.0,
                 seed: int = 1234, mc_num: int = 128, mc_chunk: int = 32, greedy_check: bool = True,
                 batch_size: int | str = 8, max_length: int | None = None, **_ignored):
        if not LM_EVAL_AVAILABLE:
            raise UserError(INSTALL_HINT)
        super().__init__()
        if dlm is None:
            path = model_path or pretrained
            if not path:
                raise UserError("the dlm model needs model_path=PATH (a local DLM directory)")
            from dlm_bench.models import load_model
            dlm = load_model(str(path), device=available_device(device), dtype=dtype)
        self.dlm = dlm
        self._warned_greedy = False
        if int(mc_num) < 2 or int(mc_num) % 2:
            raise UserError(f"mc_num must be an even number >= 2 (mask draws come in pairs), got {mc_num}")
        self.gen_length, self.block_length = int(gen_length), int(block_length)
        self.steps = None if steps in (None, "", "None") else int(steps)
        self.steps_per_token = float(steps_per_token)
        self.remasking, self.temperature, self.cfg_scale = remasking, float(temperature), float(cfg_scale)
        self.seed, self.mc_num, self.mc_chunk = int(seed), int(mc_num), int(mc_chunk)
        self.greedy_check = str(greedy_check).lower() not in ("false", "0", "no")
        self.batch_size = 8 if str(batch_size).startswith("auto") else max(1, int(batch_size))
        self.max_length = max_length
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._rank = torch.distributed.get_rank()
            self._world_size = torch.distributed.get_world_size()

    # ---- data-parallel hooks (lm-eval shards documents by rank and gathers with these) ----------

    def gather_object(self, obj, dst=0):
        if self._world_size == 1:
            return [obj]
        out = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj, out, dst=dst)
        return out

    def all_gather(self, tensor):
        if self._world_size == 1:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.cat(parts)

    def barrier(self) -> None:
        if self._world_size > 1:
            torch.distributed.barrier()

    # ---- chat templates -------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.dlm.tokenizer, "name_or_path", "dlm")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.dlm.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        tok = self.dlm.tokenizer
        if not getattr(tok, "chat_template", None):
            raise UserError("this model's tokenizer has no chat template; run without --apply_chat_template")
        return tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    # ---- helpers --------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.dlm.tokenizer(text)["input_ids"])

    def _sampler(self, temperature: float, max_tokens: int | None):
        from dlm_bench.sampler import SamplerConfig

        g = int(max_tokens) if max_tokens else self.gen_length
        block = min(self.block_length, g)
        g = -(-g // block) * block  # round the window up to whole blocks (text is cut anyway)
        blocks = g // block
        steps = self.steps if self.steps is not None else max(1, round(self.steps_per_token * g))
        steps = blocks * max(1, round(steps / blocks))  # whole steps per block
        return SamplerConfig(gen_length=g, block_length=block, steps=steps, temperature=float(temperature),
                             remasking=self.remasking, cfg_scale=self.cfg_scale).resolved()

    def _temperature(self, gen_kwargs: dict) -> float:
        if gen_kwargs.get("do_sample") is False:
            # HF semantics: do_sample=False is greedy whatever the temperature; say so, once
            t = float(gen_kwargs.get("temperature", 0.0) or 0.0)
            if t > 0 and not self._warned_greedy:
                self._warned_greedy = True
                print(f"dlm: the task sets do_sample=false, so temperature={t:g} is ignored and decoding "
                      "is greedy; pass --gen_kwargs do_sample=true,temperature=T to sample", file=sys.stderr)
            return 0.0
        return float(gen_kwargs.get("temperature", self.temperature))

    # ---- lm-eval API ----------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from dlm_bench.sampler import make_generators, sample

        seen = defaultdict(int)
        jobs = []  # (index, prompt ids, sampler config, seed, until)
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args[0], dict(req.args[1] if len(req.args) > 1 else {})
            until = gen_kwargs.get("until") or []
            key = (getattr(req, "task_name", None), getattr(req, "doc_id", None), context)
            repeat = seen[key]
            seen[key] += 1
            cfg = self._sampler(self._temperature(gen_kwargs), gen_kwargs.get("max_gen_toks"))
            seed = derive_seed(self.seed, key[0], key[1], context, repeat)
            jobs.append((i, self._encode(context), cfg, seed, until))
        out: list[str | None] = [None] * len(jobs)
        groups = defaultdict(list)
        for job in jobs:
            groups[job[2]].append(job)
        for cfg, group in groups.items():
            for s in range(0, len(group), self.batch_size):
                batch = group[s:s + self.batch_size]
                comps = sample(self.dlm, [j[1] for j in batch], cfg,
                               make_generators([j[3] for j in batch], self.dlm.device))
                for (i, _, _, _, until), comp in zip(batch, comps):
                    text = cut_at(comp.text, until)
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, as lm-eval's AR models split them: trailing
        spaces of the context move to the continuation, and the continuation is the tail of the
        joint encoding (so merges across the boundary are respected)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        cont = whole[len(ctx):]
        if not cont:  # tokenizer merged everything into the context: fall back to separate encodings
            cont = list(self.dlm.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        return ctx, cont

    @torch.no_grad()
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from dlm_bench.likelihood import Guided, ScoredBatch, draw_masks, elbo

        if self.dlm.family.block_causal:
            raise UserError(f"loglikelihood: {self.dlm.family.name} is a block-diffusion model, and dlm-bench has no "
                            f"block-diffusion ELBO yet; use generate_until tasks")
        out = []
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            ctx, cont = self._split(context, continuation)
            if not cont:
                out.append((0.0, True))
                continue
            batch = ScoredBatch.build(self.dlm, [ctx], [cont])
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "ll", context, continuation))
            draw = draw_masks(batch.valid, self.mc_num, gen, "stratified_paired")
            # cfg_scale > 0: LLaDA's multiple-choice evaluations score with guided logits (cfg 0.5-2.0)
            model = Guided(self.dlm, batch.prompt_ids.shape[1], self.cfg_scale) if self.cfg_scale > 0 else self.dlm
            ll = float(elbo(model, batch, draw, chunk=self.mc_chunk)[0])
            greedy = self._is_greedy(ctx, cont) if self.greedy_check else False
            out.append((ll, greedy))
            self.cache_hook.add_partial("loglikelihood", req.args, (ll, greedy))
        return out

    def _is_greedy(self, ctx: list[int], cont: list[int]) -> bool:
        """Would a greedy (T = 0) decode of len(cont) tokens, one per step, produce `cont`?"""
        from dlm_bench.sampler import SamplerConfig, make_generators, sample

        L = len(cont)
        cfg = SamplerConfig(gen_length=L, block_length=L, steps=L, temperature=0.0,
                            remasking="low_confidence", stop_at_eos=False, cfg_scale=self.cfg_scale)
        comp = sample(self.dlm, [ctx], cfg, make_generators([0], self.dlm.device))[0]
        return list(comp.tokens) == list(cont)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "dlm: loglikelihood_rolling (perplexity tasks such as wikitext) is not supported: a masked "
            "diffusion LM gives only a Monte-Carlo lower bound (ELBO) on log p(x), not the exact, "
            "chunked token log-probabilities these tasks sum. Use generation or loglikelihood tasks.")


def lm_eval_argv(argv: list[str]) -> list[str]:
    """Our spellings in lm-eval's arguments: `model_path=` becomes `pretrained=`, the key lm-eval
    names its output folder after (with another key it makes up a random name)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--model_args" and i + 1 < len(argv):
            out += [a, _pretrained(argv[i + 1])]
            i += 2
            continue
        out.append("--model_args=" + _pretrained(a.split("=", 1)[1]) if a.startswith("--model_args=") else a)
        i += 1
    return out


def _pretrained(model_args: str) -> str:
    return ",".join("pretrained=" + p.split("=", 1)[1] if p.startswith("model_path=") else p
                    for p in model_args.split(","))


def main(argv=None) -> None:
    """lm-eval's own CLI with the `dlm` model registered (`dlm-bench lm-eval`, `python -m` this module)."""
    if not LM_EVAL_AVAILABLE:
        raise UserError(INSTALL_HINT)
    from lm_eval.__main__ import cli_evaluate
    argv = sys.argv[1:] if argv is None else list(argv)
    saved = sys.argv
    sys.argv = ["lm-eval", *lm_eval_argv(argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
