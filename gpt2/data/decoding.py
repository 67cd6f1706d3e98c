"""Bytes of local text files that are not UTF-8, under the TEXT_FILES_DECODE policy:
strict (an error naming the file and the byte offset) or replace (U+FFFD).

The strict check costs nothing while the files are valid: `datasets` decodes them
strictly anyway, and only when reading fails are the files scanned for the first bad
byte, to say where it is.
"""
import codecs

from gpt2.data.errors import DataError

POLICIES = ("strict", "replace")
BLOCK_BYTES = 1 << 24


def builder_options(suffix: str, policy: str) -> dict:
    """Options of the `datasets` builder for `suffix` that apply `policy`."""
    if policy not in POLICIES:
        raise DataError(f"TEXT_FILES_DECODE={policy!r}: choose one of {', '.join(POLICIES)}")
    if policy == "strict" or suffix == ".parquet":
        return {}
    if suffix == ".txt":
        return {"encoding_errors": "replace"}
    # The json builder re-decodes only for an encoding not spelled "utf-8"; "utf_8" is
    # the same codec under Python's own name.
    return {"encoding": "utf_8", "encoding_errors": "replace"}


def first_invalid_byte(path):
    """Byte offset of the first byte of `path` that is not valid UTF-8, or None."""
    base, pending = 0, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            buffer = pending + block
            try:
                _, used = codecs.utf_8_decode(buffer, "strict", not block)
            except UnicodeDecodeError as e:
                return base + e.start
            if not block:
                return None
            base, pending = base + used, buffer[used:]


def raise_if_invalid(files: list, symbol: str) -> None:
    """A DataError naming the first of `files` that is not UTF-8 and where, if any."""
    for path in files:
        if path.suffix == ".parquet":
            continue
        offset = first_invalid_byte(path)
        if offset is not None:
            raise DataError(
                f"{path} ({symbol}) is not UTF-8 at byte {offset}: fix or re-encode the "
                f"file, or set TEXT_FILES_DECODE=replace to read bad bytes as U+FFFD")


def guarded(texts, files: list, symbol: str):
    """`texts`, a failure while reading them explained when a file is not UTF-8."""
    try:
        yield from texts
    except DataError:
        raise
    except Exception:
        raise_if_invalid(files, symbol)
        raise
