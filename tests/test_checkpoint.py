"""lib/checkpoint: what a save keeps beside the new checkpoint."""
import errno
import os

import pytest

from lib import checkpoint


def test_the_previous_checkpoint_is_copied_where_hard_links_fail(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt.pt"
    checkpoint.save(ckpt, {"progress": {"iter": 1}})
    first = ckpt.read_bytes()

    def no_links(src, dst):
        raise OSError(errno.EPERM, "no hard links here")
    monkeypatch.setattr(os, "link", no_links)
    checkpoint.save(ckpt, {"progress": {"iter": 2}})
    assert checkpoint.previous(ckpt).read_bytes() == first
    assert checkpoint.load(ckpt)["progress"]["iter"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_checkpoint_that_does_not_read_back_replaces_nothing(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt.pt"
    checkpoint.save(ckpt, {"progress": {"iter": 1}})
    first = ckpt.read_bytes()

    def unreadable(path):
        raise checkpoint.CheckpointError(f"{path}: does not read back")
    monkeypatch.setattr(checkpoint, "verify", unreadable)
    with pytest.raises(checkpoint.CheckpointError, match="does not read back"):
        checkpoint.save(ckpt, {"progress": {"iter": 2}})
    assert ckpt.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no .prev, no temp
