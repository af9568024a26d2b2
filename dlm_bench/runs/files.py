"""Every file the harness writes goes through here, under one durability rule.

- Atomic writes (`atomic_write`, `write_json`, `swap_in_dir`): write aside, fsync the data, rename over
  the target, fsync the folder. A reader or a killed run sees the old file or the new one, never half.
- Appends (`append_lines`): whole lines in one unbuffered write, then fsync; a failed write is cut back,
  so a file holds at most one torn last line (from a kill), which `repair_tail` cuts and `read_jsonl`
  ignores.
- Modes honour the umask (0644 / 0755 under the usual 022), as any file a shell makes would.
  `tempfile.mkstemp` / `mkdtemp` create 0600 / 0700, right for secrets but wrong for records, results
  and checkpoints that others read.
Locks (who may write a folder, and when) are `dlm_bench.runs.locks`.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from dlm_bench.errors import UserError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def umask() -> int:
    """The process umask, read without changing it (os.umask can only set, and other threads would
    see the temporary value)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)            # no /proc: the classic swap
    os.umask(old)
    return old


def share_file(fd: int) -> None:
    """Give a file made by mkstemp the mode a plain open() would have given it."""
    os.fchmod(fd, 0o666 & ~umask())


def share_tree(root) -> None:
    """Plain mkdir / open() modes for a folder a library wrote (transformers' save_pretrained
    writes weight files 0600 through a temporary file)."""
    mask = umask()
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def write_failed(path: Path, e: OSError) -> UserError:
    """The one-line error for a write the disk refused."""
    if e.errno in _NO_SPACE:
        return UserError(f"cannot write {path}: {e.strerror}; the records written so far are kept, "
                         "free space and re-run to resume")
    return UserError(f"cannot write {path}: {e.strerror}")


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where the OS cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Replace `path` with `data` atomically (write aside + fsync + rename + fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        share_file(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_failed(path, e) from None
        raise
    fsync_dir(path.parent)


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    """Write JSON atomically, one trailing newline."""
    atomic_write(path, json.dumps(obj, indent=indent, default=str) + "\n")


def append_lines(path: str | Path, lines: list[str]) -> None:
    """Append whole lines in one write + fsync; on failure the file is cut back to its old size."""
    if not lines:
        return
    path = Path(path)
    data = memoryview(("\n".join(lines) + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:               # unbuffered: nothing is left to fail again on close
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass  # the next repair_tail cuts a torn tail anyway
            raise write_failed(path, e) from None
    finally:
        os.close(fd)


def repair_tail(path: str | Path) -> int:
    """Cut a torn last line (no newline, or not valid JSON) off a JSONL file; returns bytes removed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    size = path.stat().st_size
    with open(path, "rb+") as f:
        data = f.read()
        keep = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
        # A complete-looking last line that does not parse is torn too (a kill inside a write).
        while keep > 0:
            start = data.rfind(b"\n", 0, keep - 1) + 1
            try:
                json.loads(data[start:keep])
                break
            except ValueError:
                keep = start
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return size - keep


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (from a kill) is ignored, corruption elsewhere is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1 or (i == len(lines) - 2 and not lines[-1]):
                break  # the last line: torn by a kill
            raise UserError(f"{path}: line {i + 1} is not valid JSON (corrupt file)") from None
    return rows


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh hidden folder beside `parent/name` to build a whole folder in before `swap_in_dir`."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}-", dir=parent))


def swap_in_dir(staged: Path, final: Path) -> None:
    """Put the folder `staged` in place of `final` atomically: a kill leaves the old folder or the new
    one (the old one parked as `.NAME-old` between the two renames, which `recover_dir` restores)."""
    share_tree(staged)                 # mkdtemp's 0700 and libraries' 0600: others read these too
    old = final.parent / f".{final.name}-old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path, complete: str) -> bool:
    """Whether `final` holds a complete folder (the file `complete` in it), first restoring the parked
    old folder if a kill came between `swap_in_dir`'s two renames."""
    if (final / complete).is_file():
        return True
    old = final.parent / f".{final.name}-old"
    if (old / complete).is_file():
        os.replace(old, final)
        return True
    return False
