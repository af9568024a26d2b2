"""Nothing a program creates outlives its job (issue 26): it plants a kernel key, SysV objects handed
to another owner, a POSIX message queue, files and a process, and the host finds none of them after
the job. Key, mqueue and namespace system calls are refused by the seccomp filter."""
import json
import os
import shutil
import subprocess
import time

import pytest

from dlm_bench import sandbox as sb
from dlm_bench.sandbox import launch

ISO = sb.isolation()
needs_bwrap = pytest.mark.skipif(ISO != sb.BWRAP, reason="bubblewrap unavailable here (rlimits-only)")

# Each step reports what the kernel answered: >= 0 it worked, < 0 the negated errno.
PLANT = r'''
import ctypes, json, os, platform
libc = ctypes.CDLL(None, use_errno=True)
rt = ctypes.CDLL("librt.so.1", use_errno=True)
def res(rc):
    return rc if rc >= 0 else -ctypes.get_errno()
NR = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]  # add_key, keyctl
out = {"uid": os.getuid()}
key = libc.syscall(NR[0], b"user", b"MARKER-key", b"secret", 6, -4)      # into the user keyring
out["add_key"] = res(key)
out["keyctl"] = res(libc.syscall(NR[1], 0, -4, 1))                        # KEYCTL_GET_KEYRING_ID, create
if key >= 0:
    libc.syscall(NR[1], 5, key, 0x3f3f3f3f)                               # readable by every uid
# SysV objects, each handed to root with IPC_SET (so a scrub by owner would miss them)
class Perm(ctypes.Structure):
    _fields_ = [("key", ctypes.c_int), ("uid", ctypes.c_uint), ("gid", ctypes.c_uint), ("cuid", ctypes.c_uint),
                ("cgid", ctypes.c_uint), ("mode", ctypes.c_ushort), ("pad", ctypes.c_byte * 30)]
class Ds(ctypes.Structure):
    _fields_ = [("perm", Perm), ("rest", ctypes.c_byte * 256)]
class SemUn(ctypes.Union):
    _fields_ = [("val", ctypes.c_int), ("buf", ctypes.POINTER(Ds))]
for kind, make, ctl in (("shm", lambda: libc.shmget(0x26A001, 4096, 0o1666), lambda i, c, d: libc.shmctl(i, c, d)),
                        ("sem", lambda: libc.semget(0x26A002, 1, 0o1666),
                         lambda i, c, d: libc.semctl(i, 0, c, SemUn(buf=ctypes.pointer(d)))),
                        ("msg", lambda: libc.msgget(0x26A003, 0o1666), lambda i, c, d: libc.msgctl(i, c, d))):
    ident, ds = make(), Ds()
    out[kind] = res(ident)
    if ident >= 0 and ctl(ident, 2, ctypes.byref(ds) if kind != "sem" else ds) == 0:   # IPC_STAT
        ds.perm.uid = ds.perm.gid = 0
        out[kind + "_owner_root"] = res(ctl(ident, 1, ctypes.byref(ds) if kind != "sem" else ds))  # IPC_SET
q = rt.mq_open(b"/MARKER-q", os.O_CREAT | os.O_RDWR, 0o666, None)
out["mq_open"] = res(q)
out["unshare_user"] = res(libc.unshare(0x10000000))
out["unshare_ipc"] = res(libc.unshare(0x08000000))
for path in ("/tmp/MARKER", "/dev/shm/MARKER", "MARKER"):
    try:
        open(path, "w").write("x")
        out[path] = 0
    except OSError as e:
        out[path] = -e.errno
if os.fork() == 0:
    os.setsid()
    os.execv("/bin/sleep", ["sleep", "MARKER-proc"])
print(json.dumps(out))
'''


def plant(marker: str) -> dict:
    r = sb.run(sb.Program(PLANT.replace("MARKER", marker), timeout=20))
    assert r.status == "ok", r
    return json.loads(r.stdout)


@needs_bwrap
def test_keys_mqueues_and_namespaces_are_refused():
    got = plant(f"h26-{os.getpid()}-a")
    eperm = -1
    assert {k: got[k] for k in ("add_key", "keyctl", "mq_open", "unshare_user", "unshare_ipc")} == dict.fromkeys(
        ("add_key", "keyctl", "mq_open", "unshare_user", "unshare_ipc"), eperm), got
    assert got["shm"] >= 0 and got["sem"] >= 0 and got["msg"] >= 0  # SysV works (and is scrubbed)
    # what programs legitimately do still works under the filter: threads, fork, subprocess
    src = ("import threading, subprocess, os\nout = []\nt = threading.Thread(target=out.append, args=(1,))\n"
           "t.start(); t.join()\npid = os.fork()\nif pid == 0:\n    os._exit(7)\n"
           "print(out, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]),"
           " subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout.strip())\n")
    r = sb.run(sb.Program(src, timeout=20))
    assert (r.status, r.stdout) == ("ok", "[1] 7 hi\n"), r


def _server_pid(server) -> int:
    """The warm sandbox's Python server: the descendant of its bwrap that runs the interpreter."""
    kids: dict[int, list[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(p))
        except OSError:
            pass
    todo = [server.proc.pid]
    while todo:
        pid = todo.pop()
        try:
            if os.readlink(f"/proc/{pid}/exe") == launch.PYTHON:
                return pid
        except OSError:  # a process that just ended
            pass
        todo += kids.get(pid, [])
    raise AssertionError("no server process found")


def _host_view_of(server, tmp_path) -> dict:
    """What the host sees of a warm sandbox (root): its IPC namespace's SysV objects and message
    queues, and the files of its private mounts."""
    pid = _server_pid(server)
    ns = f"/proc/{pid}/ns/ipc"
    sysv = {k: subprocess.run(["nsenter", f"--ipc={ns}", "cat", f"/proc/sysvipc/{k}"], capture_output=True,
                              text=True, check=True).stdout.splitlines()[1:] for k in ("shm", "sem", "msg")}
    mnt = tmp_path / "mqueue"
    mnt.mkdir()
    queues = subprocess.run(["nsenter", f"--ipc={ns}", "unshare", "--mount", "sh", "-c",
                             'mount -t mqueue none "$0" && ls -A "$0"', str(mnt)],
                            capture_output=True, text=True, check=True).stdout.split()
    root = f"/proc/{pid}/root"
    files = [f"{top}/{e}" for top in ("/tmp", "/dev/shm", "/sandbox") for e in os.listdir(root + top)]
    return {"sysv": sysv, "mqueues": queues, "files": files}


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("nsenter") and shutil.which("unshare")),
                    reason="the host view of a warm sandbox needs a root harness and util-linux")
def test_nothing_outlives_the_job_as_seen_from_the_host(tmp_path):
    marker = f"h26-{os.getpid()}-{int(time.time()) % 100000}"
    while not launch._IDLE.empty():  # one fresh warm sandbox, so the host can look into it afterwards
        launch._IDLE.get().close()
    got = plant(marker)
    assert got["shm_owner_root"] == got["sem_owner_root"] == got["msg_owner_root"] == 0, got  # planted
    assert len(launch._IDLE.queue) == 1  # its scrub found nothing left, so it was kept: look inside it
    view = _host_view_of(launch._IDLE.queue[0], tmp_path)
    assert view == {"sysv": {"shm": [], "sem": [], "msg": []}, "mqueues": [], "files": []}, view
    with open("/proc/keys") as f:
        assert marker not in f.read()
    with open("/proc/key-users") as f:  # no key, keyring or quota record of the job's uid in the kernel
        assert [row for row in f if row.split(":")[0].strip() == str(got["uid"])] == []
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert marker not in ps


def test_no_filter_means_no_sandbox(monkeypatch, tmp_path, capsys):
    """Where the seccomp filter cannot be built (no libseccomp or no bindings), bubblewrap counts
    as unusable: code tasks stop with one line and exit code 2, as without bubblewrap."""
    import sys
    from dlm_bench.cli import main
    from dlm_bench.sandbox import syscall_filter
    syscall_filter.bpf.cache_clear()
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # as if not installed
    with pytest.raises(syscall_filter.FilterUnavailable, match="pyseccomp"):
        syscall_filter.bpf()
    monkeypatch.setattr(launch, "_ISO", None)
    monkeypatch.setenv(sb.ENV_VAR, sb.BWRAP)
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"problem_id": "HumanEval/0", "completion": "```python\nx = 1\n```"}) + "\n")
    assert main(["grade", "humaneval", str(src), "-o", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seccomp" in err[0] and "Traceback" not in err[0], err
    monkeypatch.undo()
    syscall_filter.bpf.cache_clear()
    assert syscall_filter.bpf()  # and back to normal
