"""LLM judge of path diversity (TraFL, Appendix G protocol) over any OpenAI-compatible endpoint.

The judge sees two sets of solutions to one problem, lists the distinct approach types in each,
and says which set is more diverse (A, B or TIE). This module presents one pair and returns one
`Judgment`; showing each problem in both orders and tallying live in dlm_bench.judge.pairs.

Before its first request that the cache cannot answer, the judge sends one short preflight request:
an endpoint that cannot be reached (connection refused, no connection within 5 s) or that refuses
the key or the model (HTTP 401/403/404) raises `JudgeUnreachable` at once, instead of every request
failing through its retries.

Past the preflight, a judge that is down, times out, or answers garbage never raises: a failed
request is retried unchanged with exponential backoff; an unparseable answer is retried with what
can vary (the next seed, the temperature nudged up by `retry_nudge` per retry), and the retries
stop early when an answer repeats an earlier one word for word. The judgment then comes back with
status "unavailable" or "unparseable", the error, and every try's settings and raw answer, so the
rest of a report still renders and nothing is hidden. A server that rejects the JSON-schema
`response_format` gets the same request again as plain text; only when that one is answered does
the judge switch to plain text for the rest of the run, and it says so on stderr. The prompt comes
from dlm_bench.judge.prompt.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dlm_bench.errors import UserError
from dlm_bench.runs.files import atomic_write
from dlm_bench.judge.prompt import PromptTemplate, load_template

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
    max_retries: int = 3                 # further tries after a failed or unparseable answer
    backoff: float = 1.0                 # seconds before the first retry, doubled for each next one
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int = 1024
    structured: bool = True              # JSON-schema response_format; falls back to plain text
    cache_dir: str | os.PathLike | None = None
    prompt_file: str | os.PathLike | None = None  # None: the shipped default template
    retry_nudge: float = 0.2             # temperature added per retry after an unparseable answer
    preflight: bool = True               # one short request before the first real one


PREFLIGHT_PROMPT = "dlm-bench judge preflight: reply with the word OK."
PREFLIGHT_CONNECT_S = 5.0                # an endpoint that accepts no connection in this long is down
UNREACHABLE_STATUS = (401, 403, 404)     # wrong key, forbidden, wrong URL or model name


class JudgeUnreachable(Exception):
    """The preflight request could not reach the endpoint or was refused: no judging is possible."""


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
    attempts: int = 0                    # requests this judgment took (0 when cached or skipped)
    temperature: float | None = None     # the settings of the try that gave this judgment
    seed: int | None = None
    tries: list = field(default_factory=list)  # every try: temperature, seed, and raw answer or error


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


def build_messages(template: PromptTemplate, problem: str | None, set_a, set_b,
                   max_chars: int | None = 4000) -> list[dict]:
    return template.messages(
        problem=(problem or "(problem statement not provided)").strip(),
        n_a=len(set_a), n_b=len(set_b),
        set_a=format_set(set_a, "A", max_chars), set_b=format_set(set_b, "B", max_chars))


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
            atomic_write(self.dir / f"{key}.json", json.dumps(value))
        except UserError:
            pass  # a read-only cache only costs a repeat request next time


def _sha(text) -> str:
    return hashlib.sha256(str(text).encode()).hexdigest()


def request_key(cfg: JudgeConfig, template: PromptTemplate, problem: str | None, first, second,
                max_chars: int | None) -> str:
    """Hash of what determines a verdict: the template file, the judge model, the problem, each
    sample shown in its order (first set, then second), and the decoding settings. The endpoint URL
    is left out so the same model behind another server reuses verdicts."""
    blob = json.dumps({"template": template.sha256, "model": cfg.model,
                       "problem": _sha(problem or ""), "first": [_sha(s) for s in first],
                       "second": [_sha(s) for s in second], "max_chars": max_chars,
                       "temperature": cfg.temperature, "seed": cfg.seed,
                       "max_tokens": cfg.max_tokens, "schema": VERDICT_SCHEMA}, sort_keys=True)
    return _sha(blob)


# --------------------------------------------------------------------------- the judge

# HTTP statuses worth another try: timeouts, conflicts, rate limits and server errors
_RETRYABLE = {408, 409, 429}


class Judge:
    """Ask an OpenAI-compatible chat endpoint to compare two solution sets."""

    def __init__(self, config: JudgeConfig, client=None, template: PromptTemplate | None = None):
        if not config.model:
            raise UserError("the judge needs a model name")
        if config.max_retries < 0 or config.backoff < 0 or config.retry_nudge < 0:
            raise UserError("judge retries, backoff and retry nudge must be >= 0")
        self.cfg = config
        self.template = template or load_template(config.prompt_file)
        self.cache = JudgeCache(config.cache_dir) if config.cache_dir else None
        self._structured = config.structured
        self._lock = threading.Lock()
        self._preflight: str | None = None if config.preflight else "skipped"  # "ok" or the failure
        self.n_requests = 0  # requests actually sent (cache hits excluded, the preflight included)
        if client is None:
            try:
                import openai
            except ImportError as e:
                raise UserError("the LLM judge needs the 'openai' package") from e
            # retries are ours (below), so a garbled answer is retried like a failed request
            client = openai.OpenAI(base_url=config.base_url,
                                   api_key=os.environ.get(config.api_key_env) or "EMPTY",
                                   timeout=config.timeout, max_retries=0)
        self.client = client

    def compare(self, problem: str | None, set_a, set_b, max_chars: int | None = 4000) -> Judgment:
        """Judge set A against set B (in this order). Never raises for endpoint trouble past the
        preflight (JudgeUnreachable when that fails)."""
        set_a, set_b = list(set_a), list(set_b)
        messages = build_messages(self.template, problem, set_a, set_b, max_chars)
        key = request_key(self.cfg, self.template, problem, set_a, set_b, max_chars)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and hit.get("status") == "ok":
                known = {k: v for k, v in hit.items() if k in Judgment.__dataclass_fields__}
                return Judgment(**{**known, "cached": True, "key": key, "attempts": 0})
        self.preflight()
        judgment = self._ask(messages, key)
        if judgment.status == "ok" and self.cache is not None:
            record = asdict(judgment)
            for transient in ("cached", "key", "attempts"):
                record.pop(transient)
            self.cache.put(key, record)  # failures are never cached: the next run asks again
        return judgment

    def _ask(self, messages, key: str) -> Judgment:
        """Up to 1 + max_retries tries: a failed request again as it was (after a backoff), an
        unparseable answer with the next seed and a nudged temperature, until an answer repeats."""
        tries, garbled, answers = [], 0, set()
        for attempt in range(self.cfg.max_retries + 1):
            temperature = self.cfg.temperature + self.cfg.retry_nudge * garbled
            seed = None if self.cfg.seed is None else self.cfg.seed + garbled
            text, error, retryable = self._request(messages, temperature, seed)
            tries.append({"temperature": temperature, "seed": seed, "raw": text, "error": error})
            done = dict(key=key, attempts=attempt + 1, temperature=temperature, seed=seed, tries=tries)
            if text is None:
                judgment = Judgment(status="unavailable", error=error, **done)
                if not retryable:
                    break
                if attempt < self.cfg.max_retries:
                    time.sleep(self.cfg.backoff * 2 ** attempt)
                continue
            verdict = parse_verdict(text)
            if verdict is not None:
                return Judgment(status="ok", raw=text, **done, **verdict)
            repeated = text in answers
            judgment = Judgment(status="unparseable", raw=text, **done, error="no valid verdict JSON"
                                + (" (the same answer as an earlier try: retries stopped)" if repeated else ""))
            if repeated:
                break
            answers.add(text)
            garbled += 1
        return judgment

    def preflight(self) -> None:
        """Once per judge, before its first real request: one short request that must reach the
        endpoint and be accepted (a busy or failing server is left to the requests' retries)."""
        import openai

        with self._lock:
            if self._preflight is None:
                self._preflight = self._preflight_request(openai)
            failure = self._preflight
        if failure not in ("ok", "skipped"):
            raise JudgeUnreachable(failure)

    def _preflight_request(self, openai) -> str:
        where = f"judge endpoint {self.cfg.base_url or 'api.openai.com'} (model {self.cfg.model})"
        self.n_requests += 1
        try:
            self.client.chat.completions.create(
                model=self.cfg.model, messages=[{"role": "user", "content": PREFLIGHT_PROMPT}],
                max_tokens=1, temperature=0.0,
                timeout=openai.Timeout(self.cfg.timeout, connect=min(PREFLIGHT_CONNECT_S, self.cfg.timeout)))
        except openai.APIStatusError as e:
            if e.status_code in UNREACHABLE_STATUS:
                return f"{where} refused the preflight request: HTTP {e.status_code}: {_short(e)}"
        except openai.APITimeoutError:
            return "ok"  # connected but slow: the requests' own timeout and retries deal with it
        except openai.APIConnectionError as e:
            return f"{where} cannot be reached: {_short(e)}"
        except Exception:  # noqa: BLE001 - a half-compatible server: let the real requests tell
            return "ok"
        return "ok"

    def _request(self, messages, temperature: float, seed: int | None) -> tuple[str | None, str | None, bool]:
        """(text, None, True) on an answer, (None, error, retryable) when the request failed."""
        import openai

        kwargs = dict(model=self.cfg.model, messages=messages, temperature=temperature,
                      max_tokens=self.cfg.max_tokens)
        if seed is not None:
            kwargs["seed"] = seed
        structured = self._structured
        if structured:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "path_diversity_verdict", "schema": VERDICT_SCHEMA, "strict": True}}
        text, error, retryable, code = self._send(openai, kwargs)
        if structured and code in (400, 404, 415, 422, 501):
            kwargs.pop("response_format")
            plain = self._send(openai, kwargs)
            if plain[0] is not None:  # the schema was the trouble: plain text from now on, said once
                self._downgrade(error)
            return plain[:3]
        return text, error, retryable

    def _send(self, openai, kwargs) -> tuple[str | None, str | None, bool, int | None]:
        with self._lock:
            self.n_requests += 1
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except openai.APIStatusError as e:
            code = e.status_code
            return None, f"HTTP {code}: {_short(e)}", code in _RETRYABLE or code >= 500, code
        except openai.APITimeoutError:
            return None, f"timed out after {self.cfg.timeout:g}s", True, None
        except openai.APIConnectionError as e:
            return None, f"connection failed: {_short(e)}", True, None
        except Exception as e:  # anything else from a half-compatible server: report, go on
            return None, f"{type(e).__name__}: {_short(e)}", False, None
        try:
            text = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            text = None
        return (text or ""), None, True, None

    def _downgrade(self, error: str) -> None:
        with self._lock:
            if not self._structured:
                return
            self._structured = False
        print(f"dlm-bench judge: the endpoint rejected structured output ({error}) and answered the same "
              "request as plain text: asking for plain-text JSON from now on", file=sys.stderr)


def _short(e: Exception, limit: int = 200) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[:limit] + "..."
