"""The Makefile's configuration targets, run as a user runs them."""
import subprocess
import sys

import pytest

from lib import config as cfglib

DEFCONFIGS = sorted(p.name for p in (cfglib.ROOT / "defconfigs").iterdir())


def make(tmp_path, *args):
    """make in the project root with .config in tmp_path and this Python (no venv set-up)."""
    return subprocess.run(["make", "--no-print-directory", "-C", str(cfglib.ROOT), "INSTALL=",
                           f"PY={sys.executable}", f"KCONFIG_CONFIG={tmp_path / '.config'}", *args],
                          capture_output=True, text=True, timeout=120)


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
