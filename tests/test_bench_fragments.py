"""Benchmark fragments merge as the kernel's merge_config.sh merges them (kconfiglib,
load_config(replace=False)): later values win, overrides are information, anything else in
a fragment is an error naming it."""
import pytest

from lib import config as cfglib
from scripts import bench_fragments

DEFAULT = cfglib.ROOT / "defconfigs" / "default"


def _write(path, *lines):
    path.write_text("# a fragment\n" + "\n".join(lines) + "\n")
    return path


def test_later_fragments_replace_values_and_choice_members_and_say_so(tmp_path):
    base = _write(tmp_path / "_base", "CONFIG_BLOCK_SIZE=32", "CONFIG_PRECISION_BF16=y",
                  "CONFIG_SEED=5")
    row = _write(tmp_path / "01-row", "CONFIG_BLOCK_SIZE=48", "CONFIG_PRECISION_FP32=y",
                 "# CONFIG_BIAS is not set", 'CONFIG_ADAMW_LR="2e-3"')
    said = []
    assignments = bench_fragments.merge(DEFAULT, [base, row], say=said.append)
    cfg = cfglib.load(DEFAULT, assignments)
    assert (cfg.BLOCK_SIZE, cfg.PRECISION, cfg.SEED, cfg.BIAS, cfg.ADAMW_LR) == (
        48, "fp32", 5, False, 2e-3)
    default = cfglib.load(DEFAULT)
    assert cfg.MAX_ITERS == default.MAX_ITERS  # what no fragment names stays the recipe's
    assert any("BLOCK_SIZE" in s and '"32"' in s and '"48"' in s for s in said), said
    assert any("PRECISION_FP32=y replaces PRECISION_BF16=y" in s for s in said), said
    assert all(s.startswith("info: ") for s in said)


def test_a_value_set_again_to_the_same_is_no_override(tmp_path):
    said = []
    base = _write(tmp_path / "_base", "CONFIG_BLOCK_SIZE=64")  # defconfigs/default's value
    assert bench_fragments.merge(DEFAULT, [base], say=said.append) == []
    assert said == []


@pytest.mark.parametrize("line, message", [
    ("CONFIG_NO_SUCH_KNOB=1", "undefined symbol NO_SUCH_KNOB"),
    ("CONFIG_BLOCK_SIZE=many", "many"),
])
def test_anything_else_in_a_fragment_is_an_error_naming_it(tmp_path, line, message):
    bad = _write(tmp_path / "02-bad", line)
    with pytest.raises(cfglib.ConfigError, match=message) as e:
        bench_fragments.merge(DEFAULT, [bad], say=lambda s: None)
    assert "02-bad" in str(e.value)
