"""Paths a data knob names (TEXT_FILES_PATH, TEXT_FILES_VAL_PATH, DATA_DIR, HF_NAME),
checked before anything reads them: each problem one DataError naming the knob.

A relative path, `..` included, is taken from where make runs (a corpus beside the
checkout is normal); it is an error only when it does not lead anywhere.
"""
import errno
import os
from pathlib import Path

from gpt2.data.errors import DataError


def _where(value: str) -> str:
    return "" if Path(value).expanduser().is_absolute() else f" (relative to {os.getcwd()})"


def existing(value: str, symbol: str) -> Path:
    """The path `value` names, which must exist; a loop of symbolic links, a dangling
    link and a missing path are each an error naming `symbol`."""
    path = Path(value).expanduser()
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{symbol}={value!r}: a loop of symbolic links{_where(value)}; "
                            f"point {symbol} at the real file or directory") from None
        if path.is_symlink():
            raise DataError(f"{symbol}={value!r} is a symbolic link to "
                            f"{os.readlink(path)!r}, which does not exist") from None
        raise DataError(f"{symbol}={value!r} does not exist{_where(value)}") from None
    return path


def directory(value: str, symbol: str) -> Path:
    """`value` as a directory: a file or a link loop there is an error naming `symbol`;
    nothing there is allowed (a place in a lookup order that holds nothing)."""
    path = Path(value).expanduser()
    if not path.is_symlink() and not path.exists():
        return path
    path = existing(value, symbol)
    if not path.is_dir():
        raise DataError(f"{symbol}={value!r} is a file where a directory is expected; "
                        f"give the directory that holds the inputs")
    return path


def unreadable_entry(path: Path, symbol: str, value: str) -> None:
    """A file-like entry found under `value` that is a link loop or a dangling link."""
    if path.is_symlink() and not path.exists():
        raise DataError(f"{symbol}={value!r}: {path} is a symbolic link that leads nowhere "
                        f"(a loop, or its target is gone); remove or fix it")


def file_in(directory_path: Path, relpath: str, symbol: str) -> Path:
    """<directory>/<relpath> when it is a file; None when absent; an error naming
    `symbol` when something else (a directory, a link loop) is there."""
    path = directory_path / relpath
    if path.is_file():
        return path
    if path.is_symlink() or path.exists():
        raise DataError(f"{symbol}: {path} is not a readable file (a directory, or a link "
                        f"that leads nowhere); put the file {relpath} there")
    return None
