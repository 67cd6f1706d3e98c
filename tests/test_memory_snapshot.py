"""lib/memory_snapshot: the snapshot lands whole or not at all (torch's dumper stood in
for, as it needs CUDA; it writes by name, as torch's does)."""
from pathlib import Path

import pytest
import torch

from lib.memory_snapshot import SNAPSHOT_NAME, MemorySnapshot


def recording(tmp_path, monkeypatch, dump):
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", dump)
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", lambda **kw: None)
    snapshot = MemorySnapshot(2, torch.device("cuda"), tmp_path)
    snapshot.recording = True
    return snapshot


def test_the_snapshot_is_dumped_beside_and_renamed_into_place(tmp_path, monkeypatch):
    names = []

    def dump(name):
        names.append(name)
        Path(name).write_bytes(b"allocator history")
    snapshot = recording(tmp_path, monkeypatch, dump)
    snapshot.after_step(1)
    assert names == []
    snapshot.after_step(2)
    assert Path(names[0]).parent == tmp_path and Path(names[0]).name.endswith(".tmp")
    assert (tmp_path / SNAPSHOT_NAME).read_bytes() == b"allocator history"
    assert [p.name for p in tmp_path.iterdir()] == [SNAPSHOT_NAME]


def test_a_dump_that_fails_leaves_nothing(tmp_path, monkeypatch):
    def dump(name):
        Path(name).write_bytes(b"half")
        raise RuntimeError("dump failed")
    snapshot = recording(tmp_path, monkeypatch, dump)
    with pytest.raises(RuntimeError, match="dump failed"):
        snapshot.after_step(2)
    assert list(tmp_path.iterdir()) == []
