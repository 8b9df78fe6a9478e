"""One train.py per run folder (trainers.runs.lock): a second start into a folder in use
refuses before writing anything and names the holder; a lock left by a process that died (on
this host or another) is taken over and said; file systems without locks fall back to the
holder record."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from trainers.runs import lock as run_lock
from trainers.runs.lock import LOCK_FILE, RunFolderBusy, lock_run_folder

HOST = socket.gethostname()

# A process that takes the lock of a folder as train.py does, writes a holder record naming
# another host, then waits to be killed: argv is FOLDER HOST READY_FILE.
HOLDER = """
import json, os, sys, time
from trainers.runs.lock import lock_run_folder
folder, host, ready = sys.argv[1:]
held = lock_run_folder(folder)
record = {"host": host, "pid": 4242, "started": "2025-01-02 03:04:05"}
os.pwrite(held.fd, (json.dumps(record) + "\\n").encode(), 0)
open(ready, "w").close()
time.sleep(600)
"""


# train.py stopped where it builds the trainer (holding its folder) until it is killed: argv is
# READY_FILE ARGS..., READY_FILE written once it got there.
STOPPED_IN_BUILD = """
import runpy, sys, time
import trainers

ready = sys.argv.pop(1)


def hold(*args):
    open(ready, "w").close()
    time.sleep(600)


trainers.build_trainer = hold
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def holder_process(tmp_path, folder, host):
    ready = str(tmp_path / "ready")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), host, ready], cwd=ROOT)
    wait_for(ready, proc)
    return proc


def write_record(folder, **record):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "w") as f:
        json.dump({"host": HOST, "pid": 1, "started": "2025-01-02 03:04:05", **record}, f)


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_refuses_naming_its_holder_on_another_host(tmp_path):
    folder = tmp_path / "run"
    proc = holder_process(tmp_path, folder, "gpu-node-7")
    try:
        with pytest.raises(RunFolderBusy) as err:
            lock_run_folder(str(folder))
    finally:
        proc.kill()
        proc.wait()
    assert str(err.value).startswith(
        f"{folder} is in use by train.py on host gpu-node-7, pid 4242, started 2025-01-02 03:04:05"
    )
    assert "delete" not in str(err.value)  # the OS lock says it runs: nothing to delete
    held = lock_run_folder(str(folder))  # its holder was killed: the lock is free
    assert held.note == (
        f"Took over the lock {folder / LOCK_FILE} left by train.py on host gpu-node-7, pid 4242, "
        "started 2025-01-02 03:04:05, which no longer runs"
    )
    held.release()
    assert (folder / LOCK_FILE).read_text() == ""
    again = lock_run_folder(str(folder))  # released cleanly: nothing to take over
    assert again.note is None and json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    again.release()


def test_without_file_locks_the_holder_record_decides(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "lockf", no_locks)
    folder = str(tmp_path / "run")
    write_record(folder, pid=os.getppid())  # a live process on this host
    with pytest.raises(RunFolderBusy, match=f"pid {os.getppid()}, started .*, delete {folder}/{LOCK_FILE}"):
        lock_run_folder(folder)
    write_record(folder, host="gpu-node-7")  # cannot be checked from here
    with pytest.raises(RunFolderBusy, match=f"If that run no longer runs, delete {folder}/{LOCK_FILE}"):
        lock_run_folder(folder)
    pid = dead_pid()
    write_record(folder, pid=pid)  # its process is gone
    held = lock_run_folder(folder)
    assert held.note.startswith(
        f"Took over the lock {folder}/{LOCK_FILE} left by train.py on host {HOST}, pid {pid}"
    )
    held.release()


@pytest.mark.e2e
def test_a_second_train_py_refuses_and_a_killed_ones_lock_is_taken_over(pets, tiny_clip_path, tmp_path):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from tests.e2e import CASES, read_log, run_train

    out = tmp_path / "run"
    args = [str(a) for a in CASES["CoOp"].args(pets, tiny_clip_path, str(out))]
    ready = str(tmp_path / "building")
    first = subprocess.Popen(
        [sys.executable, "-c", STOPPED_IN_BUILD, ready, *args], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    try:
        wait_for(ready, first)
        second = run_train(*args, check=False)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 1
    assert second.stderr.strip().startswith(
        f"error: {out} is in use by train.py on host {HOST}, pid {first.pid}, started "
    )
    assert read_log(str(out)).count("==== train.py start") == 1  # the second start wrote nothing

    third = run_train(*args, "--no-train")
    assert (
        f"Took over the lock {out / LOCK_FILE} left by train.py on host {HOST}, pid {first.pid}"
        in third.stdout
    )
    assert (out / LOCK_FILE).read_text() == ""
