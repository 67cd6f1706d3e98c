"""The config reader: types, ranges, depends on, every warning an error, float strings."""
import pickle
from pathlib import Path

import pytest

from lib import config as cfglib
from lib import configtool

DEFCONFIGS = sorted((cfglib.ROOT / "defconfigs").iterdir())


def write_config(tmp_path, *lines, base=None) -> Path:
    """A full .config (the Kconfig defaults, or `base`) with `lines` appended."""
    path = tmp_path / "config"
    if base is None:
        cfglib.write_config(cfglib.load_tree(), path)
    else:
        path.write_text(Path(base).read_text())
    with path.open("a") as f:
        f.writelines(line + "\n" for line in lines)
    return path


def test_types_of_values(tmp_path):
    cfg = cfglib.load(write_config(tmp_path))
    assert cfg.N_LAYER == 12 and type(cfg.N_LAYER) is int
    assert cfg.BIAS is True
    assert cfg.ADAMW_LR == pytest.approx(6e-4) and type(cfg.ADAMW_LR) is float
    assert cfg.RESULTS_DIR == "results"
    assert cfg.OPTIMIZER == "adamw" and cfg.MODEL_SIZE == "gpt2" and cfg.DATASET == "shakespeare-char"
    # inactive symbols (dependencies unmet) carry no value
    assert cfg.NUM_EPOCHS is None and cfg.COMPILE_MODE is None


def test_config_is_frozen_and_picklable(tmp_path):
    cfg = cfglib.load(write_config(tmp_path))
    with pytest.raises(AttributeError):
        cfg.N_LAYER = 3
    with pytest.raises(AttributeError, match="no Kconfig symbol"):
        cfg.NOT_A_SYMBOL
    clone = pickle.loads(pickle.dumps(cfg))
    assert dict(clone) == dict(cfg) and clone.hash == cfg.hash


@pytest.mark.parametrize("line, message", [
    ("CONFIG_MAX_ITERS=0", r"CONFIG_MAX_ITERS=0: outside the allowed range \[1, 100000000\]"),
    ("CONFIG_NO_SUCH_KNOB=y", "undefined symbol NO_SUCH_KNOB"),
    ("CONFIG_NUM_EPOCHS=\"2\"", "NUM_EPOCHS depends on BUDGET_EPOCHS, which is not met"),
    ("CONFIG_N_LAYER=4", "N_LAYER can be set only when MODEL_SIZE_CUSTOM"),
    ("this is not a config line", "malformed line"),
    ("CONFIG_ADAMW_LR=\"fast\"", r"CONFIG_ADAMW_LR=\"fast\": 'fast' is not a number; expected a float in \(0, 10\]"),
    ("CONFIG_DROPOUT=\"1.0\"", r"CONFIG_DROPOUT=\"1.0\": 1.0 is outside the allowed range \[0, 1\)"),
    ("CONFIG_BATCH_SIZE=twelve", "BATCH_SIZE"),
])
def test_every_problem_is_an_error(tmp_path, line, message):
    with pytest.raises(cfglib.ConfigError, match=message):
        cfglib.load(write_config(tmp_path, line))


def test_float_lists(tmp_path):
    path = write_config(tmp_path)
    cfg = cfglib.load(path, ["MATRIX=y", "MATRIX_SPARSITIES=0.5 0.7  0.9"])
    assert cfg.MATRIX_SPARSITIES == (0.5, 0.7, 0.9)
    with pytest.raises(cfglib.ConfigError, match="1.5 is outside the allowed range"):
        cfglib.load(path, ["MATRIX=y", "MATRIX_SPARSITIES=0.5 1.5"])
    with pytest.raises(cfglib.ConfigError, match="expected space-separated floats"):
        cfglib.load(path, ["MATRIX=y", "MATRIX_SPARSITIES="])


def test_two_members_of_one_choice_is_an_error(tmp_path):
    with pytest.raises(cfglib.ConfigError, match="CONFIG_MODEL_SIZE_GPT2=y: conflicts"):
        cfglib.load(write_config(tmp_path, "CONFIG_MODEL_SIZE_CUSTOM=y"))


def test_missing_config_names_the_fix(tmp_path):
    with pytest.raises(cfglib.ConfigError, match="make defconfig"):
        cfglib.load(tmp_path / "nope")


def test_overrides_take_or_fail(tmp_path):
    path = write_config(tmp_path)
    cfg = cfglib.load(path, ["CONFIG_EVAL_INTERVAL=10", "MODEL_SIZE=custom",
                             "N_LAYER=3", "BUDGET=epochs", "NUM_EPOCHS=2.5"])
    assert (cfg.EVAL_INTERVAL, cfg.N_LAYER, cfg.BUDGET, cfg.NUM_EPOCHS) == (10, 3, "epochs", 2.5)
    assert cfg.MAX_ITERS is None  # made irrelevant by the budget override: not an error
    with pytest.raises(cfglib.ConfigError, match="MAX_ITERS depends on BUDGET_ITERS"):
        cfglib.load(path, ["MAX_ITERS=20", "BUDGET=tokens"])  # contradictory overrides
    with pytest.raises(cfglib.ConfigError, match="not a choice of OPTIMIZER"):
        cfglib.load(path, ["OPTIMIZER=nonsense"])
    with pytest.raises(cfglib.ConfigError, match="unknown symbol NOPE"):
        cfglib.load(path, ["NOPE=1"])
    with pytest.raises(cfglib.ConfigError, match="N_LAYER can be set only when"):
        cfglib.load(path, ["N_LAYER=3"])
    with pytest.raises(cfglib.ConfigError, match="outside the allowed range"):
        cfglib.load(path, ["EVAL_ITERS=0"])
    with pytest.raises(cfglib.ConfigError, match="expected NAME=VALUE"):
        cfglib.load(path, ["EVAL_ITERS"])


def test_hash_ignores_where_results_go_only(tmp_path):
    path = write_config(tmp_path)
    base = cfglib.load(path).hash
    assert cfglib.load(path, ["RUN_NAME=x", "RESULTS_DIR=/tmp/elsewhere"]).hash == base
    assert cfglib.load(path, ["SEED=1"]).hash != base
    assert cfglib.load(path, ["ADAMW_LR=1e-3"]).hash != base


@pytest.mark.parametrize("defconfig", DEFCONFIGS, ids=lambda p: p.name)
def test_defconfig_loads_cleanly_and_is_minimal(defconfig, tmp_path):
    kconf = cfglib.load_kconf(defconfig)  # strict: any warning would raise
    assert kconf.syms["RECIPE"].str_value == defconfig.name
    minimal = tmp_path / "min"
    cfglib.write_config(kconf, minimal, minimal=True)
    description, *assignments = defconfig.read_text().splitlines()
    assert description.startswith("# ") and len(description) > 10, "line 1: the description"
    # then, optionally, a comment block (a recipe's reasoning), then the minimal config
    while assignments and assignments[0].startswith("#") and "CONFIG_" not in assignments[0]:
        assignments.pop(0)
    assert assignments == minimal.read_text().splitlines()


def test_savedefconfig_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("KCONFIG_CONFIG", str(tmp_path / ".config"))
    assert configtool.main(["defconfig", str(cfglib.ROOT / "defconfigs/default")]) == 0
    assert configtool.main(["setconfig", "SEED=7", "OPTIMIZER=adamw"]) == 0
    full = cfglib.load(tmp_path / ".config")
    assert configtool.main(["savedefconfig", str(tmp_path / "defconfig")]) == 0
    assert "CONFIG_SEED=7" in (tmp_path / "defconfig").read_text()
    again = cfglib.load(tmp_path / "defconfig")
    assert dict(again) == dict(full) and again.hash == full.hash


def test_failed_setconfig_loses_nothing(tmp_path, monkeypatch, capsys):
    config = tmp_path / ".config"
    monkeypatch.setenv("KCONFIG_CONFIG", str(config))
    assert configtool.main(["defconfig", str(cfglib.ROOT / "defconfigs/default")]) == 0
    before = config.read_text()
    assert configtool.main(["setconfig", "MAX_ITERS=-5"]) == 2
    assert "MAX_ITERS=-5: outside the allowed range" in capsys.readouterr().err
    assert config.read_text() == before


def test_olddefconfig_reports_and_drops_stale_values(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, "CONFIG_REMOVED_KNOB=3")
    monkeypatch.setenv("KCONFIG_CONFIG", str(config))
    assert configtool.main(["olddefconfig"]) == 0
    assert "REMOVED_KNOB" in capsys.readouterr().err
    assert "REMOVED_KNOB" not in config.read_text()
    cfglib.load(config)  # clean now


def test_listnewconfig_lists_unset_symbols(tmp_path, monkeypatch, capsys):
    config = tmp_path / ".config"
    config.write_text('CONFIG_RECIPE="x"\n')
    monkeypatch.setenv("KCONFIG_CONFIG", str(config))
    assert configtool.main(["listnewconfig"]) == 0
    out = capsys.readouterr().out
    assert "CONFIG_SEED=1337" in out and "CONFIG_RECIPE" not in out


def test_state_pruning_with_sgd_is_impossible(tmp_path):
    path = write_config(tmp_path, "# CONFIG_OPTIMIZER_ADAMW is not set", "CONFIG_OPTIMIZER_SGD=y",
                        "# CONFIG_PRUNING_NONE is not set", "CONFIG_PRUNING_STATE=y")
    with pytest.raises(cfglib.ConfigError, match=r"PRUNING_STATE depends on \(OPTIMIZER_ADAM \|\| OPTIMIZER_ADAMW \|\| OPTIMIZER_ADAMWSPAM\), which"):
        cfglib.load(path)
    with pytest.raises(cfglib.ConfigError, match="PRUNING_STATE depends on"):
        cfglib.load(write_config(tmp_path), ["OPTIMIZER=sgd", "PRUNING=state"])
    with pytest.raises(cfglib.ConfigError, match="TARGET_SPARSITY=0.995: 0.995 is outside"):
        cfglib.load(write_config(tmp_path), ["PRUNING=magnitude", "TARGET_SPARSITY=0.995"])


def test_every_symbol_and_choice_has_a_prompt_and_help():
    tree = cfglib.load_tree()
    for item in [*tree.unique_defined_syms, *tree.unique_choices]:
        for node in item.nodes:
            assert node.prompt, f"{item.name}: no prompt"
            assert node.help and len(node.help) >= 10, f"{item.name}: no help text"
    # every choice is named, so it reads as cfg.<NAME>; its members carry its prefix
    for choice in tree.unique_choices:
        assert choice.name and all(m.name.startswith(choice.name + "_") for m in choice.syms)


def test_a_retired_symbol_names_its_successor(tmp_path):
    old = tmp_path / "old.config"
    old.write_text('CONFIG_LEARNING_RATE="1e-3"\nCONFIG_MIN_LR="1e-4"\n')
    with pytest.raises(cfglib.ConfigError) as info:
        cfglib.load(old)
    assert "LEARNING_RATE was replaced by each optimizer's own rate" in str(info.value)
    assert "MIN_LR was replaced by MIN_LR_FRACTION" in str(info.value)
    with pytest.raises(cfglib.ConfigError, match="LEARNING_RATE.*replaced by .*ADAMW_LR"):
        cfglib.load(cfglib.ROOT / "defconfigs" / "default", ["LEARNING_RATE=1e-3"])


def test_olddefconfig_lists_every_value_it_changes(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, "CONFIG_N_LAYER=999", "CONFIG_REMOVED_KNOB=3",
                          "CONFIG_NUM_EPOCHS=\"3\"")
    monkeypatch.setenv("KCONFIG_CONFIG", str(config))
    assert configtool.main(["olddefconfig"]) == 0
    err = capsys.readouterr().err
    assert "changed: CONFIG_N_LAYER=999 -> '12': outside the allowed range [1, 256]" in err
    assert "changed: CONFIG_NUM_EPOCHS=3 -> unset: dropped, NUM_EPOCHS depends on" in err
    assert "REMOVED_KNOB" in err
    assert err.count("N_LAYER") == 1  # once, not again as kconfiglib's own warning
    cfglib.load(config)


def test_olddefconfig_refuses_an_invalid_value_it_cannot_fix(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, "CONFIG_DROPOUT=\"abc\"")
    monkeypatch.setenv("KCONFIG_CONFIG", str(config))
    before = config.read_text()
    assert configtool.main(["olddefconfig"]) == 2
    err = capsys.readouterr().err
    assert "CONFIG_DROPOUT=\"abc\": 'abc' is not a number" in err and "nothing was written" in err
    assert config.read_text() == before


# ------------------------------------------------------------ the run hash, symbol by symbol
# Bases that, with the defconfigs, make every symbol of the tree visible somewhere.
HASH_BASES = ([], ["MATRIX=y", "MATRIX_EXECUTOR=slurm", "MATRIX_PRUNING_STATE=y"],
              ["TRACKER=wandb", "DATASET=hf", "BUDGET=epochs", "LR_SCHEDULE=wsd", "COMPILE=y",
               "PRUNING=state", "ADAMWPRUNE_VARIANT=bitter2", "MLP=swiglu", "POSITIONS=rope"],
              ["DATASET=text-files", "BUDGET=tokens", "OPTIMIZER=sgd", "PRUNING=magnitude"],
              ["BUDGET=minutes", "OPTIMIZER=adamwspam", "PRUNING=state",
               "ADAMWPRUNE_VARIANT=bitter2", "BITTER2_SPEND_BATCH=y", "MLP=bio",
               "DATASET=finewebedu", "MODEL_SIZE=custom"],
              ["OPTIMIZER=adafactor", "DATASET=hf", "TOKENIZER=char"],
              ["OPTIMIZER=adamw-8bit", "DATASET=openwebtext"], ["OPTIMIZER=lion", "BATCH_SIZE_AUTO=y"],
              ["OPTIMIZER=adam"],
              ["MATRIX=y", "MATRIX_TUNING_TRIALS=2", "MATRIX_OPTIMIZER_SGD=y",
               "MATRIX_OPTIMIZER_ADAM=y", "MATRIX_OPTIMIZER_ADAFACTOR=y",
               "MATRIX_OPTIMIZER_ADAMW_8BIT=y"])


def _another_value(sym):
    """A value of `sym` different from its current one that kconfiglib accepts, or None."""
    import kconfiglib
    if sym.choice is not None:
        if sym.choice.selection is not sym:
            return sym, "y"
        other = next(s for s in sym.choice.syms if s is not sym and s.visibility)
        return other, "y"
    if sym.type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
        return sym, "n" if sym.tri_value == 2 else "y"
    if sym.type in (kconfiglib.INT, kconfiglib.HEX):
        now = int(sym.str_value, 0)
        lo, hi = next(((int(a.str_value, 0), int(b.str_value, 0)) for a, b, cond in sym.ranges
                       if kconfiglib.expr_value(cond)), (now - 1, now + 1))
        return sym, str(now + 1 if now + 1 <= hi else now - 1)
    spec = cfglib.float_spec(sym)
    if spec is not None:
        _, lo, _, hi, _ = spec
        words = sym.str_value.split() or ["0"]
        new = (lo + hi) / 2 if float(words[0]) != (lo + hi) / 2 else (lo + 3 * hi) / 4
        return sym, " ".join([repr(new)] + words[1:])
    return sym, sym.str_value + "x"


def _hash_cases(tmp_path):
    """{symbol name: (config path, another value of it)} over the bases, for every symbol
    that is visible in one of them."""
    cases = {}
    defconfigs = [(d, []) for d in DEFCONFIGS]
    for i, (base, overrides) in enumerate(defconfigs + [(DEFCONFIGS[0], o) for o in HASH_BASES]):
        kconf = cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default"
                                  if overrides else base, overrides)
        path = tmp_path / f"base{i}"
        cfglib.write_config(kconf, path)
        for sym in kconf.unique_defined_syms:
            if sym.name not in cases and sym.visibility and sym.config_string:
                cases[sym.name] = path
    return cases


def test_every_symbol_is_hashed_unless_tagged_not_hashed(tmp_path):
    """Changing a symbol tagged "Not part of the run hash." keeps the run's hash; changing
    any other symbol changes it: symbol by symbol over the whole tree."""
    from lib import kconfig_tags
    kconf = cfglib.load_tree()
    cases = _hash_cases(tmp_path)
    unseen = {s.name for s in kconf.unique_defined_syms} - set(cases)
    assert not unseen, f"no base makes these visible, add one to HASH_BASES: {sorted(unseen)}"
    tagged = kconfig_tags.not_hashed_names(kconf)
    assert {"RUN_NAME", "LOG_INTERVAL", "CHECKPOINT_INTERVAL", "SAMPLE_COUNT", "MATRIX_JOBS",
            "DDP_NPROC_PER_NODE", "TRACKER_WANDB", "MEMORY_SNAPSHOT_ITERS"} <= tagged
    assert not {"EVAL_INTERVAL", "EVAL_ITERS", "SEED", "DEVICE_CPU", "TF32"} & tagged
    wrong = []
    for name, path in sorted(cases.items()):
        kconf.load_config(str(path))
        before = cfglib.config_hash(kconf)
        sym, value = _another_value(kconf.syms[name])
        old = sym.str_value
        sym.set_value(value)
        assert sym.str_value != old, (name, value)  # the change took
        if (cfglib.config_hash(kconf) == before) != (name in tagged):
            wrong.append(f"{name} ({'tagged' if name in tagged else 'hashed'})")
    kconf.warnings.clear()
    assert not wrong, f"the hash disagrees with the tag: {wrong}"


def test_a_knob_only_some_cells_read_changes_only_their_ids(tiny_config):
    """A cell's hash covers what the cell reads: LION_LR is invisible (its `depends on` is
    false) in the AdamW cell, so kconfiglib writes no line for it and its id stays."""
    from scripts import matrix
    grid = ("MATRIX=y", "MATRIX_OPTIMIZER_LION=y", "MATRIX_OPTIMIZER_ADAMWSPAM=y")

    def cells(*extra):
        config = tiny_config(*grid, *extra, name=f"matrix{len(seen)}.config")
        seen.append(config)
        return {c.spec.optimizer: c for c in matrix.load_matrix(config).cells}
    seen = []
    base = cells()
    assert set(base) == {"adamw", "lion", "adamwspam"}
    assert "LION_LR" not in base["adamw"].text and "SPAM_THETA" not in base["adamw"].text
    for edit, reader in (("LION_LR=3e-4", "lion"), ("SPAM_THETA=7", "adamwspam")):
        changed = cells(edit)
        assert {o for o in base if changed[o].id != base[o].id} == {reader}, edit
    same = cells("MATRIX_JOBS=3", "LOG_INTERVAL=7", "SAMPLE_COUNT=3")
    assert {o: c.id for o, c in same.items()} == {o: c.id for o, c in base.items()}
    assert matrix.load_matrix(seen[-1]).path == matrix.load_matrix(seen[0]).path


def test_a_config_that_is_not_utf8_is_one_line_naming_the_file_and_offset(tmp_path, monkeypatch,
                                                                         capsys):
    path = write_config(tmp_path)
    data = path.read_bytes()
    offset = data.index(b"CONFIG_SAMPLE_PROMPT=") + len(b'CONFIG_SAMPLE_PROMPT="')
    path.write_bytes(data[:offset] + b"caf\xe9" + data[offset:])
    expected = offset + 3
    with pytest.raises(cfglib.ConfigError) as e:
        cfglib.load(path)
    assert str(e.value).startswith(f"{path}: not UTF-8 text: byte 0xe9 at offset {expected} ")
    assert "\n" not in str(e.value)
    monkeypatch.setenv("KCONFIG_CONFIG", str(path))
    assert configtool.main(["setconfig", "SEED=2"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert path.read_bytes()[expected] == 0xE9  # nothing was written


def _tree(tmp_path, help_line, type_="string"):
    import kconfiglib
    (tmp_path / "Kconfig").write_text(f'config X\n\t{type_} "x"\n\thelp\n\t  Some prose.\n'
                                      f"\t  {help_line}\n")
    return kconfiglib.Kconfig(str(tmp_path / "Kconfig"), warn_to_stderr=False)


@pytest.mark.parametrize("line, spec", [
    ("Value: float in [0, 1]", (False, 0.0, True, 1.0, True)),
    ("Value: floats in (0, 1e3]", (True, 0.0, False, 1000.0, True)),
])
def test_float_tags_parse(tmp_path, line, spec):
    from lib import kconfig_tags
    kconf = _tree(tmp_path, line)
    assert kconfig_tags.float_spec(kconf.syms["X"]) == spec
    assert kconfig_tags.check_tree(kconf) == []


@pytest.mark.parametrize("line, type_", [
    ("Value: float between 0 and 1", "string"), ("Value: float in [0 1]", "string"),
    ("Value: float in [0, 1]", "int"), ("Not part of the run hash", "string"),
    ("Not part of the run hash, mostly.", "string")])
def test_a_malformed_tag_is_an_error_naming_the_symbol(tmp_path, line, type_):
    """A help line that starts like a tag must be one: never prose silently read as a
    type, or a marker silently missed."""
    from lib import kconfig_tags
    errors = kconfig_tags.check_tree(_tree(tmp_path, line, type_))
    assert len(errors) == 1 and errors[0].startswith("X: ") and repr(line) in errors[0]


def test_the_not_hashed_tag_of_a_choice_covers_its_members(tmp_path):
    import kconfiglib

    from lib import kconfig_tags
    (tmp_path / "Kconfig").write_text(
        'choice C\n\tprompt "c"\n\thelp\n\t  Prose.\n\t  Not part of the run hash.\n'
        'config C_A\n\tbool "a"\nconfig C_B\n\tbool "b"\nendchoice\n'
        'config Y\n\tint "y"\n\tdefault 1\n\thelp\n\t  Prose.\n')
    kconf = kconfiglib.Kconfig(str(tmp_path / "Kconfig"), warn_to_stderr=False)
    assert kconfig_tags.not_hashed_names(kconf) == {"C_A", "C_B"}


def test_one_rule_for_splitting_a_step_over_processes(tmp_path):
    """The docs, the help texts and the error state the rule the code enforces: 6
    micro-batches of 12 (72 sequences, divisible by 4) do not split over 4 processes."""
    import re

    from lib import distributed

    def flat(text):
        return re.sub(r"\s+", " ", text.replace("`", ""))
    kconf = cfglib.load_tree()
    for name in ("GRADIENT_ACCUMULATION", "DDP_NPROC_PER_NODE"):
        assert distributed.RULE in flat(kconf.syms[name].nodes[0].help), name
    assert distributed.RULE in flat((cfglib.ROOT / "docs" / "scale-out.md").read_text())
    cfg = cfglib.load(write_config(tmp_path), ["BATCH_SIZE=12", "GRADIENT_ACCUMULATION=6",
                                               "DDP_NPROC_PER_NODE=4"])
    with pytest.raises(cfglib.ConfigError, match=distributed.RULE):
        distributed.check(cfg)
    distributed.check(cfg, processes=3)
    distributed.check(cfg, processes=2)


def test_a_misspelt_symbol_in_the_file_names_the_nearest(tmp_path):
    with pytest.raises(cfglib.ConfigError, match=r"undefined symbol ADAMW_RL \(did you mean "
                                                 r"ADAMW_LR"):
        cfglib.load(write_config(tmp_path, 'CONFIG_ADAMW_RL="1e-3"'))
