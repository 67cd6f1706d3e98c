"""The one config reader: Kconfig tree + .config -> a frozen, typed Config.

kconfiglib never raises on a bad .config: it warns and falls back. Here every
warning is an error, and so is any assignment that did not take (an int out
of range, a value dropped by `depends on`, a choice member that lost). Real
numbers are Kconfig strings tagged "Value: float in [lo, hi]" in their help
(lib/kconfig_tags); they come back as floats, range-checked. Choices come back
as the selected member's name, lower-case, without the choice's prefix, "_"
read as "-" (OPTIMIZER_ADAMW_8BIT -> "adamw-8bit"), ready to key a registry.
The run hash leaves out the symbols tagged "Not part of the run hash.".
"""
import hashlib
import importlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import kconfiglib

from lib import config_hints as hints
from lib import extras
from lib import kconfig_tags
from lib.environ import scoped_env
from lib.fsutil import atomic_open, atomic_write_bytes, no_space

ROOT = Path(__file__).resolve().parent.parent
KCONFIG = ROOT / "Kconfig"

# Symbols that are gone, with what took their place (named in the error about them).
RETIRED = {
    "LEARNING_RATE": "each optimizer's own rate, <OPTIMIZER>_LR (ADAMW_LR, LION_LR, ...)",
    "MIN_LR": "MIN_LR_FRACTION, a fraction of the optimizer's peak rate",
}


class ConfigError(Exception):
    """An invalid Kconfig tree, .config or override; the message names the symbol and the fix."""


def default_config_path() -> Path:
    return Path(os.environ.get("KCONFIG_CONFIG", ".config"))


def require(module: str, symbol: str, package: str, instead: str):
    """Import the optional package that CONFIG_<symbol>=y needs; when it is missing, a
    ConfigError naming the knob, the pip command (its extra's, else the package's) and
    `instead` (the other way out)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"CONFIG_{symbol}=y needs the {package} package, which is not "
                          f"installed ({e}): {extras.install_hint(module, package)} (`make` "
                          f"installs it into the project's .venv), or {instead}") from None


def config_description(path) -> str:
    """The first line of a defconfig or fragment when it is a comment (what `make help`
    shows), else ""."""
    first = Path(path).read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


def load_tree() -> kconfiglib.Kconfig:
    """The Kconfig tree with every symbol at its default; any parse warning is an error."""
    with scoped_env("srctree", str(ROOT)):  # where `source` paths are relative to
        try:
            kconf = kconfiglib.Kconfig(str(KCONFIG), warn_to_stderr=False)
        except kconfiglib.KconfigError as e:
            raise ConfigError(f"{KCONFIG}: {e}") from None
    if kconf.warnings:
        raise ConfigError("Kconfig tree: " + "\n".join(kconf.warnings))
    tag_errors = kconfig_tags.check_tree(kconf)
    if tag_errors:
        raise ConfigError("Kconfig tree: " + "\n".join(tag_errors))
    kconf.warn_assign_undef = True
    kconf.warn_assign_override = True
    kconf.warn_assign_redun = True
    return kconf


def load_kconf(config_path=None, overrides=(), strict=True) -> kconfiglib.Kconfig:
    """Load `config_path` (default .config or $KCONFIG_CONFIG) into the tree, apply
    NAME=VALUE overrides, and fail unless every assignment took (strict)."""
    path = Path(config_path) if config_path else default_config_path()
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; run `make defconfig` or "
                          f"`make defconfig-<name>` (see `make help`) to create one")
    not_text = hints.not_utf8(path)
    if not_text:
        raise ConfigError(not_text)
    kconf = load_tree()
    kconf.load_config(str(path))
    if strict:
        check(kconf, {sym: sym.user_value for sym in kconf.unique_defined_syms
                      if sym.user_value is not None}, str(path))
    # Overrides are checked on their own: a value of the file that an override
    # makes irrelevant (MAX_ITERS after BUDGET=tokens) is not an error.
    typed = {}
    requested = apply_overrides(kconf, overrides, typed)
    if strict and requested:
        check(kconf, requested, "override", typed)
    return kconf


def apply_overrides(kconf, overrides, typed=None) -> dict:
    """Set NAME=VALUE assignments (NAME a symbol, with or without CONFIG_, or a
    choice: OPTIMIZER=adamw). Returns {symbol: requested value} for check(), and
    fills `typed` with {symbol: the assignment as given}. A string value is taken
    byte for byte; a line break in it is an error (.config has one line a symbol)."""
    requested = {}
    for i, assignment in enumerate(overrides):
        name, sep, value = assignment.partition("=")
        name = name.strip().removeprefix(kconf.config_prefix)
        if not sep or not name:
            raise ConfigError(hints.not_an_assignment(overrides, i))
        sym = _override_symbol(kconf, name, value.strip())
        if sym.type is not kconfiglib.STRING or sym.choice is not None:
            value = "y" if sym.choice is not None else value.strip()
        elif "\n" in value or "\r" in value:
            raise ConfigError(f"{name}: the value holds a line break, which .config cannot "
                              f"keep (one line a symbol); give {name} a value on one line")
        if sym.type in (kconfiglib.BOOL, kconfiglib.TRISTATE) and value in ("0", "1", "true", "false"):
            value = "y" if value in ("1", "true") else "n"
        sym.set_value(value)
        requested[sym] = kconfiglib.STR_TO_TRI.get(value, value) if sym.type in (
            kconfiglib.BOOL, kconfiglib.TRISTATE) else value
        if typed is not None:
            typed[sym] = assignment
    return requested


def _override_symbol(kconf, name, value):
    """The symbol NAME=VALUE sets: the member VALUE of the choice NAME, or the symbol NAME;
    an unknown name is an error with the nearest names."""
    choice = _named_choices(kconf).get(name)
    if choice is not None:
        member = kconf.syms.get(f"{name}_{value.upper().replace('-', '_')}")
        if member is None or member.choice is not choice:
            values = [_choice_value(choice, s) for s in choice.syms]
            raise ConfigError(f"{name}={value}: not a choice of {name}"
                              f"{hints.did_you_mean(value, values)}; choose one of "
                              f"{', '.join(values)}")
        return member
    sym = kconf.syms.get(name)
    if sym is None or not sym.nodes:
        names = [s.name for s in kconf.unique_defined_syms] + list(_named_choices(kconf))
        hint = (f"; it was replaced by {RETIRED[name]}" if name in RETIRED
                else hints.did_you_mean(name, names))
        raise ConfigError(f"{name}={value}: unknown symbol {name}{hint}; see `make "
                          f"menuconfig` for the symbols")
    return sym


def check(kconf, requested, where, typed=None) -> None:
    """Evaluate every symbol; raise ConfigError on any kconfiglib warning or on
    any requested value that did not take, naming the symbol and the reason. A
    problem of a symbol in `typed` starts with what was typed instead of `where`."""
    for sym in kconf.unique_defined_syms:
        sym.str_value  # evaluation is what makes kconfiglib emit range warnings
    for choice in kconf.unique_choices:
        choice.selection
    problems = []  # (symbol, "CONFIG_NAME=value", reason)
    for sym, wanted in requested.items():
        if sym.type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
            if sym.tri_value != wanted:
                wanted = kconfiglib.TRI_TO_STR[wanted]
            else:
                continue
        elif sym.str_value == wanted:
            continue
        head = f"{kconf.config_prefix}{sym.name}={wanted}"
        problems.append((sym, head, _not_taken(sym, wanted).removeprefix(f"{head}: ")))
    problems += _float_problems(kconf)
    typed = typed or {}
    errors = [f"{typed[sym]}: {reason}" if sym in typed else f"{where}: {head}: {reason}"
              for sym, head, reason in problems]
    reported = [sym.name for sym, _, _ in problems]
    errors += [_with_retired_hint(w, kconf) for w in kconf.warnings
               if not any(f" {name} " in w for name in reported)]
    kconf.warnings.clear()
    if errors:
        raise ConfigError("\n".join(errors))


def _with_retired_hint(warning: str, kconf=None) -> str:
    """The warning, plus the successor of a retired symbol it names or, given the tree,
    the nearest names of an unknown one."""
    for name, successor in RETIRED.items():
        if warning.endswith(f"undefined symbol {name}"):
            return (f"{warning}: {name} was replaced by {successor}; `make olddefconfig` "
                    f"drops it, then set the new symbol")
    unknown = warning.rpartition("undefined symbol ")[2] if "undefined symbol " in warning else ""
    if kconf is not None and unknown:
        return warning + hints.did_you_mean(unknown, [s.name for s in kconf.unique_defined_syms])
    return warning


def changed_values(kconf) -> list:
    """[(NAME, "CONFIG_NAME=old -> new: why")] for every value the file set that the
    tree did not keep (out of range, dependency not met, a choice member that lost)."""
    for sym in kconf.unique_defined_syms:
        sym.str_value  # evaluation is what makes kconfiglib emit range warnings
    changes = []
    for sym in kconf.unique_defined_syms:
        if sym.user_value is None:
            continue
        if sym.type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
            wanted, now = kconfiglib.TRI_TO_STR[sym.user_value], sym.str_value
            kept = sym.tri_value == sym.user_value
        else:
            wanted, now = sym.user_value, sym.str_value
            kept = now == wanted and bool(sym.config_string)
        if kept:
            continue
        reason = _not_taken(sym, wanted).split(": ", 1)[1]
        new = repr(now) if sym.config_string else "unset"
        changes.append((sym.name, f"{kconf.config_prefix}{sym.name}={wanted} -> {new}: {reason}"))
    return changes


def _not_taken(sym, wanted) -> str:
    name = f"{sym.kconfig.config_prefix}{sym.name}={wanted}"
    if sym.type in (kconfiglib.INT, kconfiglib.HEX):
        for low, high, cond in sym.ranges:
            if kconfiglib.expr_value(cond):
                lo, hi = int(low.str_value, 0), int(high.str_value, 0)
                try:
                    if not lo <= int(wanted, 0) <= hi:
                        return f"{name}: outside the allowed range [{low.str_value}, {high.str_value}]"
                except ValueError:
                    return f"{name}: not an integer"
    if not kconfiglib.expr_value(sym.direct_dep):
        deps = kconfiglib.expr_str(sym.direct_dep)
        if sym.choice is not None:  # kconfiglib adds the choice itself to its members' deps
            deps = deps.replace(f" && <choice {sym.choice.name}>", "")
        return f"{name}: dropped, {sym.name} depends on {deps}, which is not met"
    if sym.choice is not None and sym.choice.selection is not sym:
        sel = sym.choice.selection
        return (f"{name}: conflicts with the choice's selection "
                f"{sel.name if sel else None}; select exactly one member of {sym.choice.name}")
    if sym.visibility == 0:
        conds = [kconfiglib.expr_str(n.prompt[1]) for n in sym.nodes if n.prompt]
        when = f"only when {' or '.join(conds)}" if conds else "never (it has no prompt)"
        return f"{name}: {sym.name} can be set {when}; its value here is {sym.str_value!r}"
    return f"{name}: not taken, the value is {sym.str_value!r}"


def float_spec(sym):
    """(is_list, lo, lo_closed, hi, hi_closed) from the symbol's tag "Value: float in
    [lo, hi]" or "Value: floats in [lo, hi]" (space-separated); else None."""
    return kconfig_tags.float_spec(sym)


def _float_errors(kconf) -> list:
    return [f"{head}: {reason}" for _, head, reason in _float_problems(kconf)]


def _float_problems(kconf) -> list:
    """[(symbol, 'CONFIG_NAME="value"', reason)] for every active float symbol whose
    value does not parse."""
    problems = []
    for sym in kconf.unique_defined_syms:
        spec = float_spec(sym)
        if spec is None or not sym.config_string:
            continue
        try:
            _parse_float(sym, spec)
        except ValueError as e:
            head = f'{kconf.config_prefix}{sym.name}="{sym.str_value}"'
            problems.append((sym, head, str(e).removeprefix(f"{head}: ")))
    return problems


def _parse_float(sym, spec):
    is_list, lo, lo_closed, hi, hi_closed = spec
    bounds = f"{'[' if lo_closed else '('}{lo:g}, {hi:g}{']' if hi_closed else ')'}"
    what = "space-separated floats" if is_list else "a float"
    words = sym.str_value.split() if is_list else [sym.str_value]
    values = []
    for word in words:
        try:
            value = float(word)
        except ValueError:
            raise ValueError(f"{sym.kconfig.config_prefix}{sym.name}=\"{sym.str_value}\": "
                             f"{word!r} is not a number; expected {what} in {bounds}") from None
        if not ((lo <= value if lo_closed else lo < value)
                and (value <= hi if hi_closed else value < hi)):
            raise ValueError(f"{sym.kconfig.config_prefix}{sym.name}=\"{sym.str_value}\": "
                             f"{word} is outside the allowed range {bounds}")
        values.append(value)
    if is_list and not values:
        raise ValueError(f"{sym.kconfig.config_prefix}{sym.name}=\"\": expected {what} in {bounds}")
    return tuple(values) if is_list else values[0]


def _named_choices(kconf) -> dict:
    return {c.name: c for c in kconf.unique_choices if c.name}


def _choice_value(choice, member) -> str:
    return member.name.removeprefix(choice.name + "_").lower().replace("_", "-")


def typed_values(kconf) -> dict:
    """{NAME: value}: bool, int, float or str for active symbols, None for symbols whose
    dependencies are not met, and the selected member's name for each named choice."""
    values = {}
    for sym in kconf.unique_defined_syms:
        active = bool(sym.config_string)
        if sym.type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
            values[sym.name] = sym.tri_value == 2 if active else None
        elif not active:
            values[sym.name] = None
        elif sym.type in (kconfiglib.INT, kconfiglib.HEX):
            values[sym.name] = int(sym.str_value, 0)
        elif (spec := float_spec(sym)) is not None:
            values[sym.name] = _parse_float(sym, spec)
        else:
            values[sym.name] = sym.str_value
    for name, choice in _named_choices(kconf).items():
        if name in values:
            raise ConfigError(f"Kconfig tree: choice {name} has the name of a symbol")
        values[name] = _choice_value(choice, choice.selection) if choice.selection else None
    return values


def config_text(kconf) -> str:
    """The .config kconfiglib writes for this state (what a run directory keeps)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "config"
        kconf.write_config(str(out), save_old=False)
        return out.read_text()


def config_hash(kconf) -> str:
    """Short hash of every active symbol's value except those tagged "Not part of the
    run hash." (lib/kconfig_tags). A symbol whose `depends on` is not met writes no
    line, so it cannot change the hash."""
    ignored = kconfig_tags.not_hashed_names(kconf)
    lines = [sym.config_string for sym in kconf.unique_defined_syms
             if sym.config_string and sym.name not in ignored]
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:8]


def write_config(kconf, path, minimal=False) -> None:
    """Write .config (or a minimal defconfig) atomically; keep the previous one as <path>.old."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: the directory {path.parent} does not exist; create it "
                          f"(mkdir -p {path.parent}) or choose another path")
    try:
        with atomic_open(path, "w") as f:  # kconfiglib writes by name: f.name, the temp file
            if minimal:
                kconf.write_min_config(f.name)
            else:
                kconf.write_config(f.name, save_old=False)
            if path.is_file() and not minimal:
                atomic_write_bytes(f"{path}.old", path.read_bytes())
    except OSError as e:
        if no_space(e) is not None:
            raise
        raise ConfigError(f"{path}: cannot write in {path.parent}: {e.strerror or e}") from None


class Config(Mapping):
    """Frozen, typed view of one validated configuration: cfg.N_LAYER, cfg.OPTIMIZER."""

    __slots__ = ("_values", "text", "hash", "path")

    def __init__(self, values: dict, text: str, hash: str, path: str):
        for slot, value in zip(self.__slots__, (dict(values), text, hash, path)):
            object.__setattr__(self, slot, value)

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no Kconfig symbol or choice named {name}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only: change .config or pass --set NAME=VALUE")

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __reduce__(self):
        return (Config, (self._values, self.text, self.hash, self.path))


def from_kconf(kconf, path="") -> Config:
    return Config(typed_values(kconf), config_text(kconf), config_hash(kconf), str(path))


def load(config_path=None, overrides=()) -> Config:
    """Read and validate a .config (plus NAME=VALUE overrides) into a Config."""
    path = Path(config_path) if config_path else default_config_path()
    return from_kconf(load_kconf(path, overrides), path)
