"""The config layer: typed blocks every method shares, validation, aliases, seeds and hashes.

A method's settings are one dataclass deriving from `MethodConfig`: the shared blocks (`optim`,
`rollout`, `lora`, and `scoring` for methods that estimate likelihoods) plus its own knobs. Every
field carries a one-line help and, where the method sets it, the source of its default
(`dlm-bench methods -v` prints both):

    @dataclass
    class MyConfig(MethodConfig):
        optim: OptimConfig = block(OptimConfig, lr=(3e-6, "recipe.sh --learning_rate"))
        beta: float = knob(0.1, "KL coefficient", source="paper Sec. 3", low=0)

Settings arrive as a flat or nested mapping (`build_config`): `optim.lr`, `{"optim": {"lr": ..}}`
or the flat names users have always written (`lr`, `group_size`, `lora_r`, ...), which are aliases
of the block fields and also readable as attributes (`cfg.lr is cfg.optim.lr`). Values are coerced
from YAML/CLI spellings ("1e-4", lists for tuples) and checked against their type, choices and range
before any model is loaded; every failure is a one-line `UserError`.

Seeds: every random stream in the harness is seeded by a function of this module, and hashes of
configs come from `stable_hash`; those that existed before the config layer keep their exact
derivation so that stored records stay valid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dlm_bench.errors import UserError

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
# Training rewards of code tasks (tasks/_code_reward.py KINDS, plus the binary grade)
CODE_REWARDS = ("binary", "espo", "justgrpo")
CODE_REWARD_HELP = ("training reward on code tasks: 'binary' (1 if every test passes) | 'espo' / 'justgrpo' "
                    "(that recipe's format score 0/0.5/1 + test pass rate, tasks/_code_reward.py); other "
                    "tasks always use their own reward; evaluation always grades binary")
MASK_SCHEMES = ("paired", "independent", "espo", "espo_independent", "stratified", "stratified_paired")


def knob(default, help: str, *, source: str = "", choices: tuple | None = None,
         low: float | None = None, high: float | None = None, low_open: bool = False):
    """A documented field: `help` (what it does), `source` (where its default comes from), and the
    checks `validate` applies (choices; low <= value <= high, or low < value with `low_open`)."""
    meta = {"help": help, "source": source, "choices": choices, "low": low, "high": high, "low_open": low_open}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def block(cls, **defaults):
    """A shared block as a field of a method's config, with this method's defaults. Each value is either
    the value or `(value, source)`; the sources are shown by `describe`."""
    values, sources = {}, {}
    for k, v in defaults.items():
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], str):
            values[k], sources[k] = v
        else:
            values[k] = v
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return field(default_factory=lambda: cls(**values), metadata={"block": cls, "sources": sources})


# ----------------------------------------------------------------------------- the shared blocks

@dataclass
class OptimConfig:
    """AdamW and its schedule, and how many updates a run makes."""
    lr: float = knob(1e-6, "peak learning rate of AdamW", low=0.0, low_open=True)
    lr_schedule: str = knob("constant", "learning-rate schedule (Hugging Face get_scheduler semantics)",
                            choices=SCHEDULES)
    warmup_ratio: float = knob(0.0, "fraction of all optimizer updates spent in linear warm-up", low=0.0, high=1.0)
    warmup_steps: int | None = knob(None, "linear warm-up over this many optimizer updates (overrides warmup_ratio)",
                                    low=0, source="shared default: unset, warmup_ratio decides")
    weight_decay: float = knob(0.0, "AdamW decoupled weight decay", low=0.0)
    adam_betas: tuple[float, float] = knob((0.9, 0.999), "AdamW (beta1, beta2)")
    max_grad_norm: float | None = knob(1.0, "clip the global gradient norm to this (None or 0: no clipping)", low=0.0)
    train_steps: int | None = knob(None, "rollout batches to train on (None: `epochs` passes over the train split)",
                                   low=1)
    epochs: int = knob(1, "passes over the train split when train_steps is unset", low=1,
                       source="shared default: one pass, unless the method's recipe says otherwise")
    inner_updates: int = knob(1, "passes over each rollout batch (mu); each pass is `minibatches` updates", low=1)
    minibatches: int = knob(1, "optimizer updates per pass: the batch's prompt groups split into this many "
                               "minibatches (PPO-style), all against the rollout-time policy", low=1)
    reset_each_step: bool = knob(False, "a fresh AdamW (moments reset) at every rollout batch, as a "
                                        "recipe that launches one training job per RL step",
                                 source="shared default: one optimizer for the run, as trl-style trainers")


@dataclass
class RolloutConfig:
    """How the training rollouts are sampled: G completions per prompt from the LLaDA sampler."""
    group_size: int = knob(8, "completions per prompt (G)", low=1)
    batch_prompts: int = knob(16, "prompts per rollout batch", low=1)
    temperature: float = knob(1.0, "sampling temperature of the rollouts", low=0.0)
    gen_length: int = knob(256, "completion window in tokens", low=1)
    steps: int = knob(256, "denoising steps over the whole window", low=1)
    block_length: int = knob(32, "semi-autoregressive block length", low=1)
    source: str = knob("online", "'online': sampled from the current policy every step | 'offline': sampled "
                                 "once from the base model before training, reused every epoch "
                                 "(dlm_bench.training.trajectories)", choices=("online", "offline"),
                    source="shared default: on-policy rollouts, as every RL recipe")


@dataclass
class LoraConfig:
    """LoRA adapters on the policy (r = 0: full fine-tuning with a frozen copy as reference)."""
    r: int = knob(0, "LoRA rank (0: full fine-tuning)", low=0)
    alpha: int = knob(0, "LoRA alpha (scale alpha / r)", low=0)
    dropout: float = knob(0.0, "LoRA dropout", low=0.0, high=1.0)
    targets: str = knob("all-linear", "modules that get adapters: 'all-linear', or comma-separated names; "
                                      "q,k,v,o,gate,up,down map to each architecture's own module names "
                                      "(dlm_bench.models.lora_targets), other names are literal module names")


@dataclass
class ScoreConfig:
    """Monte-Carlo likelihood estimates (`dlm_bench.likelihood`): how many masked forwards, drawn how."""
    num_masks: int = knob(4, "masked forward passes per likelihood estimate", low=1)
    mask_scheme: str = knob("stratified_paired", "how mask sizes are drawn (docs/likelihood.md: the lowest-variance "
                                                 "unbiased scheme is the default)", choices=MASK_SCHEMES)


# flat names accepted since before the blocks existed -> dotted paths
_FLAT = {"lora": {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout"}}


@dataclass
class MethodConfig:
    """Base of every training method's config: the shared blocks, then the method's own knobs."""
    optim: OptimConfig = block(OptimConfig)
    rollout: RolloutConfig = block(RolloutConfig)
    lora: LoraConfig = block(LoraConfig)
    code_reward: str = knob("binary", CODE_REWARD_HELP, choices=CODE_REWARDS,
                            source="shared default: the evaluation grade as the reward")

    # method-specific aliases: flat name -> (dotted path, factor); e.g. ESPO's pairs -> masks
    ALIASES: ClassVar[dict[str, tuple[str, int]]] = {}

    def __getattr__(self, name: str):
        # Only reached when normal lookup fails: flat aliases read through to their block.
        if name.startswith("_"):
            raise AttributeError(name)
        path, factor = aliases(type(self)).get(name, (None, 1))
        if path is None:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        value = get_path(self, path)
        return value // factor if factor != 1 else value


def get_path(cfg, path: str):
    for part in path.split("."):
        cfg = object.__getattribute__(cfg, part)
    return cfg


def _blocks(cls) -> dict[str, type]:
    return {f.name: f.metadata["block"] for f in dataclasses.fields(cls) if "block" in f.metadata}


def aliases(cls) -> dict[str, tuple[str, int]]:
    """Flat name -> (dotted path, factor) for every block field of `cls` that no own field shadows."""
    own = {f.name for f in dataclasses.fields(cls) if "block" not in f.metadata}
    out = {}
    for bname, bcls in _blocks(cls).items():
        for f in dataclasses.fields(bcls):
            flat = _FLAT.get(bname, {}).get(f.name, f.name)
            if flat not in own:
                out[flat] = (f"{bname}.{f.name}", 1)
    out.update(getattr(cls, "ALIASES", {}))
    return out


# ----------------------------------------------------------------------------- building and checking

def _flatten(overrides: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def known_settings(cls) -> dict[str, tuple[str, int]]:
    """Every accepted spelling -> (dotted path, factor)."""
    paths = {}
    blocks = _blocks(cls)
    for f in dataclasses.fields(cls):
        if f.name in blocks:
            for bf in dataclasses.fields(blocks[f.name]):
                paths[f"{f.name}.{bf.name}"] = (f"{f.name}.{bf.name}", 1)
        else:
            paths[f.name] = (f.name, 1)
    paths.update(aliases(cls))
    return paths


def build_config(cls, overrides: dict | None = None, owner: str = ""):
    """`cls()` with `overrides` (flat aliases, dotted paths or nested block mappings) applied, coerced
    and validated. Unknown keys, wrong types and out-of-range values raise one-line UserErrors."""
    owner = owner or cls.__name__
    known = known_settings(cls)
    cfg = cls()
    for key, value in _flatten(dict(overrides or {})).items():
        if key not in known:
            near = sorted(k for k in known if "." not in k)
            raise UserError(f"{owner}: unknown setting {key!r}{closest(key, known)}; known: {', '.join(near)} "
                            f"(or BLOCK.FIELD, see `dlm-bench methods -v`)")
        path, factor = known[key]
        *parents, leaf = path.split(".")
        target = cfg
        for p in parents:
            target = getattr(target, p)
        hint = typing.get_type_hints(type(target))[leaf]
        value = _coerce(value, hint, f"{owner}: {key}")
        if factor != 1:
            value = value * factor
        setattr(target, leaf, value)
    validate(cfg, owner)
    return cfg


def _coerce(value, hint, what: str):
    """A YAML/CLI value as the annotated type (int, float, str, bool, tuple of those, X | None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], what)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{what} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise UserError(f"{what} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise UserError(f"{what} must be an integer, got {value!r}") from None
        if not as_float.is_integer():         # also NaN and inf
            raise UserError(f"{what} must be an integer, got {value!r}")
        return int(as_float)
    if hint is float:
        if isinstance(value, bool):
            raise UserError(f"{what} must be a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{what} must be a number, got {value!r}") from None
        if out != out or abs(out) == float("inf"):
            raise UserError(f"{what} must be a finite number, got {value!r}")
        return out
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{what} must be a string, got {value!r}")
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"{what} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, what) for v, a in zip(value, args))
    return value


def closest(name: str, known) -> str:
    """'; did you mean X?' for the nearest of `known`, or '' when none is near."""
    import difflib
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def from_mapping(cls, data, where: str, prefix: str = ""):
    """A dataclass of knobs from a (YAML) mapping, nested dataclass fields from nested mappings: an
    unknown key (with the closest valid name), a missing required key or a wrong type is a one-line
    UserError naming the key as `prefix.key`; choices and ranges are then checked by `validate`."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            hint = closest(prefix + str(key), [prefix + f for f in fields])
            raise UserError(f"{where}: unknown key {prefix + str(key)!r}{hint or '; valid: ' + ', '.join(fields)}")
    hints, values = typing.get_type_hints(cls), {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{where}: missing key {prefix + name!r}")
            continue
        values[name] = _typed(data[name], hints[name], where, prefix + name)
    out = cls(**values)
    validate(out, f"{where}: {prefix.rstrip('.')}" if prefix else where)
    return out


def _typed(value, hint, where: str, key: str):
    """One value of `from_mapping`: nested sections, lists and mappings, else `_coerce`'s scalars."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] \
        if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    if value is None and len(options) < len(typing.get_args(hint) or [hint]):
        return None
    inner = options[0]
    if dataclasses.is_dataclass(inner):
        return from_mapping(inner, value, where, key + ".")
    origin = typing.get_origin(inner) or inner
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: {key} must be a list, got {value!r}")
        (item,) = typing.get_args(inner) or (Any,)
        return [v if item is Any else _coerce(v, item, f"{where}: {key}") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key} must be a mapping, got {value!r}")
        return value
    return _coerce(value, hint, f"{where}: {key}")


def validate(cfg, owner: str = "") -> None:
    """Choices and ranges of every knob (blocks included); one-line UserError on the first violation."""
    owner = owner or type(cfg).__name__
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if "block" in f.metadata:
            validate(value, f"{owner}: {f.name}" if ":" not in owner else f"{owner}.{f.name}")
            continue
        m = f.metadata
        if not m or value is None:
            continue
        name = f"{owner}.{f.name}" if ":" in owner else f"{owner}: {f.name}"
        if m.get("choices") and value not in m["choices"]:
            raise UserError(f"{name} must be one of {', '.join(map(str, m['choices']))}; got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = m.get("low"), m.get("high")
            if low is not None and (value <= low if m.get("low_open") else value < low):
                raise UserError(f"{name} must be {'>' if m.get('low_open') else '>='} {low}, got {value!r}")
            if high is not None and value > high:
                raise UserError(f"{name} must be <= {high}, got {value!r}")


def describe(cls) -> list[tuple[str, Any, str, str]]:
    """(setting, default, help, source) for every field of a method's config, blocks expanded."""
    rows, default = [], cls()
    for f in dataclasses.fields(cls):
        if "block" in f.metadata:
            sources = f.metadata.get("sources", {})
            for bf in dataclasses.fields(f.metadata["block"]):
                rows.append((f"{f.name}.{bf.name}", getattr(getattr(default, f.name), bf.name),
                             bf.metadata.get("help", ""), sources.get(bf.name, bf.metadata.get("source", ""))))
        else:
            rows.append((f.name, getattr(default, f.name), f.metadata.get("help", ""), f.metadata.get("source", "")))
    return rows


# ----------------------------------------------------------------------------- seeds and hashes

def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions: every seed of a
    training run (prompt order, rollouts, adapters, dropout, method mask draws) comes from here."""
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def text_seed(*parts) -> int:
    """A 63-bit seed from JSON-encodable parts, so 1 and "1" differ (the lm-eval adapter keys by text)."""
    blob = json.dumps(parts, ensure_ascii=False, default=str, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big") >> 1


def sample_seed(config_hash: str, problem_id: str, sample: int) -> int:
    """The seed of one evaluation sample: fixed by (config hash, problem id, sample index) alone."""
    h = hashlib.sha256(f"{config_hash}\x00{problem_id}\x00{int(sample)}".encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def mask_seed(seed: int, j: int) -> int:
    """Mask draws of inner update j of a rollout batch seeded `seed` (shared by policy, old and ref)."""
    return (int(seed) * 1_000_003 + j) % (2 ** 63)


HASH_LEN = 16


def stable_hash(obj, length: int = HASH_LEN) -> str:
    """The one config hash: sha256 of canonical JSON (sorted keys, no whitespace), hex, truncated."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
