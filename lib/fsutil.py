"""Atomic file writes (a reader never sees a half-written file), directory locks, and
safe file names."""
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
from pathlib import Path


# What a write gets from a full disk, a full quota, or a file-size limit (RLIMIT_FSIZE).
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def no_space(error: BaseException):
    """The OSError for a full disk in `error` or in what caused it (torch.save wraps it in
    a RuntimeError), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class LockHeld(BlockingIOError):
    """Another process holds the lock; `holder` says which, as it wrote itself into the
    lock file ("pid 123 on host node1")."""

    def __init__(self, path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.holder = holder


def lock_holder(lock_file) -> str:
    """Who holds `lock_file`, as its holder wrote it."""
    try:
        text = Path(lock_file).read_text().strip()
    except OSError:
        text = ""
    return text or "a process that has not written its pid yet"


def lock_directory(directory) -> int:
    """Hold an exclusive flock on <directory>/.lock (created as needed) until the returned
    descriptor is closed or the process (and every child it passed the descriptor to)
    exits, and write "pid <pid> on host <host>" into it. Raises LockHeld (a
    BlockingIOError) naming the holder when another process holds it."""
    path = Path(directory) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockHeld(path, lock_holder(path)) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, only the note is missing
        pass
    return fd


def safe_name(text: str) -> str:
    """`text` as a file or directory name: ASCII letters, digits, '.', '_', '+' and '-'
    kept, anything else '_'."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)
