"""DATA_LOADER: the preloaded loader gives exactly the memmap loader's batches."""
import json

import numpy as np
import pytest
import torch

from gpt2.data.loaders import LOADERS, PreloadedBatches


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


def test_preloaded_and_memmap_give_the_same_batches_for_a_seed(prepared):
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


def test_preloaded_reads_every_shard_of_a_uint32_split(tmp_path):
    """Blocks that span a shard boundary come out the same from both loaders."""
    out = tmp_path / "sharded"
    out.mkdir()
    rng = np.random.default_rng(1)
    splits = {}
    for split, sizes in (("train", (40, 7, 60)), ("val", (30, 25))):
        splits[split] = []
        for i, n in enumerate(sizes):
            name = f"{split}-{i:05d}.bin"
            rng.integers(0, 70_000, n, dtype=np.uint32).tofile(out / name)
            splits[split].append({"file": name, "tokens": n})
    meta = {"dataset": "hf", "vocab_size": 70_000, "dtype": "uint32", "splits": splits,
            "train_tokens": 107, "val_tokens": 55}
    (out / "meta.json").write_text(json.dumps(meta))
    memmap = LOADERS["memmap"](out, 16, 8, "cpu", seed=3)
    preloaded = LOADERS["preloaded"](out, 16, 8, "cpu", seed=3)
    for split in ("train", "val") * 5:
        (x1, y1), (x2, y2) = memmap.get(split), preloaded.get(split)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert int(preloaded._tokens["train"].max()) >= 2 ** 16
