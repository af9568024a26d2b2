"""Files and folders the harness writes honour the umask (0644 / 0755 under the usual 022), as any file
a shell makes would. `tempfile.mkstemp` / `mkdtemp` create 0600 / 0700, which is right for secrets
but wrong for records, results and checkpoints that others read; atomic writes go through here."""
from __future__ import annotations

import os


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
    from pathlib import Path
    mask = umask()
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
