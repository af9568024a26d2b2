"""Code verdicts computed in the harness: trusted test code runs here against proxies of the program.

mode "check" (HumanEval, MBPP): the program (solution) is loaded in the sandbox and serves calls.
Here, `setup` and `tests` (the dataset's code) run in a fresh namespace with fresh builtins; the
names in `expose` are `Remote` proxies whose calls go to the sandbox and come back as plain data.
Other names the tests use that only the solution defines (MBPP's Node class) are opaque proxies;
standard-library modules are imported here. Every statement of the tests runs whatever the
answers were (no_oracle.py: the calls a program sees never tell it whether it was right); a check
passes only if none failed and the session never broke. mode "call" (LiveCodeBench functional):
call `cls().func(*args)` once per input; RunResult.values holds the plain results (Remote for
anything else).
See docs/sandbox.md for the protocol.
"""
from __future__ import annotations

import builtins
import dis
import functools
import importlib
import json
import math
import signal
import sys
import time

from dlm_bench.sandbox import launch
from dlm_bench.sandbox import no_oracle
from dlm_bench.sandbox.session import Gone, Remote, Session


def run(p: launch.Program, iso: str) -> launch.RunResult:
    with launch.launch(p, iso, {"mode": "serve"}) as (proc, fds, t0):
        per_call = p.per_call if p.mode == "call" else p.timeout  # check: the whole budget, as before
        s = Session(proc, fds, t0, p.timeout, per_call, p.max_output)
        values: list = []
        try:
            status, detail = _load(s)
            if status == "ok" and p.mode == "check":
                status, detail = _check(s, p)
            elif status == "ok":
                status, detail = _calls(s, p, values)
        except Gone:
            status, detail = s.broken
        finally:
            s.close()  # end of requests: a healthy runner exits at once
            rc = proc.wait(1.0 if s.broken and s.broken[0] == "gone" else 0.05)  # its own exit code
            proc.kill()
            rc = proc.wait(5.0) if rc is None else rc
        if status == "gone":
            status, detail = _why_gone(s, rc, time.monotonic() - t0, p, proc.oom_killed())
    err = s.err[-launch.STDERR_KEEP:].decode("utf-8", "replace")
    return launch.RunResult(status, s.out.decode("utf-8", "replace"), err, rc,
                             round(time.monotonic() - t0, 4), iso, detail[:300], tuple(values))


def _load(s: Session) -> tuple[str, str]:
    """Wait for the solution to load: ("ok", "") once it serves calls."""
    try:
        first = s.message(s.deadline)
    except Gone:
        if s.broken[0] == "gone":  # not even the runner's first frame: the sandbox itself failed
            s.broken = ("sandbox_error", "runner did not start: " + _last_line(s))
        raise
    if first != ["loading"]:
        s.fail("sandbox_error", f"runner sent {str(first)[:80]} first")
    msg = s.message(s.deadline)
    kind = msg[0]
    if kind == "ready":
        return "ok", ""
    text = str(msg[-1]) if len(msg) > 1 else ""
    if kind == "syntax_error":
        return "syntax_error", text
    if kind == "load_error":
        memory = len(msg) > 2 and msg[1] == "MemoryError"
        return ("memory" if memory else "runtime_error"), "while loading the solution: " + text
    s.fail("failed", "sent a malformed message while loading")


def _check(s: Session, p: launch.Program) -> tuple[str, str]:
    """Run setup, then every statement of the tests (no_oracle: the calls the program sees do not
    depend on whether its answers were right); the first failure is the verdict."""
    ns = {"__builtins__": dict(vars(builtins)), "__name__": "__tests__"}  # nothing of the solution's
    try:
        setup, tests, names = _compiled(p.setup, p.tests)
    except SyntaxError as e:
        return "sandbox_error", f"the benchmark's test code does not compile: {e}"
    for name in names:  # may be overwritten by setup (prompt helpers)
        if name in sys.stdlib_module_names:
            ns[name] = importlib.import_module(name)
        elif name not in p.expose and not hasattr(builtins, name):
            ns[name] = Remote(s, "g", name, True)
    failures = no_oracle.Failures(s)
    ns.update(failures.names())
    try:
        exec(setup, ns)
        ns.update({name: Remote(s, "g", name, False) for name in p.expose})
        exec(tests, ns)
    except Gone:
        if failures.first is None:
            raise
    except BaseException as e:  # noqa: BLE001 - outside a guarded statement (setup, a class body)
        failures(e)
    e = failures.first
    if e is not None:
        if isinstance(e, AssertionError):
            return "failed", _where(e, p.tests)
        return "runtime_error", f"{type(e).__name__}: {e}"
    if s.broken:  # the tests swallowed the failure (a bare except)
        raise Gone(s.broken[0])
    return "ok", ""


def _calls(s: Session, p: launch.Program, values: list) -> tuple[str, str]:
    for i, raw in enumerate(p.inputs):
        args = json.loads(raw)
        try:
            fn = Remote(s, "g", p.func, False)
            if p.cls:
                fn = getattr(Remote(s, "g", p.cls, False)(), p.func)  # a fresh instance per test
            values.append(fn(*args))
        except Gone:
            if s.broken[0] == "timeout":
                s.broken = ("timeout", f"call {i} exceeded {p.per_call:g}s")
            return s.broken
        except Exception as e:  # noqa: BLE001 - the solution raised
            return "runtime_error", f"call {i}: {type(e).__name__}: {e}"
    return "ok", ""


def _why_gone(s: Session, rc, duration: float, p: launch.Program, oom: bool) -> tuple[str, str]:
    """The program stopped answering: memory, timeout at the CPU limit, or just an exit."""
    if oom:
        return "memory", f"killed at the memory cgroup's limit ({p.memory_mb} MB for the program)"
    cpu = math.ceil(p.timeout) + 1  # as launch.limits
    sig = -rc if rc is not None and rc < 0 else (rc - 128 if rc and rc > 128 else None)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and duration >= cpu - 1):
        return "timeout", f"killed by signal {sig} at the CPU limit ({cpu}s)"
    if b"MemoryError" in s.err[-2000:]:
        return "memory", "MemoryError"
    return "runtime_error", f"the program stopped answering (code {rc}): {_last_line(s)}"


@functools.lru_cache(maxsize=4096)  # the same tests grade every sample of a problem
def _compiled(setup: str, tests: str):
    """(setup code, tests code, the global names they read, sorted)."""
    codes = (compile(setup, "setup.py", "exec", dont_inherit=True), no_oracle.every_statement(tests))
    names = set().union(*map(_globals_read, codes)) - set(no_oracle.INJECTED)
    return codes + (sorted(names),)


def _globals_read(code) -> set[str]:
    out = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for c in code.co_consts:
        if hasattr(c, "co_code"):
            out |= _globals_read(c)
    return out


def _where(e: AssertionError, tests: str) -> str:
    tb, line = e.__traceback__, 0
    while tb is not None:
        line = tb.tb_lineno if tb.tb_frame.f_code.co_filename == "tests.py" else line
        tb = tb.tb_next
    lines = tests.splitlines()
    text = lines[line - 1].strip()[:200] if 0 < line <= len(lines) else ""
    return f"AssertionError at tests line {line}: {text}"


def _last_line(s: Session) -> str:
    lines = s.err.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:200] if lines else ""
