"""The Makefile's configuration targets, run as a user runs them."""
import subprocess
import sys

import pytest

from conftest import EVENT_LIMIT_S
from lib import config as cfglib

DEFCONFIGS = sorted(p.name for p in (cfglib.ROOT / "defconfigs").iterdir())


def make(tmp_path, *args):
    """make in the project root with .config in tmp_path and this Python (no venv set-up)."""
    return subprocess.run(["make", "--no-print-directory", "-C", str(cfglib.ROOT), "INSTALL=",
                           f"PY={sys.executable}", f"KCONFIG_CONFIG={tmp_path / '.config'}", *args],
                          capture_output=True, text=True, timeout=EVENT_LIMIT_S)


def test_help_lists_targets_and_every_defconfig_with_its_description(tmp_path):
    out = make(tmp_path, "help").stdout
    for target in ("menuconfig", "savedefconfig", "setconfig", "listnewconfig", "olddefconfig",
                   "data", "train", "sample", "test", "clean", "mrproper"):
        assert f"  {target}" in out, target
    for name in DEFCONFIGS:
        description = (cfglib.ROOT / "defconfigs" / name).read_text().splitlines()[0][2:]
        assert f"defconfig-{name}" in out and description in out


@pytest.mark.parametrize("name", DEFCONFIGS)
def test_defconfig_target_writes_a_valid_config(tmp_path, name):
    result = make(tmp_path, f"defconfig-{name}")
    assert result.returncode == 0, result.stderr
    cfg = cfglib.load(tmp_path / ".config")
    assert cfg.RECIPE == name


def test_setconfig_target_checks_every_value(tmp_path):
    assert make(tmp_path, "defconfig").returncode == 0
    assert make(tmp_path, "setconfig", "SET=MAX_ITERS=20 EVAL_INTERVAL=10").returncode == 0
    cfg = cfglib.load(tmp_path / ".config")
    assert (cfg.MAX_ITERS, cfg.EVAL_INTERVAL) == (20, 10)
    assert (tmp_path / ".config.old").is_file()
    bad = make(tmp_path, "setconfig", "SET=NUM_EPOCHS=3")
    assert bad.returncode != 0
    assert "NUM_EPOCHS depends on BUDGET_EPOCHS" in bad.stderr
    assert cfglib.load(tmp_path / ".config").MAX_ITERS == 20


def test_savedefconfig_target_writes_the_minimal_config(tmp_path):
    assert make(tmp_path, "defconfig-gpt2-shakespeare-l4").returncode == 0
    result = make(tmp_path, "savedefconfig", f"SAVEDEFCONFIG={tmp_path / 'defconfig'}")
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "defconfig").read_text()
    shipped = (cfglib.ROOT / "defconfigs" / "gpt2-shakespeare-l4").read_text()
    # the shipped file is the minimal config under its comment block (description, reasoning)
    body = shipped.splitlines()
    while body[0].startswith("#") and "CONFIG_" not in body[0]:
        body.pop(0)
    assert saved.splitlines() == body


def test_a_named_config_that_does_not_exist_is_an_error(tmp_path):
    """Only the default .config is created on demand (KCONFIG_CONFIG here is not .config)."""
    named = tmp_path / "mine.config"
    result = make(tmp_path, f"KCONFIG_CONFIG={named}", "train")
    assert result.returncode != 0
    assert f"{named}: no such config file" in result.stderr
    assert not named.exists() and not (tmp_path / "results").exists()


def test_a_config_in_a_missing_directory_is_a_clear_error(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / ".config"
    result = make(tmp_path, f"KCONFIG_CONFIG={target}", "defconfig")
    assert result.returncode != 0
    assert f"the directory {target.parent} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_setconfig_takes_any_value_byte_for_byte_and_executes_nothing(tmp_path):
    """SET is split as a shell splits words, never run: a value quoted as `printf %q`
    quotes it arrives as typed, and a list symbol takes a quoted list."""
    assert make(tmp_path, "defconfig").returncode == 0
    marker = tmp_path / "executed"
    value = f"a`touch {marker}1`b$(touch {marker}2);c'd\"e f#g\\h ${{HOME}}"
    quoted = subprocess.run(["bash", "-c", 'printf %q "$1"', "_", value],
                            capture_output=True, text=True, check=True).stdout
    result = make(tmp_path, "setconfig",
                  f"SET=SAMPLE_PROMPT={quoted} MATRIX=y MATRIX_LR_MULTIPLIERS=\"1 3 10\" "
                  f"MATRIX_SPARSITIES='0.5 0.7' SEED=2")
    assert result.returncode == 0, result.stderr
    cfg = cfglib.load(tmp_path / ".config")
    assert cfg.SAMPLE_PROMPT == value
    assert cfg.MATRIX_LR_MULTIPLIERS == (1.0, 3.0, 10.0) and cfg.MATRIX_SPARSITIES == (0.5, 0.7)
    assert cfg.SEED == 2
    assert not list(tmp_path.glob("executed*"))


def test_setconfig_names_what_the_user_typed(tmp_path):
    assert make(tmp_path, "defconfig").returncode == 0
    before = (tmp_path / ".config").read_bytes()
    for setting, message in (
            ("MATRIX=y MATRIX_LR_MULTIPLIERS=1 3 10",
             "'3': expected NAME=VALUE, e.g. MAX_ITERS=20; a value with spaces needs quotes: "
             "SET='MATRIX_LR_MULTIPLIERS=\"1 3 10\"'"),
            ("ADAMW_RL=1e-3", "ADAMW_RL=1e-3: unknown symbol ADAMW_RL (did you mean ADAMW_LR"),
            ("NUM_EPOCHS=3", "NUM_EPOCHS=3: dropped, NUM_EPOCHS depends on BUDGET_EPOCHS"),
            ("SAMPLE_PROMPT=\"open", "no closing quotation"),
            ("SAMPLE_PROMPT='a\nb'", "SAMPLE_PROMPT: the value holds a line break"),
            ("", "nothing to set")):
        result = make(tmp_path, "setconfig", f"SET={setting}")
        assert result.returncode == 2, setting
        errors = [line for line in result.stderr.splitlines() if not line.startswith("make")]
        assert len(errors) == 1 and message in errors[0], (setting, result.stderr)
        assert "override" not in errors[0]
        assert (tmp_path / ".config").read_bytes() == before


def test_a_misspelt_defconfig_names_the_nearest_and_lists_them_all(tmp_path):
    result = make(tmp_path, "defconfig-gpt2-shakespeare-l5")
    assert result.returncode != 0
    assert "no such defconfig (did you mean gpt2-shakespeare-l4" in result.stderr
    assert all(name in result.stderr for name in DEFCONFIGS)
    assert not (tmp_path / ".config").exists()


def test_menuconfig_without_a_terminal_is_one_line(tmp_path):
    assert make(tmp_path, "defconfig").returncode == 0
    result = subprocess.run(["make", "--no-print-directory", "-C", str(cfglib.ROOT), "INSTALL=",
                             f"PY={sys.executable}", f"KCONFIG_CONFIG={tmp_path / '.config'}",
                             "menuconfig"], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=EVENT_LIMIT_S)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "needs a terminal" in result.stderr and "make setconfig" in result.stderr
