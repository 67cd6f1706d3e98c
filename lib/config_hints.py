"""What an error about user input adds so that the user can fix it: the nearest names,
where a file stops being text, how to quote a value with spaces."""
import difflib
from pathlib import Path


def did_you_mean(word: str, candidates) -> str:
    """' (did you mean X?)' (or 'X or Y'), naming the closest candidates, or ''."""
    close = difflib.get_close_matches(word, list(candidates), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def not_utf8(path) -> str:
    """'' when the file is UTF-8 text, else one line naming the file and the first bad
    byte's offset, line and value."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return (f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
                f"(line {line}); fix or remove that line (an editor's 'save as UTF-8'), "
                f"or write the file again (make defconfig, make setconfig)")
    return ""


def not_an_assignment(assignments, index: int) -> str:
    """The error for assignments[index], which has no NAME=: say what was typed, and
    when it follows an assignment, that a value with spaces needs quotes."""
    word = assignments[index]
    message = f"{word!r}: expected NAME=VALUE, e.g. MAX_ITERS=20"
    start = index
    while start > 0 and "=" not in assignments[start]:
        start -= 1
    if "=" in assignments[start] and start < index:
        end = index
        while end + 1 < len(assignments) and "=" not in assignments[end + 1]:
            end += 1
        name, _, value = assignments[start].partition("=")
        joined = " ".join([value, *assignments[start + 1:end + 1]])
        message += (f"; a value with spaces needs quotes: SET='{name}=\"{joined}\"' "
                    f"(make) or --set '{name}={joined}'")
    return message
