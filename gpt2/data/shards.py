"""The prepared format: each split is a list of shards, flat files of uint16 token ids
(uint32 when the vocabulary needs it), listed in order in meta.json, which is written
last and marks the preparation complete. Readers memory-map the shards on demand, so a
split of many GB is never loaded into RAM.

meta.json: format, dataset, tokenizer, vocab_size (vocab for characters, eot_token for
GPT-2), dtype, train_tokens, val_tokens, test_tokens, splits {split: [{file, tokens}]}, files
{file: {bytes, sha256, mtime_ns}}, inputs, and how it was made (spec).
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from gpt2.data.errors import DataError, sha256_file

META_FORMAT = 3  # 3: a test split beside train and val
SPLITS = ("train", "val", "test")


def read_meta(prepared_dir) -> dict:
    path = Path(prepared_dir) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path} does not exist: the dataset is not prepared "
            f"(make data, or python -m gpt2.data [.config])"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is damaged ({e}); delete it and prepare again") from e


def vocab_size(prepared_dir) -> int:
    return int(read_meta(prepared_dir)["vocab_size"])


def write_shard(path, tokens: np.ndarray) -> dict:
    """Write `tokens` to `path` atomically (temp file, fsync, rename); its files entry."""
    path = Path(path)
    tokens = np.ascontiguousarray(tokens)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            tokens.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"bytes": tokens.nbytes, "sha256": hashlib.sha256(memoryview(tokens)).hexdigest(),
            "mtime_ns": path.stat().st_mtime_ns}


def file_intact(path, entry: dict) -> bool:
    """The file has the recorded size and content; the hash is read only when the
    modification time differs from the recorded one (a rewritten or copied file)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != entry["bytes"]:
        return False
    if entry.get("mtime_ns") == stat.st_mtime_ns:
        return True
    return sha256_file(path) == entry["sha256"]


def shard_lists(meta: dict) -> dict:
    """{split: [(file name, tokens)]}; a format-1 preparation had one {split}.bin each."""
    if "splits" in meta:
        return {s: [(e["file"], int(e["tokens"])) for e in meta["splits"].get(s, [])]
                for s in SPLITS}
    return {s: [(f"{s}.bin", int(meta[f"{s}_tokens"]))] for s in SPLITS if f"{s}_tokens" in meta}


class SplitTokens:
    """One split's tokens: the concatenation of its shards, read through memory maps
    opened per call (nothing stays mapped, and the object survives a fork or pickling)."""

    def __init__(self, prepared_dir, split: str, meta: dict = None):
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}")
        meta = meta if meta is not None else read_meta(prepared_dir)
        shards = [(name, n) for name, n in shard_lists(meta).get(split, []) if n > 0]
        self.paths = [Path(prepared_dir) / name for name, _ in shards]
        self.sizes = np.array([n for _, n in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.dtype = np.dtype(meta.get("dtype", "uint16"))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def windows(self, starts, length: int) -> np.ndarray:
        """int64 array [len(starts), length]: the tokens from each start on, across shard
        boundaries where a window spans two shards."""
        starts = np.asarray(starts, dtype=np.int64)
        if len(self.paths) == 1:
            data = np.memmap(self.paths[0], dtype=self.dtype, mode="r")
            return data[starts[:, None] + np.arange(length)].astype(np.int64)
        out = np.empty((len(starts), length), dtype=np.int64)
        maps = {}
        for row, start in enumerate(starts.tolist()):
            k = int(np.searchsorted(self.offsets, start, side="right")) - 1
            filled, local = 0, start - int(self.offsets[k])
            while filled < length:
                if k not in maps:
                    maps[k] = np.memmap(self.paths[k], dtype=self.dtype, mode="r")
                take = min(length - filled, int(self.sizes[k]) - local)
                out[row, filled:filled + take] = maps[k][local:local + take]
                filled, local, k = filled + take, 0, k + 1
        return out
