"""Where a preparation writes before it is finished: a temporary directory beside the
final one, `.<name>.partial`, renamed to `<name>` only once meta.json is written in it.
The final directory is therefore absent or complete, never half-written, whatever
stops a preparation (an exception, kill -9, a full disk).

A document corpus keeps its progress in the partial directory, so an interrupted
preparation resumes there; Shakespeare starts it afresh. A lock file beside them,
`.<name>.lock`, lets one process at a time prepare a name.
"""
import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from gpt2.data.errors import DataError
from lib.fsutil import fsync_path


def partial_dir(out_dir) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.partial")


def _old_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.old")


@contextlib.contextmanager
def locked(out_dir, wait: bool):
    """Hold `.<name>.lock` beside out_dir; another holder is waited for (wait) or an
    error naming the directory. Stale `.<name>.old` directories are removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir.with_name(f".{out_dir.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise DataError(f"{out_dir} is being prepared by another process; wait for it "
                            f"to finish") from None
        shutil.rmtree(_old_dir(out_dir), ignore_errors=True)
        yield
    finally:
        os.close(fd)


def fresh_partial(out_dir) -> Path:
    """An empty partial directory (what a failed preparation left is removed)."""
    work = partial_dir(out_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def resumable_partial(out_dir) -> Path:
    """The partial directory to resume in. When there is none, an unfinished final
    directory without meta.json (left by a version that prepared in place) becomes it,
    so its recorded shards are kept; the writer checks each before it trusts it."""
    out_dir, work = Path(out_dir), partial_dir(out_dir)
    if not work.is_dir() and out_dir.is_dir() and not (out_dir / "meta.json").exists():
        os.replace(out_dir, work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def publish(work: Path, out_dir) -> Path:
    """Rename the finished `work` directory to out_dir, replacing an outdated one."""
    out_dir = Path(out_dir)
    fsync_path(work)
    if out_dir.exists():
        old = _old_dir(out_dir)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(work, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out_dir)
    fsync_path(out_dir.parent)
    return out_dir
