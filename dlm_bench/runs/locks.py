"""Advisory file locks (fcntl.flock) that keep concurrent processes from losing each other's records.

- `folder_lock(dir)`: one writer per run folder for the whole run. A second writer gets a UserError
  naming the holder's pid (the CLI turns it into one line and exit 2), or blocks with `wait=True`.
  Re-entrant within a process, so a sweep's own finalize step (or simulated ranks) can take it again.
- `io_lock(dir, shared)`: held only around one file operation. Appends take it shared, a merge (read
  everything, rewrite the main file, delete shards) and a torn-tail repair take it exclusive, so a
  merge never drops lines another process appended while it was rewriting.

flock locks belong to the open file, so they vanish when the holder dies (even by kill -9): a stale
lock file never blocks anyone.
"""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from dlm_bench.checks import writable_dir
from dlm_bench.errors import UserError

RUN_LOCK = ".run.lock"
IO_LOCK = ".store.lock"

_held: dict[str, list] = {}   # resolved lock path -> [fd, depth]: this process's folder locks


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot create the lock file {str(path)!r}: {e.strerror}") from None


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "a process that is just starting"


@contextmanager
def folder_lock(folder: str | Path, wait: bool = False, what: str = "run folder"):
    """Hold the exclusive writer lock of `folder` (created if missing) for the `with` block."""
    d = writable_dir(folder, what, create=True)
    key = str((d / RUN_LOCK).resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _open(d / RUN_LOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise UserError(f"{what} {str(d)!r} is in use by {_holder(fd)}; wait for it to finish, "
                            "pass --wait to queue behind it, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = [fd, 1]
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock


def holder(folder: str | Path) -> str | None:
    """Who holds `folder`'s writer lock ("pid N"), or None when nobody does; creates nothing."""
    path = Path(folder) / RUN_LOCK
    if str(path.resolve()) in _held:
        return f"pid {os.getpid()} (this process)"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None                      # no lock file: never written by a locking writer
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)


@contextmanager
def io_lock(folder: str | Path, shared: bool):
    """A short shared (append) or exclusive (merge, repair) lock on `folder`'s store files."""
    d = Path(folder)
    try:
        fd = os.open(d / IO_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR) and not d.is_dir():
            raise UserError(f"run folder {str(d)!r} does not exist") from None
        raise UserError(f"cannot create the lock file in {str(d)!r}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
