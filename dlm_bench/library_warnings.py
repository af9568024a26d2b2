"""Library warnings a user cannot act on are hidden in `dlm-bench` runs; `dlm-bench -v` shows them.

Hidden: DeprecationWarning and FutureWarning raised from transformers, the models' remote code, torch,
peft, accelerate, huggingface_hub and datasets, and the deprecation notices transformers logs (about
its own internals or the remote code of a hub model, which the user does not own). Every other warning,
and all of ours, still shows. Only the command line turns this on: a library user's process is left as
it is.
"""
from __future__ import annotations

import warnings

LIBRARIES = r"(transformers|transformers_modules|torch|peft|accelerate|huggingface_hub|datasets)(\..*)?"
_hidden = False


def hide() -> None:
    """Called once by the CLI unless -v."""
    global _hidden
    _hidden = True
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)


def _no_deprecations(record) -> bool:
    """A logging filter (a callable): keep every record but deprecation notices."""
    return "deprecat" not in record.getMessage().lower()


def quiet_transformers() -> None:
    """Drop the deprecation notices transformers logs (through its logger's handlers, which carry every
    record of its modules); call once transformers is imported. Does nothing unless `hide` ran."""
    if not _hidden:
        return
    import logging               # here, not at import: `dlm-bench --help` does without it
    for handler in logging.getLogger("transformers").handlers:
        if _no_deprecations not in handler.filters:
            handler.addFilter(_no_deprecations)
