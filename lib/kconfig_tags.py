"""Machine-readable tags in Kconfig help texts: what the config reader learns about a
symbol beyond its Kconfig type.

kconfiglib keeps no comments and no custom attributes, but it keeps help texts, so a
tag is one help line of a fixed form (the help of a choice tags all its members):

  Value: float in [lo, hi]      a string symbol holding a real number (brackets closed,
  Value: floats in [lo, hi]     parentheses open); "floats": space-separated
  Not part of the run hash.     changing it cannot change the trained weights, the
                                evaluation figures or what is recorded as results,
                                so it stays out of every run, cell and matrix hash

A help line that starts like a tag but does not parse is an error of the Kconfig tree
naming the symbol, never prose that is silently ignored.
"""
import re

import kconfiglib

NOT_HASHED_LINE = "Not part of the run hash."
_FLOAT = re.compile(r"Value: (float|floats) in ([\[(])([^,\s]+), ([^\])\s]+)([\])])")
# A line starting with one of these is meant as a tag and must parse as one.
_LEADS = ("Value:", "Not part of the run hash")


class TagError(Exception):
    """A malformed tag line; the message names the symbol and the line."""


def _help_lines(sym):
    nodes = list(sym.nodes) + (list(sym.choice.nodes) if sym.choice is not None else [])
    for node in nodes:
        for line in (node.help or "").splitlines():
            line = line.strip()
            if line.startswith(_LEADS):
                yield line


def float_spec(sym):
    """(is_list, lo, lo_closed, hi, hi_closed) from the symbol's "Value: float(s) in"
    tag, else None."""
    for line in _help_lines(sym):
        if not line.startswith(_LEADS[0]):
            continue
        match = _FLOAT.fullmatch(line)
        try:
            low, high = float(match[3]), float(match[4])
        except (TypeError, ValueError):
            raise TagError(f"{sym.name}: help line {line!r} is not a tag; write "
                           f"'Value: float in [lo, hi]' (or 'floats', parentheses for "
                           f"open ends)") from None
        if sym.type is not kconfiglib.STRING:
            raise TagError(f"{sym.name}: the tag {line!r} needs a string symbol")
        return match[1] == "floats", low, match[2] == "[", high, match[5] == "]"
    return None


def not_hashed(sym) -> bool:
    """Whether the symbol (or its choice) carries the "Not part of the run hash." tag."""
    for line in _help_lines(sym):
        if line.startswith(_LEADS[1]) and line != NOT_HASHED_LINE:
            raise TagError(f"{sym.name}: help line {line!r} is not a tag; write exactly "
                           f"{NOT_HASHED_LINE!r}")
        if line == NOT_HASHED_LINE:
            return True
    return False


def check_tree(kconf) -> list:
    """Every malformed tag of the tree, one message each (empty when all parse)."""
    errors = []
    for sym in kconf.unique_defined_syms:
        for parse in (float_spec, not_hashed):
            try:
                parse(sym)
            except TagError as e:
                errors.append(str(e))
    return errors


def not_hashed_names(kconf) -> frozenset:
    """The names of every symbol tagged "Not part of the run hash."."""
    return frozenset(sym.name for sym in kconf.unique_defined_syms if not_hashed(sym))
