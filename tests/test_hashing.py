"""lib/hashing against hashlib itself."""
import hashlib

from lib import hashing


def test_sha256_file_reads_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "BLOCK", 7)
    data = bytes(range(256)) * 3
    (tmp_path / "f").write_bytes(data)
    assert hashing.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert hashing.sha256(memoryview(data)) == hashlib.sha256(data).hexdigest()
