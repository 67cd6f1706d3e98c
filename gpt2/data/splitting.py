"""When the segment draw cannot give every split its share: a corpus of few segments
(a few files, a small token budget) may draw an empty or starved validation or test
split. Then the drawn stream is cut by token position instead, as nanoGPT cuts one
file: train first, then val, test last, each its share of the stream's tokens."""
import sys

import numpy as np

# A drawn split with fewer tokens than this part of its share is starved.
MIN_SHARE_PART = 0.5


def shares(spec) -> dict:
    """{split: expected share of a drawn stream's tokens} (0 for a named split)."""
    train, test = spec.draw_fractions()
    return {"train": train, "val": max(0.0, 1.0 - train - test), "test": test}


def starved(spec, counts: dict) -> list:
    """The drawn splits that got fewer than MIN_SHARE_PART of their share."""
    drawn = {s: f for s, f in shares(spec).items() if f > 0 and not spec.named(s)}
    total = sum(counts[s] for s in drawn)
    return [s for s, f in drawn.items() if counts[s] < MIN_SHARE_PART * f * total]


def bounds(spec, total: int) -> tuple:
    """(end of train, start of test) in a drawn stream of `total` tokens."""
    train, test = spec.draw_fractions()
    return int(total * train), int(total * (1.0 - test))


def cut_by_position(tokens: np.ndarray, start: int, edges: tuple) -> list:
    """[(split, piece)] of `tokens`, which occupy [start, start + len) of the stream."""
    end, out = start + tokens.size, []
    for split, lo, hi in (("train", 0, edges[0]), ("val", edges[0], edges[1]),
                          ("test", edges[1], end)):
        a, b = max(lo, start) - start, min(hi, end) - start
        if b > a:
            out.append((split, tokens[a:b]))
    return out


def say(label: str, split_names: list, counts: dict) -> None:
    parts = ", ".join(f"{counts[s]:,} {s}" for s in counts)
    print(f"{label}: the segment draw gave {' and '.join(split_names)} under half its share "
          f"({parts} tokens); splitting the token stream instead (train first, val, test "
          f"last)", file=sys.stderr)
