"""Full check of a prepared dataset: every shard meta.json lists has its recorded size and
sha256, and holds only token ids below the vocabulary. It reads every byte once (make
data-verify; at the start of a run with DATA_VERIFY=y). The loader's own checks stay
cheap: sizes when a shard is opened, the largest token id of each batch on the host.

Every preparation since the checksummed format records sha256 and size per shard; an
older one (no `files` entry) is never taken as prepared, so make data re-prepares it.
"""
import hashlib
from pathlib import Path

import numpy as np

from gpt2.data.errors import DataError
from gpt2.data.shards import read_meta, shard_lists

BLOCK_BYTES = 1 << 24


def _scan(path: Path, dtype: np.dtype):
    """(sha256, largest token id and its offset or None) of one shard, one read."""
    digest, largest, where, offset = hashlib.sha256(), -1, None, 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            digest.update(block)
            tokens = np.frombuffer(block, dtype=dtype, count=len(block) // dtype.itemsize)
            top = int(tokens.max()) if tokens.size else -1
            if top > largest:
                largest, where = top, offset + int(tokens.argmax())
            offset += tokens.size
    return digest.hexdigest(), largest, where


def check_shard(path: Path, entry: dict, tokens: int, dtype: np.dtype, vocab: int):
    """The problem with one shard, as one line, or None."""
    expected = tokens * dtype.itemsize
    if not path.is_file():
        return f"{path}: missing"
    size = path.stat().st_size
    if size != expected or size != entry.get("bytes"):
        return f"{path}: {size:,} bytes, meta.json records {expected:,}"
    digest, largest, where = _scan(path, dtype)
    if digest != entry.get("sha256"):
        return (f"{path}: sha256 {digest[:12]}... differs from the recorded "
                f"{str(entry.get('sha256'))[:12]}...")
    if largest >= vocab:
        return (f"{path}: token id {largest} at token offset {where} is outside the "
                f"vocabulary of {vocab}")
    return None


def problems(prepared_dir) -> tuple:
    """([one line per damaged shard], shards checked, tokens checked)."""
    prepared_dir = Path(prepared_dir)
    meta = read_meta(prepared_dir)
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise DataError(f"{prepared_dir}/meta.json records no checksums (prepared by an older "
                        f"version): delete {prepared_dir} and run make data")
    dtype, vocab = np.dtype(meta.get("dtype", "uint16")), int(meta["vocab_size"])
    found, shards, total = [], 0, 0
    for split, listed in shard_lists(meta).items():
        for name, tokens in listed:
            entry = files.get(name)
            problem = (f"{prepared_dir / name}: listed in the {split} split but has no "
                       f"checksum in meta.json") if entry is None else check_shard(
                prepared_dir / name, entry, tokens, dtype, vocab)
            if problem:
                found.append(problem)
            shards, total = shards + 1, total + tokens
    return found, shards, total


def check(prepared_dir) -> tuple:
    """(shards, tokens) verified, or a DataError naming the first damaged shard."""
    found, shards, total = problems(prepared_dir)
    if found:
        more = f" (and {len(found) - 1} more shard(s))" if len(found) > 1 else ""
        raise DataError(f"damaged prepared data: {found[0]}{more}; delete {prepared_dir} and "
                        f"run make data")
    return shards, total
