"""The harness's end of a sandboxed call server: send a request, wait (bounded) for its answer.

One Session per program. The program's answers are decoded by `sandbox.codec.loads` into exact
built-in values or `Remote` handles; nothing the program sends is ever executed or trusted
beyond that. Any misbehaviour (exit, silence past the deadline, malformed frames, an answer that
is not plain data) breaks the session: from then on every request raises `Gone`, so test code
cannot catch its way past a failure. See docs/sandbox.md.
"""
from __future__ import annotations

import builtins
import os
import selectors
import time

from dlm_bench.sandbox import codec

STDERR_KEEP = 16384
_GRACE = 0.5  # after the program exits, how long to drain what it wrote


class Gone(BaseException):
    """The program stopped being a well-behaved call server; the verdict is `session.broken`.
    A BaseException, so that test code's `except Exception:` cannot swallow it."""


class RemoteError(Exception):
    """The program raised an exception that is not a built-in one (its own class, ...)."""


_BUILTIN_EXC = {n: v for n, v in vars(builtins).items()
                if isinstance(v, type) and issubclass(v, Exception) and n != "MemoryError"}


class Remote:
    """An object that stays in the sandbox. Equal only to itself, no truth value, no dunders
    forwarded: it can never pass for an expected value. `opaque` remotes (the solution's helpers
    the tests name, e.g. MBPP's Node class) answer every call and attribute with another opaque
    remote, so test code can build inputs with them but never compute an expected value."""
    __slots__ = ("_session", "_kind", "_ref", "_opaque")

    def __init__(self, session, kind, ref, opaque):
        for k, v in (("_session", session), ("_kind", kind), ("_ref", ref), ("_opaque", opaque)):
            object.__setattr__(self, k, v)

    def __call__(self, *args, **kwargs):
        return self._session.request("call", self, None, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):  # copy/pickle/format probes: not forwarded
            raise AttributeError(name)
        return self._session.request("get", self, name)

    def __setattr__(self, name, value):
        self._session.request("set", self, name, (value,))

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError("a remote object has no truth value")

    def __repr__(self):
        return f"<remote {self._ref if self._kind == 'g' else 'object'}>"


class Session:
    """Frames over the program's pipes; `request` is the only way in."""

    def __init__(self, proc, fds: list, t0: float, timeout: float, per_call: float, max_output: int):
        cfg = fds.pop()
        self.stdin_w, self.out_r, self.err_r, self.req_w, self.res_r = fds
        fds.clear()  # this session owns (and closes) them now
        self.proc, self.per_call, self.max_output = proc, per_call, max_output
        self.deadline = t0 + timeout
        self.sel = selectors.DefaultSelector()
        self.res, self.out, self.err, self.pending = bytearray(), bytearray(), bytearray(), bytearray(cfg)
        self.out_bytes, self.seq, self.exited = 0, 0, None
        self.res_bytes, self.nodes = 0, [codec.MAX_NODES]  # what the whole run may return, in all
        self.broken: tuple[str, str] | None = None  # (status, detail) once the program failed
        self._asked, self._opaque_reply = t0, False
        for fd in (self.out_r, self.err_r, self.req_w, self.res_r):
            os.set_blocking(fd, False)
        os.close(self.stdin_w)  # the program's stdin is empty
        for fd in (self.out_r, self.err_r, self.res_r):
            self.sel.register(fd, selectors.EVENT_READ)

    # ---- frames ------------------------------------------------------------------------------

    def frame(self, deadline: float) -> bytes:
        """The next frame the program sends; breaks the session (and raises Gone) on any failure."""
        while True:
            if len(self.res) >= 4:
                n = int.from_bytes(self.res[:4], "big")
                if n > self.max_output:
                    self.fail("failed", f"sent a frame of {n} bytes (limit {self.max_output})")
                if len(self.res) >= 4 + n:
                    self.res_bytes += n
                    if self.res_bytes > self.max_output:  # (call mode keeps every value to the end)
                        self.fail("output_limit", f"returned more than {self.max_output} bytes in all")
                    data = bytes(self.res[4:4 + n])
                    del self.res[:4 + n]
                    return data
            now = time.monotonic()
            if now >= min(deadline, self.deadline):
                self.fail("timeout", "no answer within %gs" % (min(deadline, self.deadline) - self._asked)
                          if deadline < self.deadline else "exceeded the wall-clock limit")
            if self.exited is None and self.proc.exited():
                self.exited = now
            if self.exited is not None and now - self.exited > _GRACE:
                self.fail("gone", "")
            if self.pending:
                try:
                    del self.pending[:os.write(self.req_w, self.pending[:65536])]
                except BlockingIOError:
                    pass
                except OSError:
                    self.fail("gone", "")
            for key, _ in self.sel.select(0.0005 if self.pending else min(0.05, max(0.0, deadline - now))):
                try:
                    data = os.read(key.fd, 1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.sel.unregister(key.fd)
                    if key.fd == self.res_r:
                        self.fail("gone", "")
                    continue
                if key.fd == self.res_r:
                    self.res += data
                elif key.fd == self.err_r:
                    self.err += data
                    del self.err[:-2 * STDERR_KEEP]
                else:
                    self.out_bytes += len(data)
                    if len(self.out) < self.max_output:
                        self.out += data[:self.max_output - len(self.out)]
                    if self.out_bytes > self.max_output:
                        self.fail("output_limit", f"more than {self.max_output} bytes of output")

    def message(self, deadline: float) -> list:
        frame = self.frame(deadline)
        try:  # bounded in size, nesting and collisions, and by the run's deadline: no frame stalls us
            msg = codec.loads(frame, self._remote, self.nodes, self.deadline)
        except codec.DecodeTimeout:
            self.fail("timeout", "exceeded the wall-clock limit (while decoding what it sent)")
        except codec.PlainDataError as e:
            self.fail("failed", f"sent something that is not plain data: {e}")
        if type(msg) is not list or not msg:
            self.fail("failed", "sent a malformed message")
        return msg

    def fail(self, status: str, detail: str):
        if self.broken is None:
            self.broken = (status, detail)
        raise Gone(status)

    def _remote(self, n: int) -> Remote:
        return Remote(self, "h", n, self._opaque_reply)

    # ---- requests ----------------------------------------------------------------------------

    def request(self, op: str, target: Remote, name=None, args=(), kwargs=None):
        """op "call" / "get" / "set" on `target`; the plain answer, or a Remote, or the
        program's exception re-raised here as the same built-in type."""
        if self.broken:
            raise Gone(self.broken[0])
        seq, self.seq = self.seq, self.seq + 1
        opaque = target._opaque
        ref = target._ref if target._kind == "g" else target
        try:
            msg = codec.dumps([seq, op, target._kind, ref, name, list(args), dict(kwargs or {}), opaque],
                              self._handle)
        except codec.PlainDataError as e:  # the tests', not the program's, fault
            self.fail("sandbox_error", f"a test argument cannot be sent to the sandbox: {e}")
        self.pending += len(msg).to_bytes(4, "big") + msg
        self._asked = time.monotonic()
        self._opaque_reply = opaque
        reply = self.message(self._asked + self.per_call)
        if len(reply) < 3 or reply[0] != seq or reply[1] not in ("ok", "raise", "bad_value"):
            self.fail("failed", "answered out of turn")
        if reply[1] == "ok":
            if opaque and type(reply[2]) is not Remote:
                self.fail("failed", "answered an opaque request with a value")
            return reply[2]
        if reply[1] == "bad_value":
            self.fail("failed", f"returned something that is not plain data ({str(reply[2])[:200]})")
        kind, text = (reply[2], reply[3]) if len(reply) == 4 and all(type(x) is str for x in reply[2:]) else ("", "")
        if kind == "MemoryError":
            self.fail("memory", text)
        if kind in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
            self.fail("runtime_error", f"raised {kind} during the tests")
        raise _BUILTIN_EXC.get(kind, RemoteError)(text)

    def _handle(self, obj) -> int:
        if type(obj) is Remote and obj._session is self and obj._kind == "h":
            return obj._ref
        raise codec.PlainDataError(f"{type(obj).__name__} is not plain data")

    def close(self) -> None:
        self.sel.close()
        for fd in (self.out_r, self.err_r, self.req_w, self.res_r):
            try:
                os.close(fd)
            except OSError:
                pass
