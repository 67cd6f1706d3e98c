"""pyproject's extras: what each .config choice needs, that make installs it, and that a
missing one is an error naming it; bitsandbytes loads only when it is selected."""
import subprocess
import sys
import tomllib

import pytest

from gpt2.data.errors import DataError
from gpt2.data.huggingface import import_datasets
from lib import config as cfglib
from lib import configtool
from lib import extras

PYPROJECT = tomllib.loads((cfglib.ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements):
    return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
            for r in requirements}


def test_every_needed_module_is_in_its_extra_and_not_a_core_requirement():
    optional = PYPROJECT["optional-dependencies"]
    core = _names(PYPROJECT["dependencies"])
    for (choice, value), (extra, module) in extras.NEEDS.items():
        assert module in _names(optional[extra]), (choice, value, extra)
        assert module not in core, f"{module} is a core requirement and in [{extra}]"
        assert extra in optional["all"][0], f"[all] leaves out [{extra}]"
    assert "kmatrix[all]" in optional["test"]


def test_every_choice_value_is_one_the_kconfig_tree_has():
    kconf = cfglib.load_tree()
    for choice, value in extras.NEEDS:
        symbol = kconf.syms[f"{choice}_{value.upper().replace('-', '_')}"]
        assert symbol.choice is not None and symbol.choice.name == choice


@pytest.mark.parametrize("defconfig, wanted", [("default", ""),
                                               ("gpt2-finewebedu-matrix", "hub"),
                                               ("gpt2-shakespeare-matrix-slurm", "slurm")])
def test_configtool_lists_the_extras_a_defconfig_selects(tmp_path, monkeypatch, capsys,
                                                         defconfig, wanted):
    monkeypatch.setenv("KCONFIG_CONFIG", str(tmp_path / "config"))
    assert configtool.main(["defconfig", str(cfglib.ROOT / "defconfigs" / defconfig)]) == 0
    capsys.readouterr()
    assert configtool.main(["extras"]) == 0
    assert capsys.readouterr().out.strip() == wanted


def test_install_runs_pip_on_the_missing_extras_only(tiny_config, monkeypatch, capsys):
    config = tiny_config("TRACKER_TENSORBOARD=y")
    monkeypatch.setenv("KCONFIG_CONFIG", str(config))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, check: calls.append(argv))
    assert configtool.main(["extras", "--install", "--torch", "torch<2.14"]) == 0
    assert calls == []  # tensorboard is installed here
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda module: None)
    assert configtool.main(["extras", "--missing"]) == 0
    assert capsys.readouterr().out.strip().endswith("trackers")
    assert configtool.main(["extras", "--install", "--torch", "torch<2.14"]) == 0
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", "torch<2.14",
                      "-e", f"{cfglib.ROOT}[trackers]"]]


def test_a_missing_extra_is_named_in_the_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    with pytest.raises(cfglib.ConfigError, match=r"pip install -e '\.\[slurm\]'"):
        cfglib.require("submitit", "MATRIX_EXECUTOR_SLURM", "submitit", "select another")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"DATASET_HF .*pip install -e '\.\[hub\]'"):
        import_datasets("DATASET_HF (a hub dataset)")
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # a core requirement: its own name
    with pytest.raises(cfglib.ConfigError, match="pip install lion-pytorch"):
        cfglib.require("lion_pytorch", "OPTIMIZER_LION", "lion-pytorch", "select another")


LOADED = ("import sys; from scripts import estimate; estimate.main([sys.argv[1], *sys.argv[2:]]);"
          " print('bitsandbytes loaded:', 'bitsandbytes' in sys.modules)")


@pytest.mark.parametrize("extra, loaded", [((), False), (("--set", "OPTIMIZER=adamw-8bit"), True)])
def test_estimate_loads_bitsandbytes_only_when_it_is_selected(tiny_config, extra, loaded):
    out = subprocess.run([sys.executable, "-c", LOADED, str(tiny_config()), *extra],
                         capture_output=True, text=True, check=True).stdout
    assert f"bitsandbytes loaded: {loaded}" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("adamw-8bit"))
    assert ("MiB" in row) is loaded  # measured when selected, else said why not
