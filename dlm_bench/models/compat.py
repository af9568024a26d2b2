"""Load-time shims so that remote DLM code written for transformers 4.x also runs under 5.x.

The users' model files are never edited: each shim patches the class that transformers loaded from
them (or a transformers table), applies only where the break it fixes is present, and is idempotent.
Each was seen with the real LLaDA-8B-Instruct, Dream-v0-Instruct-7B, TraDo-8B-Instruct (SDAR) and
LLaDA2.0-mini hub code (`../shared/models`):

| break (where)                                            | shim                                         |
|----------------------------------------------------------|----------------------------------------------|
| `ROPE_INIT_FUNCTIONS['default']` removed in 5.x (Dream)   | register the standard RoPE frequencies       |
| `__init__` never calls `post_init()` (LLaDA); 5.x reads    | call `post_init()` after `__init__` when it  |
| `all_tied_weights_keys` and friends that it sets          | left those attributes unset                  |
| `tie_weights(self)` takes no arguments (LLaDA); 5.x passes | accept and drop the keyword arguments        |
| `recompute_mapping=`                                      |                                              |
| `_tied_weights_keys` is a list (Dream); 5.x wants a dict   | `{lm_head.weight: model.embed_tokens.weight}`|
| `config.use_cache` read but not defined (LLaDA's config)   | default it to False (the config.json value)  |
| non-persistent `inv_freq` buffers are left uninitialised | recompute them after loading (both lines:    |
| by meta-device loading (Dream's rotary embedding: random  | meta-device loading never fills buffers that |
| memory, so no usable positions)                           | are not in the checkpoint)                   |
| `GenerationConfig.validate(is_init)` (Dream's             | accept and ignore the keywords 5.x passes    |
| `DreamGenerationConfig`): `save_pretrained` passes        | (`strict`, `user_set_attributes`), so Dream  |
| `strict=` (4.57 too), 5.x loading `user_set_attributes=`  | loads and a fine-tuned Dream model saves     |
| `from transformers.utils import LossKwargs` (SDAR/TraDo):  | define it again (a TypedDict of              |
| removed in 4.57 and 5.x, the code cannot be imported      | `num_items_in_batch`, as 4.5x had it)        |
| `is_torch_fx_available` removed in 5.x (LLaDA2)            | define it, False: 5.x dropped FX tracing, and|
|                                                           | the guarded code only registers an FX leaf   |
| `Cache.__getitem__` removed in 5.x; SDAR's attention reads | give `Cache` back the 4.x read: the layer's  |
| `cache[layer]` on its cached passes                       | (keys, values)                               |
| `config.pad_token_id` no longer defaulted by 5.x (SDAR)    | default it to None (4.x's default)           |
| `config.fuse_cross_entropy` (SDAR's config.json: true)     | set it False: the fused loss is patched in   |
| makes the training-mode forward return no logits          | only by SDAR's own trainer                   |
| `AutoModel` in `auto_map` has no LM head (SDAR, LLaDA2)    | load the family's `auto_class` (families.py) |
| `import flash_attn` at the top of SDAR's file (CUDA only)  | a plain-torch stand-in while the module is   |
|                                                           | imported (`flash_fallback.py`), recorded     |
"""
from __future__ import annotations

import functools
import inspect
import sys
from typing import Optional, TypedDict

import torch

from dlm_bench.models import flash_fallback

SHIMMED = "_dlm_bench_compat"


def _default_rope(config, device=None, seq_len=None, **kwargs):
    """The original RoPE inverse frequencies (what 4.x registered as 'default')."""
    if kwargs.get("base") is not None and kwargs.get("dim") is not None:        # legacy keyword form
        base, dim = kwargs["base"], int(kwargs["dim"])
    else:
        base = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
        head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head * getattr(config, "partial_rotary_factor", 1.0))
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (base ** exponent), 1.0


def install_global_shims() -> None:
    """Names that remote code imports from transformers and that this transformers removed."""
    import transformers.utils
    from transformers import cache_utils, modeling_rope_utils
    from transformers.utils import import_utils
    modeling_rope_utils.ROPE_INIT_FUNCTIONS.setdefault("default", _default_rope)
    if not hasattr(transformers.utils, "LossKwargs"):
        transformers.utils.LossKwargs = LossKwargs
    if not hasattr(import_utils, "is_torch_fx_available"):
        import_utils.is_torch_fx_available = _no_fx
    if not hasattr(cache_utils.Cache, "__getitem__"):
        cache_utils.Cache.__getitem__ = _layer_keys_values


class LossKwargs(TypedDict, total=False):
    """transformers 4.5x's keyword arguments of a loss (SDAR's `KwargsForCausalLM` extends it)."""
    num_items_in_batch: Optional[torch.Tensor]


def _no_fx() -> bool:
    return False


def _layer_keys_values(cache, layer_idx: int):
    """The 4.x `cache[layer]`: that layer's stored (keys, values)."""
    layer = cache.layers[layer_idx]
    return layer.keys, layer.values


def _needs_post_init(model) -> bool:
    return not hasattr(model, "all_tied_weights_keys") and hasattr(type(model), "get_expanded_tied_weights_keys")


def patch_model_class(cls) -> None:
    """Make a remote PreTrainedModel class safe to build and load under transformers 5.x."""
    if cls.__dict__.get(SHIMMED):
        return
    install_global_shims()
    tied = cls.__dict__.get("_tied_weights_keys")
    if isinstance(tied, (list, tuple)):
        # 4.x listed the tied targets; 5.x maps each target to its source. The list form is the
        # Llama/Qwen2 one (Dream's), whose head ties to `model.embed_tokens` when the config ties at all.
        cls._tied_weights_keys = {k: "model.embed_tokens.weight" for k in tied if k.endswith("lm_head.weight")}
    if "tie_weights" in cls.__dict__ and not _accepts_kwargs(cls.tie_weights):
        original_tie = cls.tie_weights
        cls.tie_weights = functools.wraps(original_tie)(lambda self, *a, **k: original_tie(self))
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, config, *args, **kwargs):
        patch_config(config)
        original_init(self, config, *args, **kwargs)
        if _needs_post_init(self):
            self.post_init()

    cls.__init__ = __init__
    setattr(cls, SHIMMED, True)


def _accepts_kwargs(fn) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def patch_config(config) -> None:
    if not hasattr(config, "use_cache"):
        config.use_cache = False
    if not hasattr(config, "pad_token_id"):
        config.pad_token_id = None
    if getattr(config, "fuse_cross_entropy", False):
        config.fuse_cross_entropy = False


def patch_generation_configs(module) -> None:
    """Let remote GenerationConfig subclasses whose `validate()` predates 5.x's keyword arguments
    (`strict=` from `save_pretrained`, `user_set_attributes=` from `from_pretrained`) accept and ignore them."""
    from transformers import GenerationConfig
    for obj in list(vars(module).values()):
        if not (isinstance(obj, type) and issubclass(obj, GenerationConfig) and obj is not GenerationConfig):
            continue
        if obj.__dict__.get(SHIMMED) or "validate" not in obj.__dict__ or _accepts_kwargs(obj.validate):
            continue
        original = obj.validate
        obj.validate = functools.wraps(original)(
            lambda self, *a, _original=original, **k: _original(self, *a, **_known(_original, k)))
        setattr(obj, SHIMMED, True)


def _known(fn, kwargs: dict) -> dict:
    names = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in names}


def remote_model_class(path: str, auto_map: dict, auto_class: str = "AutoModel"):
    """The class `auto_class` would load from `path`'s remote code (`AutoModel` where the map has no
    such entry), patched for this transformers."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    auto_class = auto_class if auto_class in auto_map else "AutoModel"
    install_global_shims()
    with flash_fallback.standing_in(path):
        cls = get_class_from_dynamic_module(auto_map[auto_class], path)
    patch_model_class(cls)
    patch_generation_configs(sys.modules[cls.__module__])
    cls.register_for_auto_class(auto_class)       # save_pretrained then copies the remote code along
    return cls


@torch.no_grad()
def restore_rotary_buffers(model) -> int:
    """Recompute HF-style rotary frequencies (`inv_freq` from `rope_init_fn`) that loading left
    uninitialised; returns how many modules were fixed."""
    fixed = 0
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    for module in model.modules():
        init = getattr(module, "rope_init_fn", None)
        if init is None or not isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            continue
        inv_freq, module.attention_scaling = init(module.config, device, **getattr(module, "rope_kwargs", {}))
        module.register_buffer("inv_freq", inv_freq, persistent=False)
        module.original_inv_freq = inv_freq
        fixed += 1
    return fixed
