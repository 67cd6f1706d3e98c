"""Content hashes: the hex sha256 of bytes and of a file, read in blocks."""
import hashlib

BLOCK = 1 << 24  # 16 MiB per read: a shard of many GB is never held whole


def sha256(data) -> str:
    """Hex sha256 of bytes (or any buffer: a memoryview of an array)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    """Hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
