"""One train.py at a time in a run folder: `<output dir>/run.lock`, held for the whole run.

Two runs in one folder would leave the config of one and the checkpoints of the other, and two
result blocks in one log. train.py takes the lock right after its config is made, before it
builds or writes anything else, and keeps it until it exits. The rules:

- The lock is an OS lock on `run.lock` (`fcntl.lockf`, a POSIX record lock: NFS passes it to
  the server, so hosts sharing the file system see it), held by the open file. The system
  releases it when the process ends, however it ends (a kill, a crash; on NFS, once a crashed
  host's lease runs out).
- The file names its holder: host, pid and start time, written once the lock is taken and
  cleared when train.py exits (normally or on an error).
- A start that finds the lock held refuses, naming the holder.
- A start that finds the lock free but the file naming a holder (a process that was killed, a
  host that crashed) takes it over and says so: a free lock means its holder no longer runs,
  also when that holder was on another host.
- On a file system without OS locks (`lockf` fails, e.g. ENOLCK or EOPNOTSUPP) the file alone
  decides, with a warning: a holder on this host whose process is gone -> taken over; one whose
  process exists, or one on another host (which cannot be checked) -> refused, with the file to
  delete if that run no longer runs. (An NFS mount with `nolock` keeps locks on each host:
  runs started on two hosts are not told apart there.)
"""

import errno
import fcntl
import json
import os
import socket
import time

from clipprompt.atomic import naming_write_errors

LOCK_FILE = "run.lock"
# lockf's answers when the file system has no locks at all (rather than a lock held elsewhere).
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunFolderBusy(RuntimeError):
    """Another train.py holds the run folder."""


class RunLock:
    """The held lock of a run folder; `note` says whose lock was taken over, if any."""

    def __init__(self, path, fd, note):
        self.path, self.fd, self.note = path, fd, note

    def release(self):
        """Clear the holder and release the lock (the process ending releases it too)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # releases the OS lock
            self.fd = None


def lock_run_folder(output_dir):
    """Take `output_dir/run.lock` (the module docstring's rules): a `RunLock`, or `RunFolderBusy`."""
    path = os.path.join(output_dir, LOCK_FILE)
    with naming_write_errors(path):
        os.makedirs(output_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        previous = _take(fd, path)
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with naming_write_errors(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    note = None
    if previous:
        note = f"Took over the lock {path} left by {describe(previous)}, which no longer runs"
    return RunLock(path, fd, note)


def _take(fd, path):
    """Lock `fd` or raise `RunFolderBusy`; returns the previous holder's record (None: none)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            raise RunFolderBusy(busy_message(path, _holder(fd))) from None
        if err.errno not in NO_LOCKS:
            raise
        print(
            f"Warning: the file system of {path} has no file locks ({err.strerror}): {LOCK_FILE} alone "
            "tells whether another train.py runs in this folder"
        )
        holder = _holder(fd)
        if holder and not _gone(holder):
            raise RunFolderBusy(busy_message(path, holder, checked=False))
        return holder
    return _holder(fd)


def _holder(fd):
    """The holder record of the lock file (None when it is empty; a record that does not parse
    is described as unreadable)."""
    text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
    try:
        holder = json.loads(text) if text else None
    except ValueError:
        return {"host": "?", "pid": "?", "started": f"unreadable record {text[:80]!r}"}
    return holder if isinstance(holder, dict) else None


def _gone(holder):
    """Whether the holder's process is known to have ended (only checkable on this host)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        return False
    return False


def describe(holder):
    return f"train.py on host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


def busy_message(path, holder, checked=True):
    """Why the folder is refused; unless the OS lock `checked` that the holder runs, how to free it."""
    folder = os.path.dirname(path)
    who = describe(holder) if holder else "another train.py"
    message = (
        f"{folder} is in use by {who} ({path}): two runs in one folder would mix their checkpoints "
        "and logs. Wait for it to end or stop it, or use another --output-dir."
    )
    if not checked:
        message += f" If that run no longer runs, delete {path}."
    return message
