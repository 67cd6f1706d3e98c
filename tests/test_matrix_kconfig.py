"""The matrix's per-entry switches are generated from the registries (scripts/matrix_kconfig):
the committed fragment is current, a registry entry becomes a switch, a switch selects it."""
import kconfiglib
import pytest

from lib import config as cfglib
from lib import optim, prune
from scripts import matrix_kconfig as mk


def test_the_committed_fragment_is_what_the_registries_give():
    assert mk.GENERATED.read_text() == mk.render(), (
        f"{mk.GENERATED.name} is stale: run `{mk.MAKE_TARGET}` and commit it")


def test_every_registry_entry_has_a_switch_in_the_tree():
    tree = cfglib.load_tree()
    for dimension in mk.DIMENSIONS.values():
        for name in dimension.names():
            assert dimension.symbol(name) in tree.syms, dimension.symbol(name)
    generated = {s.name for s in tree.unique_defined_syms
                 if s.nodes[0].filename.endswith("Kconfig.matrix-generated")}
    assert generated == {d.symbol(n) for d in mk.DIMENSIONS.values() for n in d.names()}


def _tree(tmp_path, optimizers: str):
    """A small tree with the three choices the switches stand for."""
    (tmp_path / "Kconfig").write_text(
        f'choice OPTIMIZER\n\tprompt "o"\n\tdefault OPTIMIZER_NADAM\n{optimizers}endchoice\n'
        'choice PRUNING\n\tprompt "p"\n\tdefault PRUNING_NONE\n'
        + "".join(f'config PRUNING_{n.upper()}\n\tbool "{n}"\n' for n in ("none", *prune.PRUNERS))
        + 'endchoice\nchoice ADAMWPRUNE_VARIANT\n\tprompt "v"\n'
        + "".join(f'config ADAMWPRUNE_VARIANT_{v.upper()}\n\tbool "{v}"\n'
                  for v in prune.StatePruner.VARIANTS) + 'endchoice\n')
    return kconfiglib.Kconfig(str(tmp_path / "Kconfig"), warn_to_stderr=False)


def test_a_new_registry_entry_becomes_a_switch_with_its_own_prompt_and_default(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(optim, "OPTIMIZERS", {"nadam": optim.OPTIMIZERS["adamw"],
                                              "adamw": optim.OPTIMIZERS["adamw"]})
    tree = _tree(tmp_path, 'config OPTIMIZER_NADAM\n\tbool "NAdam"\n'
                           'config OPTIMIZER_ADAMW\n\tbool "AdamW"\n')
    text = mk.render(tree)
    (tmp_path / "Kconfig.switches").write_text("config MATRIX\n\tbool\n\tdefault y\n" + text)
    switches = kconfiglib.Kconfig(str(tmp_path / "Kconfig.switches"), warn_to_stderr=False)
    nadam, adamw = switches.syms["MATRIX_OPTIMIZER_NADAM"], switches.syms["MATRIX_OPTIMIZER_ADAMW"]
    assert nadam.nodes[0].prompt[0] == "NAdam" and nadam.str_value == "y"  # the choice's default
    assert adamw.str_value == "n" and adamw.nodes[0].help
    assert switches.syms["MATRIX_VARIANT_BITTER0"].str_value == "n"  # needs MATRIX_PRUNING_STATE


def test_a_registry_entry_without_its_kconfig_block_names_the_file_and_the_fix(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(optim, "OPTIMIZERS", {"nadam": optim.OPTIMIZERS["adamw"]})
    tree = _tree(tmp_path, 'config OPTIMIZER_ADAMW\n\tbool "AdamW"\n')
    with pytest.raises(cfglib.ConfigError,
                       match=r'"nadam" has no choice member config OPTIMIZER_NADAM in '
                             r"lib/optim/Kconfig.*make matrix-kconfig"):
        mk.render(tree)


def test_switches_select_registry_entries_in_registry_order(tiny_config):
    cfg = cfglib.load(tiny_config("MATRIX=y", "MATRIX_OPTIMIZER_ADAMWSPAM=y",
                                  "MATRIX_OPTIMIZER_ADAMW_8BIT=y", "MATRIX_PRUNING_NONE=n",
                                  "MATRIX_PRUNING_STATE=y", "MATRIX_VARIANT_BITTER1=y"))
    assert mk.selected(cfg, "OPTIMIZER") == [n for n in optim.OPTIMIZERS
                                             if n in ("adamw", "adamw-8bit", "adamwspam")]
    assert mk.selected(cfg, "PRUNING") == ["state"]
    assert mk.selected(cfg, "VARIANT") == ["bitter0", "bitter1"]


def test_check_mode_fails_on_a_stale_fragment(tmp_path, capsys):
    stale = tmp_path / "Kconfig.matrix-generated"
    stale.write_text("# edited by hand\n")
    assert mk.main(["--check", "--output", str(stale)]) == 1
    assert "make matrix-kconfig" in capsys.readouterr().err
    assert mk.main(["--output", str(stale)]) == 0
    assert mk.main(["--check", "--output", str(stale)]) == 0


def test_a_registry_entry_the_fragment_lacks_is_an_error_not_a_silent_skip(tiny_config,
                                                                           monkeypatch):
    cfg = cfglib.load(tiny_config("MATRIX=y"))
    monkeypatch.setattr(optim, "OPTIMIZERS", {**optim.OPTIMIZERS,
                                              "nadam": optim.OPTIMIZERS["adamw"]})
    with pytest.raises(cfglib.ConfigError, match="MATRIX_OPTIMIZER_NADAM.*make matrix-kconfig"):
        mk.selected(cfg, "OPTIMIZER")
