"""Write a file so that a crash, a kill or a full disk never leaves half of it behind.

The content goes to a temporary file beside the target (same file system, so the rename is
atomic on POSIX) and is renamed into place only once complete. Lightning's own atomic save
stages checkpoints in the system temp dir and then *moves* them: a copy, not a rename, whenever
/tmp is another file system than the run directory (tmpfs, node-local disk vs shared storage).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _user_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path to write to; on success it replaces `path` (mode as any file the
    user writes), on any error it is removed and `path` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}")
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, _user_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
