"""Atomic file writes: a reader (or a run resumed after a kill) sees either the old file or the
complete new one, never a partial file.

The content goes to a hidden temporary file next to the target, is flushed to disk, and then
replaces the target with one `os.replace` (atomic on POSIX file systems). A kill before the
rename leaves the old file and a stray `.<name>.<pid>.tmp`, which nothing reads.
"""

import os
from contextlib import contextmanager


@contextmanager
def atomic_file(path, mode="w", **open_kwargs):
    """Open a temporary file for writing that replaces `path` when the block ends without an
    exception (on an exception `path` is left as it was and the temporary file is removed)."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomically(path, text):
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(text)
