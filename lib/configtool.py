"""Kconfig front ends for the Makefile, strict where kconfiglib's own scripts are lenient.

  python -m lib.configtool defconfig defconfigs/NAME   write .config from a defconfig
  python -m lib.configtool olddefconfig                update .config to the Kconfig tree
  python -m lib.configtool savedefconfig [OUT]         write a minimal defconfig (default: defconfig)
  python -m lib.configtool setconfig NAME=VALUE ...    change symbols in .config
  python -m lib.configtool setconfig --env SET         the same, the assignments split from $SET
                                                       as a shell splits words (nothing runs)
  python -m lib.configtool listnewconfig               symbols .config does not set yet
  python -m lib.configtool check                       validate .config
  python -m lib.configtool menuconfig                  kconfiglib's menuconfig, then check
  python -m lib.configtool extras [--missing|--install] the pyproject extras .config selects
                                                       (--install: pip installs the missing
                                                       ones into this Python, as `make` does)

The file edited is .config, or $KCONFIG_CONFIG.
"""
import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from lib import config as cfglib
from lib import config_hints as hints
from lib import extras as extras_lib


def defconfig(args, out):
    src = Path(args.file)
    if not src.is_file() and src.parent.is_dir():
        names = sorted(p.name for p in src.parent.iterdir() if p.is_file())
        raise cfglib.ConfigError(f"{src}: no such defconfig{hints.did_you_mean(src.name, names)}; "
                                 f"the defconfigs in {src.parent}: {', '.join(names)}")
    kconf = cfglib.load_kconf(src)
    cfglib.write_config(kconf, out)
    print(f"# configuration written to {out} from {src}")


def olddefconfig(args, out):
    """Bring `out` up to the Kconfig tree, listing every value dropped or changed; a
    value that stays invalid (a real number that is not one) is an error, nothing written."""
    kconf = cfglib.load_kconf(out, strict=False)
    changes = cfglib.changed_values(kconf)
    reported = {name for name, _ in changes}
    for warning in kconf.warnings:
        if not any(f" {name} " in warning or f"_{name} " in warning for name in reported):
            print(cfglib._with_retired_hint(warning), file=sys.stderr)
    kconf.warnings.clear()
    for _, line in changes:
        print(f"changed: {line}", file=sys.stderr)
    invalid = cfglib._float_errors(kconf)
    if invalid:
        raise cfglib.ConfigError(f"{out}: " + f"\n{out}: ".join(invalid)
                                 + "\nset a valid value (make menuconfig, or edit the file); "
                                   "nothing was written")
    cfglib.write_config(kconf, out)
    print(f"# {out} updated to the current Kconfig tree"
          + (f"; {len(changes)} value(s) changed, listed above" if changes else ""))


def savedefconfig(args, out):
    kconf = cfglib.load_kconf(out)
    cfglib.write_config(kconf, args.out, minimal=True)
    print(f"# minimal configuration written to {args.out}")


def setconfig(args, out):
    assignments = list(args.assignments)
    if args.env:
        assignments += split_assignments(os.environ.get(args.env, ""))
    if not assignments:
        raise cfglib.ConfigError("nothing to set: make setconfig SET='MAX_ITERS=20 "
                                 "EVAL_INTERVAL=10' (quote a value with spaces: "
                                 "SET='MATRIX_SPARSITIES=\"0.5 0.7\"')")
    kconf = cfglib.load_kconf(out, assignments)
    cfglib.write_config(kconf, out)
    print(f"# {out}: set {' '.join(shlex.quote(a) for a in assignments)}")


def split_assignments(text: str) -> list:
    """NAME=VALUE words of `text` as a POSIX shell splits them (quotes and backslashes
    group, '#' is a character); nothing is expanded or executed."""
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError as e:
        raise cfglib.ConfigError(f"{text!r}: {e.args[0].lower()}; the assignments are split "
                                 f"as a shell splits words: close every quote, or put a "
                                 f"backslash before a lone quote") from None


def listnewconfig(args, out):
    kconf = cfglib.load_kconf(out)
    for sym in kconf.unique_defined_syms:
        if sym.user_value is None and sym.visibility and sym.config_string:
            print(sym.config_string, end="")


def check(args, out):
    cfglib.load(out)
    print(f"# {out}: valid")


def extras(args, out):
    cfg = cfglib.load(out)
    wanted = extras_lib.missing(cfg) if args.missing or args.install else sorted(
        extras_lib.selected(cfg))
    if not args.install:
        print(" ".join(wanted))
        return
    if wanted:
        spec = f"{cfglib.ROOT}[{','.join(wanted)}]"
        print(f"  PIP     kmatrix[{','.join(wanted)}] (selected by {out})", flush=True)
        # pip re-resolves torch: the same requirement as the first install keeps its build
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", args.torch,
                        "-e", spec], check=True)


NO_TERMINAL = ("make menuconfig needs a terminal ({}); without one set symbols "
               "with make setconfig SET='NAME=VALUE ...' (or edit .config, then make "
               "checkconfig)")


def menuconfig(args, out):
    import curses

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise cfglib.ConfigError(NO_TERMINAL.format("standard input and output are not one"))
    import menuconfig as kconfiglib_menuconfig

    os.environ["KCONFIG_CONFIG"] = str(out)
    try:
        kconfiglib_menuconfig.menuconfig(cfglib.load_tree())
    except curses.error as e:
        raise cfglib.ConfigError(NO_TERMINAL.format(f"curses: {e}")) from None
    cfglib.load(out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.configtool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (defconfig, olddefconfig, savedefconfig, setconfig, listnewconfig, check,
                    menuconfig, extras):
        sub.add_parser(command.__name__).set_defaults(command=command)
    sub.choices["defconfig"].add_argument("file")
    sub.choices["savedefconfig"].add_argument("out", nargs="?", default="defconfig")
    sub.choices["setconfig"].add_argument("assignments", nargs="*", metavar="NAME=VALUE")
    sub.choices["setconfig"].add_argument("--env", metavar="VARIABLE",
                                          help="also the assignments in this environment "
                                               "variable, split as a shell splits words")
    sub.choices["extras"].add_argument("--missing", action="store_true",
                                       help="only those whose package is not installed")
    sub.choices["extras"].add_argument("--install", action="store_true",
                                       help="pip install the missing ones")
    sub.choices["extras"].add_argument("--torch", default="torch",
                                       help="the torch requirement of the first install")
    args = parser.parse_args(argv)
    try:
        args.command(args, cfglib.default_config_path())
    except cfglib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
