"""The judge's prompt template: the shipped default (dlm_bench/judge/prompts/path_diversity.txt) or the user's own.

A template file holds an optional `[system]` section and a `[user]` section (a file without section
lines is all user message). The user message must contain `{set_a}` and `{set_b}`; it may contain
`{problem}`, `{n_a}` and `{n_b}`. Placeholders are replaced literally, so other braces (a JSON
example, say) need no escaping.

The default is written from the description of the TraFL paper's Appendix G prompt in the shared
research notes (the verbatim text was not available): list the distinct approach types per set,
compare their number and substance, prefer TIE when the difference is superficial or unclear, and
answer with one JSON object (set_a_approaches, set_b_approaches, winner, confidence, reason).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dlm_bench.errors import UserError

DEFAULT_NAME = "path_diversity.txt"
PLACEHOLDERS = ("problem", "n_a", "n_b", "set_a", "set_b")
_SECTION = re.compile(r"^\[(system|user)\][ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptTemplate:
    system: str | None
    user: str
    source: str   # where it came from, for messages and reports
    sha256: str   # of the file's text: part of every cache key

    def messages(self, **values) -> list[dict]:
        user = self.user
        for name in PLACEHOLDERS:
            user = user.replace("{" + name + "}", str(values[name]))
        out = [{"role": "system", "content": self.system}] if self.system else []
        return out + [{"role": "user", "content": user}]


def parse_template(text: str, source: str) -> PromptTemplate:
    """Split a template file's text into its sections and check the placeholders."""
    parts = _SECTION.split(text)
    if len(parts) == 1:
        sections = {"user": text}
    else:
        if parts[0].strip():
            raise UserError(f"prompt file {source}: text before the first [system]/[user] line")
        sections = {}
        for name, body in zip(parts[1::2], parts[2::2]):
            if name in sections:
                raise UserError(f"prompt file {source}: more than one [{name}] section")
            sections[name] = body.strip("\n")
    user = sections.get("user", "")
    missing = [p for p in ("set_a", "set_b") if "{" + p + "}" not in user]
    if missing:
        raise UserError(f"prompt file {source}: the user message lacks "
                        + ", ".join("{" + p + "}" for p in missing))
    system = sections.get("system", "").strip() or None
    return PromptTemplate(system, user, source, hashlib.sha256(text.encode()).hexdigest())


def load_template(path: str | Path | None = None) -> PromptTemplate:
    """The user's template file, or the shipped default when `path` is None."""
    if path is None:
        text = resources.files("dlm_bench.judge").joinpath("prompts", DEFAULT_NAME).read_text(encoding="utf-8")
        return parse_template(text, f"default ({DEFAULT_NAME})")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompt file {str(p)!r}: {e}") from None
    return parse_template(text, str(p))
