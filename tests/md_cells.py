"""Reading markdown pipe tables back in tests: cells, not column padding."""
import re


def table_rows(text: str) -> list:
    """The rows (header included, separator left out) of every pipe table in text, each a
    list of stripped cells, an escaped "\\|" read back as "|"."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line[1:-1])]
        if not all(re.fullmatch(r":?-+:?", c) for c in cells):
            rows.append(cells)
    return rows


def row(text: str, first: str) -> list:
    """The one table row whose first cell is `first`."""
    found = [r for r in table_rows(text) if r[0] == first]
    assert len(found) == 1, f"{len(found)} rows named {first!r} in:\n{text}"
    return found[0]
