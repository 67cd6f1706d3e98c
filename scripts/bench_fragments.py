"""Merging a benchmark list's defconfig fragments, as the kernel's
scripts/kconfig/merge_config.sh does: the base configuration loaded, then each fragment
merged on top with kconfiglib's load_config(fragment, replace=False), so that a later value
of a symbol, or a later member of a choice, replaces the earlier one. Redefining a value is
what a fragment is for: it is reported as information. Any other problem of a fragment (an
unknown symbol, a malformed line or value) is an error naming the fragment."""
import kconfiglib

from lib import config as cfglib

OVERRIDE = "set more than once"  # kconfiglib's warning when a later assignment redefines one


def assignments(tree) -> dict:
    """{symbol or choice name: NAME=VALUE} of the values a configuration file set."""
    out = {}
    for sym in tree.unique_defined_syms:
        if sym.choice is None and sym.user_value is not None:
            value = sym.user_value
            if sym.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
                value = kconfiglib.TRI_TO_STR[value]
            out[sym.name] = f"{sym.name}={value}"
    for choice in tree.unique_choices:
        if choice.user_selection is not None:
            out[choice.name] = f"{choice.user_selection.name}=y"
    return out


def merge_one(tree, fragment, say) -> None:
    """Merge one fragment into tree; say() each value it redefines."""
    seen, before = len(tree.warnings), assignments(tree)
    tree.load_config(str(fragment), replace=False)
    lines = [w.splitlines()[0].replace("warning: ", "", 1) for w in tree.warnings[seen:]]
    lines = [l if l.startswith(str(fragment)) else f"{fragment}: {l}" for l in lines]
    errors = [l for l in lines if OVERRIDE not in l]
    if errors:
        raise cfglib.ConfigError("\n".join(f"{e}; fix or remove that line" for e in errors))
    for line in lines:
        say(f"info: {line}")
    for choice in tree.unique_choices:
        old, new = before.get(choice.name), assignments(tree).get(choice.name)
        if old is not None and new != old:
            say(f"info: {fragment}: choice {choice.name}: {new} replaces {old}")


def merge(base_config, fragments, say=print) -> list:
    """NAME=VALUE assignments that turn base_config into base_config with the fragments
    merged on top, in order (those that change nothing left out)."""
    tree = cfglib.load_tree()
    tree.warn_assign_redun = False  # a value set again to what it was is no override
    tree.load_config(str(base_config))
    base = assignments(tree)
    for fragment in fragments:
        merge_one(tree, fragment, say)
    return [a for key, a in assignments(tree).items() if base.get(key) != a]
