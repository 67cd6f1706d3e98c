"""INIT_FROM_DIR that cannot be what it must be: a path through `..` to nothing, a symlink
loop, a directory where a file is expected, a file where a directory is, weights of
another shape. Each is one line naming the knob, exit 2, and no run directory."""
import json

import pytest

from gpt2 import train
from lib import config as cfglib
from lib.run import RunDir

# The tiny model's shape (tests/conftest.py TINY), as GPT-2's config.json says it.
TINY_HF = {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 65, "n_positions": 32}


def hf_dir(path, **changes):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({**TINY_HF, **changes}))
    (path / "model.safetensors").write_bytes(b"")
    return path


def refused(tiny_config, capsys, value):
    config = tiny_config(f"INIT_FROM_DIR={value}", "BIAS=y", "WEIGHT_TYING=y")
    capsys.readouterr()
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: CONFIG_INIT_FROM_DIR="{value}"'), err
    assert not RunDir.for_config(cfglib.load(config)).path.exists()
    return err[0]


def test_a_path_through_dotdot_to_nothing(tiny_config, capsys, tmp_path):
    hf_dir(tmp_path / "hf")
    value = f"{tmp_path}/hf/../gone"
    line = refused(tiny_config, capsys, value)
    assert f"(it leads to {tmp_path}/gone): the directory does not exist" in line


def test_a_symlink_loop(tiny_config, capsys, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    line = refused(tiny_config, capsys, tmp_path / "loop")
    assert "cannot be resolved" in line


def test_a_loop_inside_the_directory(tiny_config, capsys, tmp_path):
    directory = hf_dir(tmp_path / "hf")
    (directory / "config.json").unlink()
    (directory / "config.json").symlink_to(directory / "config.json")
    assert "its config.json cannot be resolved" in refused(tiny_config, capsys, directory)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_directory_where_a_file_is_expected(tiny_config, capsys, tmp_path, name):
    directory = hf_dir(tmp_path / "hf")
    (directory / name).unlink()
    (directory / name).mkdir()
    line = refused(tiny_config, capsys, directory)
    assert f"{directory / name} is a directory where a file is expected" in line


def test_a_file_where_the_directory_is_expected(tiny_config, capsys, tmp_path):
    directory = hf_dir(tmp_path / "hf")
    assert "it is a file, not a directory" in refused(tiny_config, capsys,
                                                      directory / "config.json")


def test_weights_of_another_shape_name_both_shapes(tiny_config, capsys, tmp_path):
    directory = hf_dir(tmp_path / "hf", n_embd=64, n_layer=4)
    line = refused(tiny_config, capsys, directory)
    assert "is (4, 2, 64, 65, 32)" in line and "is (2, 2, 32, 65, 32)" in line


def test_weights_that_do_not_match_their_config_json(tiny_config, capsys, tmp_path):
    import torch
    from safetensors.torch import save_file

    directory = hf_dir(tmp_path / "hf")
    save_file({"wte.weight": torch.zeros(65, 64)}, directory / "model.safetensors")
    assert "its weights do not load" in refused(tiny_config, capsys, directory)
