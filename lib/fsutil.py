"""Atomic file writes (a reader never sees a half-written file; atomic_open is the one
primitive, every writer of a whole file goes through it), directory locks, and safe
file names."""
import contextlib
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


def fsync_path(path) -> None:
    """fsync a file or a directory (a rename into it) through its path, so it also
    covers a file a writer reopened by name. A file system that cannot sync a
    directory (EINVAL, ENOTSUP: some network and FUSE mounts) is let be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", **open_kwargs):
    """The one atomic write: yields a file object on a temporary file beside `path`
    (.<name>.<random>.tmp, the pattern checkpoint.remove_orphans and the data pipeline
    clear after a kill); when the block ends normally the file is flushed, fsynced and
    renamed over `path`, and the directory is fsynced. On any exception the temporary
    file is removed and `path` is left as it was. f.name is the temporary path, for
    writers that want a path rather than a file object (kconfiglib, torch's snapshot
    dumper). Creates missing parent directories; open_kwargs go to open()."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file: mode {mode!r} must start with 'w'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` through atomic_open (and so are the text and JSON forms)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


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
