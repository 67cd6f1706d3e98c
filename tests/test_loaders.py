"""DATA_LOADER: the preloaded loader gives exactly the memmap loader's batches."""
import numpy as np
import pytest
import torch

from gpt2 import data
from gpt2.loaders import LOADERS, PreloadedBatches


@pytest.fixture
def prepared(tmp_path):
    """A prepared dataset written by hand: two splits of known tokens."""
    out = tmp_path / "prepared"
    out.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 500), ("val", 120)):
        rng.integers(0, 65, n, dtype=np.uint16).tofile(out / f"{split}.bin")
    (out / "meta.json").write_text('{"dataset": "shakespeare-char", "vocab_size": 65, '
                                   '"train_tokens": 500, "val_tokens": 120}')
    return out


def test_registry_keys_are_the_kconfig_choices():
    from lib import config as cfglib
    tree = cfglib.load_tree()
    members = [s.name.removeprefix("DATA_LOADER_").lower() for s in tree.named_choices["DATA_LOADER"].syms]
    assert sorted(members) == sorted(LOADERS)


def test_preloaded_and_memmap_give_the_same_batches_for_a_seed(prepared, monkeypatch):
    monkeypatch.setattr(data, "read_meta", lambda d: {"train_tokens": 500, "val_tokens": 120})
    memmap = LOADERS["memmap"](prepared, 16, 4, "cpu", seed=7)
    preloaded = LOADERS["preloaded"](prepared, 16, 4, "cpu", seed=7)
    for split in ("train", "val", "train", "train"):
        (x1, y1), (x2, y2) = memmap.get(split), preloaded.get(split)
        assert x1.dtype == x2.dtype == torch.int64
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x2[:, 1:], y2[:, :-1])
    # the resume state is the same too
    state = memmap.state_dict()
    again = PreloadedBatches(prepared, 16, 4, "cpu", seed=99)
    again.load_state_dict(state)
    assert torch.equal(again.get("train")[0], memmap.get("train")[0])
