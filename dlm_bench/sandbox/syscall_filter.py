"""The seccomp filter that bubblewrap installs on every sandboxed program (`bwrap --seccomp FD`).

It refuses (EPERM) the system calls that make objects outliving a job, or a way out of the
sandbox's namespaces, so that no program can leave a message for a later one:
- kernel keys (`add_key`, `keyctl`, `request_key`): keys live in the kernel, not in any namespace
  the sandbox owns, and stay in the host's /proc/keys after the harness exits;
- POSIX message queues (`mq_*`): they live in the IPC namespace, which a warm sandbox keeps
  between jobs, and no scrub can list them from inside;
- new or foreign namespaces (`unshare`, `setns`, `clone` with a CLONE_NEW* flag): a nested user
  namespace gives a program every capability inside it (mounts, an mqueue filesystem, ...).
  `clone3` passes its flags in memory a filter cannot read, so it answers ENOSYS, and the C
  library falls back to `clone` (threads, fork, posix_spawn keep working).
Any other architecture's system calls (32-bit entry points) kill the process: libseccomp's
default for a filter built for the native architecture only.

Built with libseccomp through its ctypes bindings (`pyseccomp`, a project dependency; libseccomp2
itself comes with the OS, see the Makefile's system-deps). Where it cannot be built the sandbox is
unusable and code tasks stop with one line (sandbox/launch.py), as they do without bubblewrap.
"""
from __future__ import annotations

import errno
import functools
import os
import tempfile

REFUSED = ("add_key", "keyctl", "request_key",
           "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
           "unshare", "setns")
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME (linux/sched.h)
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                   0x40000000, 0x00000080)


class FilterUnavailable(RuntimeError):
    """The filter cannot be built here (no libseccomp or no bindings)."""


@functools.lru_cache(maxsize=1)
def bpf() -> bytes:
    """The compiled filter (classic BPF, as `bwrap --seccomp` reads it); built once per process."""
    try:
        import pyseccomp as seccomp  # raises RuntimeError where libseccomp itself is missing
    except (ImportError, RuntimeError, OSError) as e:
        raise FilterUnavailable(f"cannot load libseccomp's Python bindings (pyseccomp): {e}") from None
    try:
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        deny = seccomp.ERRNO(errno.EPERM)
        for name in REFUSED:
            f.add_rule(deny, name)
        for flag in CLONE_NEW_FLAGS:  # rules on one call are alternatives: any of the flags
            f.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            blob = out.read()
    except (OSError, RuntimeError, ValueError) as e:
        raise FilterUnavailable(f"libseccomp could not build the filter: {e}") from None
    if not blob or len(blob) % 8:
        raise FilterUnavailable(f"libseccomp exported {len(blob)} bytes, not a BPF program")
    return blob


def pipe_fd() -> int:
    """A readable fd holding the filter, for `bwrap --seccomp FD` (the caller closes it)."""
    blob = bpf()
    r, w = os.pipe()
    try:
        os.write(w, blob)  # a few hundred bytes: well within a pipe's buffer
    finally:
        os.close(w)
    return r
