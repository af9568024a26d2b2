"""An lm-evaluation-harness model `dlm` backed by dlm-bench's sampler and ELBO (optional extra `lmeval`).

    dlm-bench lm-eval --model dlm --tasks gsm8k --seed 1234 \\
        --model_args pretrained=PATH,gen_length=256,block_length=32,steps=256 \\
        --gen_kwargs do_sample=true,temperature=0.6

(`dlm-bench lm-eval` registers the model, then hands every flag to lm-eval's own CLI: lm-eval 0.4
discovers no model plugins, so a plain `lm_eval --model dlm` cannot find it.) Programmatically:
`import dlm_bench.lm_eval_adapter` (registers the model), then `lm_eval.simple_evaluate(model="dlm",
model_args=...)` or pass a `DLMEvalHarness(dlm=...)` instance. lm-eval's default `device=cuda:0`
falls back to the CPU, with a warning, on a machine without CUDA. A misspelt model argument is
refused with the closest valid name; so are `batch_size=auto` (no memory probe for the diffusion
sampler: give a number) and `max_batch_size`, which only `auto` uses.

Seeds. lm-eval's `--seed` drives sampling: the adapter takes the torch seed lm-eval sets (the third
slot of `--seed`; 1234 by default) when the first request arrives, unless `model_args seed=N` is
given; `dlm-bench lm-eval` refuses a `--seed` and a `seed=` that disagree. results.json records the
seed used (`config.dlm_sampling_seed`, with `dlm_seed_from`). Unlike the public LLaDA wrappers (which
hard-code temperature 0, so `repeats: n` gives n identical samples and Pass@n = Pass@1), every
request gets its own seed: a hash of (that seed, task, doc id, context, repeat index), where the
repeat index counts identical requests in order (lm-eval sends each repeat as the same Instance
again). Outputs therefore differ across repeats at T > 0 and are reproducible for a fixed seed, and
(the sampler being batch-invariant) independent of batching.

gen_kwargs as in Hugging Face / lm-eval: `do_sample=false` is greedy whatever the temperature (the
adapter warns once when a temperature > 0 is overridden that way), `do_sample=true` without a
temperature samples at T = 1.0 (HF `generate`'s default), no `do_sample` samples when temperature
> 0. `max_gen_toks` (or its aliases `max_new_tokens`, `max_tokens`, `max_completion_tokens`) is a
hard cap: the answer window is rounded up to whole blocks and cut back to it. `until` cuts the text.
Other keys (`top_p`, `top_k`, ...) have no counterpart in the diffusion sampler: one warning line
names them. Contexts longer than `max_length` minus the answer window lose their first tokens, as in
lm-eval's HF model (`max_length`: the model arg, else the model config's context length, else 2048).

`loglikelihood` is the Monte-Carlo ELBO of the continuation given the context (`mc_num` draws in
coupled pairs, dlm_bench.likelihood), seeded per (seed, context, continuation); `is_greedy` compares
the continuation with a greedy (T = 0) decode of the same length when `greedy_check` is on.
`loglikelihood_rolling` (perplexity) is refused in one line: a masked diffusion LM has no exact
token log-probabilities. The model loads when the first request arrives, so a run whose first
requests are rolling ones stops before loading it. Each request type shows a tqdm bar.

lm_eval is imported only here and only when this module is imported, so dlm-bench works without it.
"""
from __future__ import annotations

import difflib
import inspect
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from dlm_bench.config import text_seed as derive_seed  # JSON-encoded parts: 1 and "1" differ
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

# lm-eval's names for the number of tokens to generate, highest priority first (normalize_gen_kwargs)
MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
GEN_KWARGS = frozenset({"until", "do_sample", "temperature", *MAX_TOKEN_KEYS})
# where a config states its context length: lm-eval's HF model reads the first three; LLaDA the last
LENGTH_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")
DEFAULT_MAX_LENGTH = 2048            # lm-eval's HF model when neither config nor tokenizer says
MODEL_ARGS_FLAGS = ("--model_args", "-a")


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


def as_flag(value) -> bool | None:
    """A boolean as lm-eval hands it over: a bool (YAML, parsed --gen_kwargs) or its text."""
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes")


def check_names(given, valid, what: str) -> None:
    """One line naming every unknown key with the closest valid one (difflib)."""
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    named = []
    for k in unknown:
        close = difflib.get_close_matches(k, valid, n=1)
        named.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UserError(f"dlm: unknown {what} {', '.join(named)}; valid: {', '.join(sorted(valid))}")


def max_new_tokens(gen_kwargs: dict, default: int) -> int:
    for k in MAX_TOKEN_KEYS:
        if gen_kwargs.get(k) is not None:
            return int(gen_kwargs[k])
    return default


def context_limit(config, tokenizer) -> int:
    """The model's context length, found as lm-eval's HF model finds it (plus LLaDA's own key)."""
    config = getattr(config, "text_config", None) or config
    for attr in LENGTH_ATTRS:
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    stated = getattr(tokenizer, "model_max_length", None)
    return int(stated) if stated and stated < 10 ** 9 else DEFAULT_MAX_LENGTH  # HF's "unset" is 1e30


class _Job(NamedTuple):
    index: int
    prompt: list[int]
    seed: int
    until: list
    cap: int                 # max_gen_toks: tokens kept of the (block-rounded) answer window


@_register_model("dlm")
class DLMEvalHarness(_LMBase):
    def __init__(self, pretrained: str | None = None, model_path: str | None = None, dlm=None,
                 device: str | None = None, dtype: str | None = None, gen_length: int = 256,
                 block_length: int = 32, steps: int | None = None, steps_per_token: float = 1.0,
                 remasking: str = "low_confidence", temperature: float | None = None,
                 cfg_scale: float = 0.0, seed: int | None = None, mc_num: int = 128, mc_chunk: int = 32,
                 greedy_check: bool = True, batch_size: int | str = 8, max_batch_size: int | None = None,
                 max_length: int | None = None, trust_remote_code: bool = True, **unknown):
        if not LM_EVAL_AVAILABLE:
            raise UserError(INSTALL_HINT)
        check_names(unknown, self.model_args(), "model_args")
        super().__init__()
        if str(batch_size).startswith("auto"):
            raise UserError(f"dlm: batch_size={batch_size} is not supported (no memory probe for the "
                            "diffusion sampler); give a number, e.g. --batch_size 8")
        if max_batch_size is not None:
            raise UserError("dlm: max_batch_size only applies to batch_size=auto, which the dlm model refuses")
        if int(mc_num) < 2 or int(mc_num) % 2:
            raise UserError(f"mc_num must be an even number >= 2 (mask draws come in pairs), got {mc_num}")
        self.gen_length, self.block_length = int(gen_length), int(block_length)
        self.steps = None if steps in (None, "", "None") else int(steps)
        self.steps_per_token = float(steps_per_token)
        self.remasking, self.cfg_scale = remasking, float(cfg_scale)
        self.temperature = None if temperature in (None, "", "None") else float(temperature)
        self.seed = None if seed in (None, "", "None") else int(seed)
        self.mc_num, self.mc_chunk = int(mc_num), int(mc_chunk)
        self.greedy_check = as_flag(greedy_check) is not False
        self.batch_size = max(1, int(batch_size))
        self._max_length = None if max_length in (None, "", "None") else int(max_length)
        self._sampler(0.0, self.gen_length)  # bad lengths or steps: refused now, before any loading
        self._dlm, self._load = dlm, None
        if dlm is None:
            path = pretrained or model_path
            if not path:
                raise UserError("the dlm model needs pretrained=PATH (a local DLM directory)")
            if not Path(str(path)).is_dir():
                raise UserError(f"dlm: pretrained={path} is not a directory (the dlm model loads local DLMs)")
            self._load = dict(path=str(path), device=available_device(device), dtype=dtype,
                              trust_remote_code=as_flag(trust_remote_code) is not False)
        self._seed_used: int | None = None
        self._warned: set = set()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._rank = torch.distributed.get_rank()
            self._world_size = torch.distributed.get_world_size()

    @classmethod
    def model_args(cls) -> list[str]:
        """The names `--model_args` accepts (`dlm` is the Python API's loaded model)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]

    @property
    def dlm(self):
        """The model, loaded on first use: lm-eval builds this object before it knows the request
        types, and a run it cannot serve (perplexity) should stop before the weights load."""
        if self._dlm is None:
            from dlm_bench.models import load_model
            self._dlm = load_model(**self._load)
        return self._dlm

    def sampling_seed(self) -> int:
        """`model_args seed=` when given, else the torch seed lm-eval set from `--seed`. Read at the
        first request: simple_evaluate seeds torch before it asks anything, also of a model built
        before it was called; torch's initial seed stays what was set, whatever was drawn since."""
        if self._seed_used is None:
            self._seed_used = self.seed if self.seed is not None else int(torch.initial_seed())
        return self._seed_used

    def get_model_info(self) -> dict:
        """Merged into results.json's `config` by lm-eval: the seed and settings actually used."""
        return {"dlm_sampling_seed": self._seed_used,
                "dlm_seed_from": "model_args seed" if self.seed is not None else "lm-eval --seed (torch slot)",
                "dlm_settings": {"gen_length": self.gen_length, "block_length": self.block_length,
                                 "steps": self.steps, "steps_per_token": self.steps_per_token,
                                 "remasking": self.remasking, "temperature": self.temperature,
                                 "cfg_scale": self.cfg_scale, "mc_num": self.mc_num,
                                 "greedy_check": self.greedy_check, "batch_size": self.batch_size,
                                 "max_length": self._max_length}}

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

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        return context_limit(getattr(self.dlm.model, "config", None), self.dlm.tokenizer)

    def _encode(self, text: str) -> list[int]:
        return list(self.dlm.tokenizer(text)["input_ids"])

    def _warn_once(self, key, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print(f"dlm: {message}", file=sys.stderr)

    def _sampler(self, temperature: float, max_tokens: int):
        """The sampler for `max_tokens` new tokens: the window is rounded up to whole blocks (the
        caller cuts the answer back to `max_tokens`)."""
        from dlm_bench.sampler import SamplerConfig

        if max_tokens < 1:
            raise UserError(f"dlm: max_gen_toks must be >= 1, got {max_tokens}")
        block = min(self.block_length, max_tokens)
        g = -(-max_tokens // block) * block
        blocks = g // block
        steps = self.steps if self.steps is not None else max(1, round(self.steps_per_token * g))
        steps = blocks * max(1, round(steps / blocks))  # whole steps per block
        return SamplerConfig(gen_length=g, block_length=block, steps=steps, temperature=float(temperature),
                             remasking=self.remasking, cfg_scale=self.cfg_scale).resolved()

    def _temperature(self, gen_kwargs: dict) -> float:
        """Hugging Face semantics: do_sample=false is greedy, do_sample=true without a temperature
        samples at 1.0; without do_sample, a temperature > 0 samples (lm-eval's convention)."""
        do_sample = as_flag(gen_kwargs.get("do_sample"))
        t = gen_kwargs.get("temperature", self.temperature)
        t = None if t is None else float(t)
        if do_sample is False:
            if t:
                self._warn_once("greedy", f"the task sets do_sample=false, so temperature={t:g} is ignored and "
                                "decoding is greedy; pass --gen_kwargs do_sample=true,temperature=T to sample")
            return 0.0
        if do_sample and t is None:
            return 1.0
        if do_sample and t == 0:
            self._warn_once("t0", "do_sample=true with temperature=0: decoding greedily")
        return t or 0.0

    def _check_gen_kwargs(self, gen_kwargs: dict) -> None:
        new = sorted(k for k in set(gen_kwargs) - GEN_KWARGS if ("gen_kwargs", k) not in self._warned)
        if new:
            self._warned.update(("gen_kwargs", k) for k in new)
            shown = ", ".join(f"{k}={gen_kwargs[k]!r}" for k in new)
            print(f"dlm: gen_kwargs {shown} not supported by the diffusion sampler; ignored", file=sys.stderr)

    def _fit(self, ids: list[int], room: int, what: str) -> tuple[list[int], bool]:
        """`ids` cut from the left to `room` tokens, as lm-eval's HF model truncates contexts."""
        if room < 1:
            raise UserError(f"dlm: {what} leaves no room for a context within max_length={self.max_length}")
        return ids[-room:], len(ids) > room

    def _say_truncated(self, n_cut: int, n: int, room: str) -> None:
        if n_cut:
            print(f"dlm: {n_cut} of {n} contexts were longer than {room} tokens and lost their first "
                  "tokens (left truncation, as lm-eval's HF model)", file=sys.stderr)

    def _bar(self, n: int, what: str, disable: bool):
        return tqdm(total=n, desc=f"dlm {what}", unit="req", disable=disable or self.rank != 0)

    # ---- lm-eval API ----------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from dlm_bench.sampler import make_generators, sample

        seed = self.sampling_seed()
        seen = defaultdict(int)
        groups = defaultdict(list)  # sampler config -> its jobs
        n_cut = 0
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args[0], dict(req.args[1] if len(req.args) > 1 else {})
            self._check_gen_kwargs(gen_kwargs)
            key = (getattr(req, "task_name", None), getattr(req, "doc_id", None), context)
            repeat = seen[key]
            seen[key] += 1
            cap = max_new_tokens(gen_kwargs, self.gen_length)
            cfg = self._sampler(self._temperature(gen_kwargs), cap)
            room = self.max_length - cfg.gen_length
            prompt, cut = self._fit(self._encode(context), room, f"a {cfg.gen_length}-token answer window")
            n_cut += cut
            until = gen_kwargs.get("until") or []
            groups[cfg].append(_Job(i, prompt, derive_seed(seed, key[0], key[1], context, repeat), until, cap))
        self._say_truncated(n_cut, len(requests), "max_length minus the answer window")
        out: list[str | None] = [None] * len(requests)
        with self._bar(len(requests), "generate_until", disable_tqdm) as bar:
            for cfg, group in groups.items():
                for s in range(0, len(group), self.batch_size):
                    batch = group[s:s + self.batch_size]
                    comps = sample(self.dlm, [j.prompt for j in batch], cfg,
                                   make_generators([j.seed for j in batch], self.dlm.device))
                    for job, comp in zip(batch, comps):
                        text = cut_at(self.dlm.completion_text(comp.tokens[:job.cap]), job.until)
                        out[job.index] = text
                        self.cache_hook.add_partial("generate_until", requests[job.index].args, text)
                    bar.update(len(batch))
        return out

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, as lm-eval's AR models split them: trailing
        spaces of the context move to the continuation, and the continuation is the tail of the
        joint encoding (so merges across the boundary are respected). An empty context becomes
        one prefix token (BOS, else EOS), as lm-eval's HF model does."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        cont = whole[len(ctx):]
        if not cont:  # tokenizer merged everything into the context: fall back to separate encodings
            cont = list(self.dlm.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        if not ctx:
            bos = getattr(self.dlm.tokenizer, "bos_token_id", None)
            ctx = [bos if bos is not None else self.dlm.eos_id]
        return ctx, cont

    @torch.no_grad()
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from dlm_bench.likelihood import Guided, ScoredBatch, draw_masks, elbo

        if self.dlm.family.block_causal and self.cfg_scale > 0:   # its ELBO is block-causal (docs/likelihood.md)
            raise UserError(f"loglikelihood: cfg_scale applies to full-attention models; {self.dlm.family.name} "
                            f"is a block-diffusion model (use cfg_scale=0)")
        seed = self.sampling_seed()
        out, n_cut = [], 0
        with self._bar(len(requests), "loglikelihood", disable_tqdm) as bar:
            for req in requests:
                context, continuation = req.args[0], req.args[1]
                ctx, cont = self._split(context, continuation)
                if not cont:
                    out.append((0.0, True))
                    bar.update(1)
                    continue
                ctx, cut = self._fit(ctx, self.max_length - len(cont), f"a {len(cont)}-token continuation")
                n_cut += cut
                batch = ScoredBatch.build(self.dlm, [ctx], [cont])
                gen = torch.Generator().manual_seed(derive_seed(seed, "ll", context, continuation))
                draw = draw_masks(batch.valid, self.mc_num, gen, "stratified_paired")
                # cfg_scale > 0: LLaDA's multiple-choice evaluations score with guided logits (cfg 0.5-2.0)
                model = Guided(self.dlm, batch.prompt_ids.shape[1], self.cfg_scale) if self.cfg_scale > 0 \
                    else self.dlm
                ll = float(elbo(model, batch, draw, chunk=self.mc_chunk)[0])
                greedy = self._is_greedy(ctx, cont) if self.greedy_check else False
                out.append((ll, greedy))
                self.cache_hook.add_partial("loglikelihood", req.args, (ll, greedy))
                bar.update(1)
        self._say_truncated(n_cut, len(requests), "max_length minus the continuation")
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
        raise UserError(
            "dlm: loglikelihood_rolling (perplexity tasks such as wikitext) is not supported: a masked "
            "diffusion LM gives only a Monte-Carlo lower bound (ELBO) on log p(x), not the exact token "
            "log-probabilities these tasks sum; run generation or loglikelihood tasks")


# ---- `dlm-bench lm-eval`: lm-eval's CLI with our spellings and a seed check ---------------------

def model_arg_tokens(argv: list[str]) -> list[tuple[int, str]]:
    """(position, text) of every `key=value[,...]` word given to --model_args (lm-eval 0.4.9+
    takes several words after the flag; earlier ones take one)."""
    out, inside = [], False
    for i, a in enumerate(argv):
        if a.startswith("-"):
            inside = a in MODEL_ARGS_FLAGS
            if a.startswith("--model_args="):
                out.append((i, a.split("=", 1)[1]))
        elif inside:
            out.append((i, a))
    return out


def lm_eval_argv(argv: list[str]) -> list[str]:
    """Our spellings in lm-eval's arguments: `model_path=` becomes `pretrained=`, the key lm-eval
    names its output folder after (with another key it makes up a random name)."""
    out = list(argv)
    for i, text in model_arg_tokens(argv):
        fixed = ",".join("pretrained=" + p.split("=", 1)[1] if p.startswith("model_path=") else p
                         for p in text.split(","))
        out[i] = "--model_args=" + fixed if out[i].startswith("--model_args=") else fixed
    return out


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _as_int(text: str):
    try:
        return int(text.strip())
    except ValueError:
        return text.strip()


def check_seeds(argv: list[str]) -> None:
    """Refuse `--seed` and `model_args seed=` that disagree: the model samples with one seed."""
    given = _flag_value(argv, "--seed")
    mine = [p.split("=", 1)[1] for _, text in model_arg_tokens(argv) for p in text.split(",")
            if p.startswith("seed=")]
    if given is None or not mine:
        return
    slots = [s.strip() for s in given.split(",")]
    torch_slot = slots[0] if len(slots) == 1 else slots[2] if len(slots) > 2 else "1234"
    if torch_slot.lower() != "none" and _as_int(torch_slot) != _as_int(mine[-1]):
        raise UserError(f"dlm: --seed {given} (torch seed {torch_slot}) and model_args seed={mine[-1]} "
                        "disagree; drop seed= (--seed then drives sampling) or make them equal")


def main(argv=None) -> None:
    """lm-eval's own CLI with the `dlm` model registered (`dlm-bench lm-eval`, `python -m` this module)."""
    if not LM_EVAL_AVAILABLE:
        raise UserError(INSTALL_HINT)
    from lm_eval.__main__ import cli_evaluate
    argv = sys.argv[1:] if argv is None else list(argv)
    check_seeds(argv)
    saved = sys.argv
    sys.argv = ["lm-eval", *lm_eval_argv(argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
