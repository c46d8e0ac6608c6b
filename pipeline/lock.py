"""One writer per output folder: an OS lock that a killed process releases.

The lock file sits beside the output (``.NAME.lock``), so it outlives the swap of a rebuilt
output into place, and records who holds it (host, PID, start time, command), which the
refusal names. Array tasks of one extract/shard job share the lock (each writes its own
shards); publishing the finished output takes a second, exclusive lock, so tasks that finish
together publish exactly once. The lock is a POSIX record lock (``fcntl.lockf``): it belongs
to the process, so DataLoader workers forked after it never inherit it (a worker outliving a
``kill -9`` would otherwise keep the folder locked), and it holds across NFS (lockd / v4) and
Lustre mounted with ``flock``; on a filesystem without locking it is per node.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from pipeline.errors import PipelineError


def lock_path(out: Path, kind: str = "lock") -> Path:
    out = Path(out).expanduser().absolute()
    return out.with_name(f".{out.name}.{kind}")


@contextlib.contextmanager
def writer(out: Path, stage: str, shared: bool = False):
    """Hold ``out`` for this process; refuse in one line if another writer holds it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        holder = Path(path).read_text(errors="replace").strip() or "another process"
        raise PipelineError(f"{out} is being written by {holder}; wait for it to finish, or pass another --output") from None
    if not shared or os.fstat(fd).st_size == 0:
        text = (f"'kowiki-bert {stage}' on {socket.gethostname()}, PID {os.getpid()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}" + (" (array tasks)" if shared else ""))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (text + "\n").encode(), 0)
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def publishing(out: Path):
    """Exclusive, waiting: one task at a time checks whether the output is published yet."""
    path = lock_path(out, "publish.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
