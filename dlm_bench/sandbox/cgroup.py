"""A memory cgroup per warm sandbox, where the machine allows it (root; cgroup v1 memory controller,
or v2 with the memory controller delegated to our cgroup).

A warm sandbox runs one program at a time, so its cgroup's limit, set before each program, bounds
that program's processes together, with their tmpfs files, SysV and POSIX shared memory and memfds
(all charged to the cgroup). Where no cgroup can be made, `create()` returns None and only the
rlimits apply (docs/sandbox.md says what they do not cover).
"""
from __future__ import annotations

import atexit
import itertools
import os
from pathlib import Path

_V1, _V2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
_IDS = itertools.count()
_MADE: list[Path] = []


def _own_dir() -> tuple[Path, int] | None:
    """(the folder of this process's memory cgroup, version) or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(",") and (_V1 / "memory.limit_in_bytes").exists():
            return _V1 / path.lstrip("/"), 1
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if ctrls == "" and "memory" in _read(_V2 / path.lstrip("/") / "cgroup.subtree_control").split():
            return _V2 / path.lstrip("/"), 2
    return None


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


class MemoryCgroup:
    def __init__(self, path: Path, version: int):
        self.path, self.v = path, version
        self.limit_file = path / ("memory.limit_in_bytes" if version == 1 else "memory.max")
        self.swap_file = path / ("memory.memsw.limit_in_bytes" if version == 1 else "memory.swap.max")
        self.usage_file = path / ("memory.usage_in_bytes" if version == 1 else "memory.current")
        self.events_file = path / ("memory.oom_control" if version == 1 else "memory.events")
        self.oom0 = 0

    def wrap(self, argv: list[str]) -> list[str]:
        """argv that joins this cgroup before it starts (so nothing it forks escapes it); if joining
        fails the sandbox still starts, bounded by its rlimits alone."""
        return ["/bin/sh", "-c", '{ echo $$ > "$0"; } 2>/dev/null; exec "$@"', str(self.path / "cgroup.procs")] + argv

    def start_job(self, memory_bytes: int) -> None:
        """Limit = what the idle sandbox uses now + the program's budget (no swap beyond it)."""
        limit = int(_read(self.usage_file) or 0) + memory_bytes
        swap = str(limit) if self.v == 1 else "0"
        # v1 wants memsw >= limit at every moment: whichever order fails first succeeds second
        for f, v in ((self.swap_file, swap), (self.limit_file, str(limit)), (self.swap_file, swap)):
            try:
                f.write_text(v)
            except OSError:
                pass  # e.g. no swap accounting: the memory limit alone still holds
        self.oom0 = self.oom_kills()

    def oom_kills(self) -> int:
        for line in _read(self.events_file).splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
        return 0

    def job_oom_killed(self) -> bool:
        return self.oom_kills() > self.oom0

    def remove(self) -> None:
        try:
            self.path.rmdir()
            _MADE.remove(self.path)
        except (OSError, ValueError):
            pass


def create() -> MemoryCgroup | None:
    if os.geteuid() != 0:
        return None
    own = _own_dir()
    if own is None:
        return None
    path = own[0] / f"dlm-bench-{os.getpid()}-{next(_IDS)}"
    try:
        path.mkdir()
    except OSError:
        return None
    _MADE.append(path)
    return MemoryCgroup(path, own[1])


@atexit.register
def _cleanup() -> None:  # the sandboxes die with the harness; their empty cgroups go too
    for p in list(_MADE):
        try:
            p.rmdir()
        except OSError:
            pass
