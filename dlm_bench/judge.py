"""LLM judge of path diversity (TraFL, Appendix G protocol) over any OpenAI-compatible endpoint.

The judge sees two sets of solutions to one problem, lists the distinct approach types in each,
and says which set is more diverse (A, B or TIE). This module presents one pair and returns one
`Judgment`; A/B order randomisation and tallying live in dlm_bench.diversity.

A judge that is down, times out, or answers garbage never raises: the judgment comes back with
status "unavailable" or "unparseable" and the error, so the rest of a report still renders.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dlm_bench.errors import UserError

PROMPT_VERSION = "trafl-appG-v1"  # part of the cache key: editing the prompt invalidates old verdicts

SYSTEM_PROMPT = (
    "You are an expert in problem solving who judges how varied the reasoning in a set of "
    "solutions is. You answer with one JSON object and nothing else.")

USER_TEMPLATE = """\
Problem:
{problem}

Below are two sets of solutions to this problem, produced by two different systems. Judge the \
diversity of their solution approaches: the strategy or method each solution uses. Do not judge \
correctness, length, wording, formatting or style.

Steps:
1. For Set A, list the distinct approach types its solutions use, giving each a short name. \
Solutions that follow the same strategy with different wording, variable names, number \
formatting or order of steps count as ONE approach.
2. Do the same for Set B.
3. Compare the two sets by the number of distinct approach types and by how different in \
substance those approaches are from one another.
4. Choose the winner: "A" if Set A clearly shows more diverse approaches, "B" if Set B clearly \
does, "TIE" if the difference is mostly superficial, small or unclear. When in doubt, answer "TIE".

Return exactly one JSON object with these fields:
- "set_a_approaches": list of short names of the distinct approaches in Set A
- "set_b_approaches": list of short names of the distinct approaches in Set B
- "winner": "A", "B" or "TIE"
- "confidence": "low", "medium" or "high"
- "reason": one concise sentence

=== Set A ({n_a} solutions) ===
{set_a}

=== Set B ({n_b} solutions) ===
{set_b}
"""

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "set_a_approaches": {"type": "array", "items": {"type": "string"}},
        "set_b_approaches": {"type": "array", "items": {"type": "string"}},
        "winner": {"type": "string", "enum": ["A", "B", "TIE"]},
        "confidence": {"type": "string", "enum": ["low", "medium", "high"]},
        "reason": {"type": "string"},
    },
    "required": ["set_a_approaches", "set_b_approaches", "winner", "confidence", "reason"],
    "additionalProperties": False,
}


@dataclass
class JudgeConfig:
    model: str
    base_url: str | None = None          # None: the client's default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # local servers ignore the key; "EMPTY" is sent if unset
    timeout: float = 120.0               # seconds per request
    max_retries: int = 3                 # the client's own backoff on 408/429/5xx/connection errors
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int = 1024
    structured: bool = True              # JSON-schema response_format; falls back to plain text
    cache_dir: str | os.PathLike | None = None


@dataclass
class Judgment:
    status: str                          # "ok" | "unavailable" | "unparseable" | "skipped"
    winner: str | None = None            # "A" | "B" | "TIE" in the order shown to the judge
    set_a_approaches: list = field(default_factory=list)
    set_b_approaches: list = field(default_factory=list)
    confidence: str | None = None
    reason: str = ""
    raw: str | None = None               # the judge's text, kept for audit
    error: str | None = None
    cached: bool = False
    key: str | None = None


def format_set(solutions, label: str, max_chars: int | None = 4000) -> str:
    """Number the solutions [A1], [A2], ...; cut each at `max_chars` so one rambling sample
    cannot crowd the rest out of the judge's context."""
    parts = []
    for i, s in enumerate(solutions, 1):
        s = str(s).strip()
        if max_chars is not None and len(s) > max_chars:
            s = s[:max_chars] + " [...truncated]"
        parts.append(f"[{label}{i}]\n{s}")
    return "\n\n".join(parts) if parts else "(no solutions)"


def build_messages(problem: str | None, set_a, set_b, max_chars: int | None = 4000) -> list[dict]:
    user = USER_TEMPLATE.format(
        problem=(problem or "(problem statement not provided)").strip(),
        n_a=len(set_a), n_b=len(set_b),
        set_a=format_set(set_a, "A", max_chars), set_b=format_set(set_b, "B", max_chars))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- parsing

def _as_names(v) -> list | None:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v):
        return [str(x) for x in v]
    return None


def validate_verdict(obj) -> dict | None:
    """Normalise a decoded verdict; None unless it has a usable winner and list-like approaches."""
    if not isinstance(obj, dict):
        return None
    w = obj.get("winner")
    if not isinstance(w, str):
        return None
    w = re.sub(r"^SET\s+", "", w.strip().upper())
    if w not in ("A", "B", "TIE"):
        return None
    a, b = _as_names(obj.get("set_a_approaches")), _as_names(obj.get("set_b_approaches"))
    if a is None or b is None:
        return None
    conf = obj.get("confidence")
    conf = conf.strip().lower() if isinstance(conf, str) else None
    reason = obj.get("reason")
    return {"winner": w, "set_a_approaches": a, "set_b_approaches": b,
            "confidence": conf if conf in ("low", "medium", "high") else None,
            "reason": reason.strip() if isinstance(reason, str) else ""}


def parse_verdict(text: str | None) -> dict | None:
    """The first valid verdict object in `text` (bare JSON, fenced ```json, or JSON inside prose)."""
    if not text:
        return None
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        v = validate_verdict(obj)
        if v is not None:
            return v
    return None


# --------------------------------------------------------------------------- cache

class JudgeCache:
    """One JSON file per judgment, named by the request hash; writes are atomic (tmp + rename)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def get(self, key: str) -> dict | None:
        p = self.dir / f"{key}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: dict) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(value, f)
            os.replace(tmp, self.dir / f"{key}.json")
        except OSError:
            pass  # a read-only cache only costs a repeat request next time


def request_key(cfg: JudgeConfig, messages: list[dict]) -> str:
    """Hash of everything that determines the verdict: judge model, prompt version and text (which
    holds both sample sets), decoding settings and schema. The endpoint URL is left out so the
    same model behind another server reuses verdicts."""
    blob = json.dumps({"model": cfg.model, "prompt_version": PROMPT_VERSION, "messages": messages,
                       "temperature": cfg.temperature, "seed": cfg.seed,
                       "max_tokens": cfg.max_tokens, "schema": VERDICT_SCHEMA},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- the judge

class Judge:
    """Ask an OpenAI-compatible chat endpoint to compare two solution sets."""

    def __init__(self, config: JudgeConfig, client=None):
        if not config.model:
            raise UserError("the judge needs a model name")
        self.cfg = config
        self.cache = JudgeCache(config.cache_dir) if config.cache_dir else None
        self._structured = config.structured
        self.n_requests = 0  # requests actually sent (cache hits excluded)
        if client is None:
            try:
                import openai
            except ImportError as e:
                raise UserError("the LLM judge needs the 'openai' package") from e
            client = openai.OpenAI(base_url=config.base_url,
                                   api_key=os.environ.get(config.api_key_env) or "EMPTY",
                                   timeout=config.timeout, max_retries=config.max_retries)
        self.client = client

    def compare(self, problem: str | None, set_a, set_b, max_chars: int | None = 4000) -> Judgment:
        """Judge set A against set B (in this order). Never raises for endpoint trouble."""
        messages = build_messages(problem, list(set_a), list(set_b), max_chars)
        key = request_key(self.cfg, messages)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and hit.get("status") == "ok":
                known = {k: v for k, v in hit.items() if k in Judgment.__dataclass_fields__}
                return Judgment(**{**known, "cached": True, "key": key})
        text, error = self._request(messages)
        if text is None:
            return Judgment(status="unavailable", error=error, key=key)
        verdict = parse_verdict(text)
        if verdict is None:
            # not cached: a fixed parser or a retry may do better next run
            return Judgment(status="unparseable", raw=text, error="no valid verdict JSON", key=key)
        judgment = Judgment(status="ok", raw=text, key=key, **verdict)
        if self.cache is not None:
            record = asdict(judgment)
            record.pop("cached"), record.pop("key")
            self.cache.put(key, record)
        return judgment

    def _request(self, messages) -> tuple[str | None, str | None]:
        """(text, None) on an answer, (None, error) when the endpoint fails after its retries."""
        import openai

        kwargs = dict(model=self.cfg.model, messages=messages, temperature=self.cfg.temperature,
                      max_tokens=self.cfg.max_tokens)
        if self.cfg.seed is not None:
            kwargs["seed"] = self.cfg.seed
        for structured in ((True, False) if self._structured else (False,)):
            if structured:
                kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "path_diversity_verdict", "schema": VERDICT_SCHEMA, "strict": True}}
            else:
                kwargs.pop("response_format", None)
            self.n_requests += 1
            try:
                resp = self.client.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                if structured and e.status_code in (400, 404, 415, 422, 501):
                    self._structured = False  # server rejects response_format: plain text from now on
                    continue
                return None, f"HTTP {e.status_code}: {_short(e)}"
            except openai.APITimeoutError:
                return None, f"timed out after {self.cfg.timeout:g}s ({self.cfg.max_retries} retries)"
            except openai.APIConnectionError as e:
                return None, f"connection failed: {_short(e)}"
            except Exception as e:  # anything else from a half-compatible server: report, go on
                return None, f"{type(e).__name__}: {_short(e)}"
            try:
                text = resp.choices[0].message.content
            except (AttributeError, IndexError, TypeError):
                text = None
            return (text or ""), None
        return None, "no request could be made"


def _short(e: Exception, limit: int = 200) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[:limit] + "..."
