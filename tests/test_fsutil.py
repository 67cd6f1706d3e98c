"""lib/fsutil.atomic_open, the one atomic write: a failure leaves the old file whole and
no temporary file behind; a success fsyncs the file, renames it, then fsyncs the
directory. And no other module renames files into place by hand."""
import ast
import errno
import os
from pathlib import Path

import pytest

from lib import fsutil
from lib.config import ROOT

OLD = b"old contents\n"


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(OLD)
    return path


def leftovers(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir() if p.name != "state.json")


def test_a_writer_that_raises_leaves_the_old_file_and_no_temp(target):
    with pytest.raises(RuntimeError, match="writer died"):
        with fsutil.atomic_open(target, "wb") as f:
            f.write(b"half of the new")
            f.flush()
            raise RuntimeError("writer died")
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_a_failed_rename_leaves_the_old_file_and_no_temp(target, monkeypatch):
    def refuse(src, dst):
        raise OSError(errno.EXDEV, "rename refused")
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        fsutil.atomic_write_text(target, "new contents\n")
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_a_full_disk_keeps_its_errno_and_the_old_file(target, monkeypatch):
    real_fsync = os.fsync

    def full(fd):  # the data reaches the disk at fsync: where a full disk shows first
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_file():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        fsutil.atomic_write_json(target, {"new": 1})
    assert fsutil.no_space(caught.value) is caught.value
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_the_file_is_synced_renamed_then_its_directory_synced(target, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fsutil.atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    (_, tmp, dst), = [e for e in events if e[0] == "replace"]
    assert (Path(tmp).parent, Path(tmp).name.startswith(".state.json."), dst) == (
        target.parent, True, str(target))
    assert events == [("fsync", tmp), ("replace", tmp, str(target)),
                      ("fsync", str(target.parent))]
    assert leftovers(target.parent) == []


def test_a_writer_that_reopens_the_temp_by_name(target):
    with fsutil.atomic_open(target, "w", encoding="utf-8") as f:
        Path(f.name).write_text("written by name: é\n", encoding="utf-8")
        assert target.read_bytes() == OLD  # nothing replaced before the block ends
    assert target.read_text(encoding="utf-8") == "written by name: é\n"
    assert leftovers(target.parent) == []


def test_only_a_write_mode(target):
    with pytest.raises(ValueError, match="must start with 'w'"):
        with fsutil.atomic_open(target, "ab"):
            pass
    assert leftovers(target.parent) == []


def test_fsync_path_lets_be_a_directory_that_cannot_sync_and_raises_io_errors(tmp_path,
                                                                             monkeypatch):
    def refuse(code):
        def fsync(fd):
            raise OSError(code, os.strerror(code))
        return fsync
    monkeypatch.setattr(os, "fsync", refuse(errno.EINVAL))
    fsutil.fsync_path(tmp_path)
    monkeypatch.setattr(os, "fsync", refuse(errno.EIO))
    with pytest.raises(OSError, match=os.strerror(errno.EIO)):
        fsutil.fsync_path(tmp_path)


# Renames into place outside atomic_open: the data staging directory (a whole directory
# renamed) and the hard link that keeps the previous checkpoint.
RENAMES_ALLOWED = {"lib/fsutil.py", "gpt2/data/staging.py", "lib/checkpoint.py"}
HAND_ROLLED = {("os", "replace"), ("os", "rename"), ("tempfile", "mkstemp"),
               ("tempfile", "NamedTemporaryFile")}


def test_no_module_renames_a_file_into_place_by_hand():
    found = []
    for pkg in ("lib", "gpt2", "scripts"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                        and (node.value.id, node.attr) in HAND_ROLLED
                        and name not in RENAMES_ALLOWED):
                    found.append(f"{name}:{node.lineno} {node.value.id}.{node.attr}")
    assert found == [], "write through lib.fsutil.atomic_open instead"
