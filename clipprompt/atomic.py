"""Atomic file writes: a reader (or a run resumed after a kill) sees either the old file or the
complete new one, never a partial file.

The content goes to a hidden temporary file next to the target, is flushed to disk, and then
replaces the target with one `os.replace` (atomic on POSIX file systems). A kill before the
rename leaves the old file and a stray `.<name>.<pid>.tmp`, which nothing reads.
"""

import errno
import os
from contextlib import contextmanager

# What each write error asks the user to do (anything else: the error's own words).
_REMEDIES = {
    errno.ENOSPC: "free space on that file system, or write elsewhere",
    errno.EDQUOT: "free space within your quota, or write elsewhere",
    errno.EFBIG: "write elsewhere (the file system limits the file size)",
    errno.EROFS: "the file system is mounted read-only: write elsewhere",
    errno.EACCES: "make the folder writable for you, or write elsewhere",
    errno.EPERM: "make the folder writable for you, or write elsewhere",
}


class WriteError(OSError):
    """A file could not be written (disk full, read-only file system, no permission); its
    `filename` is the file meant, also where the system's error named none."""


@contextmanager
def naming_write_errors(path):
    """Turn an OSError of the block into a `WriteError` naming `path` (writes to an open file
    report ENOSPC without a file name)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(err.errno, err.strerror, err.filename or path) from err
    except RuntimeError as err:  # torch.save reports a failed write as a RuntimeError after the OSError
        if not isinstance(err.__context__, OSError):
            raise
        cause = err.__context__
        raise WriteError(cause.errno, cause.strerror, cause.filename or path) from err


def write_error_message(err, again="Run the same command again once that is done"):
    """One line for a `WriteError`: the path, the cause, what to do; what was written before is
    intact (atomic writes leave the previous file)."""
    remedy = _REMEDIES.get(err.errno, "fix the cause, or write elsewhere")
    return (
        f"cannot write {err.filename}: {err.strerror} ({remedy}). Files written before are intact. {again}."
    )


@contextmanager
def atomic_file(path, mode="w", **open_kwargs):
    """Open a temporary file for writing that replaces `path` when the block ends without an
    exception (on an exception `path` is left as it was and the temporary file is removed).
    Write errors are `WriteError`s naming `path`."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with naming_write_errors(path):
            os.makedirs(folder, exist_ok=True)
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
