"""The prepared format: each split is a list of shards, flat files of uint16 token ids
(uint32 when the vocabulary needs it), listed in order in meta.json, which is written
last and marks the preparation complete. Readers memory-map the shards on demand, so a
split of many GB is never loaded into RAM.

meta.json: format, dataset, tokenizer, vocab_size (vocab for characters, eot_token for
GPT-2), dtype, train_tokens, val_tokens, test_tokens, splits {split: [{file, tokens}]}, files
{file: {bytes, sha256, mtime_ns}}, inputs, and how it was made (spec).
"""
import json
from pathlib import Path

import numpy as np

from gpt2.data.errors import DataError
from lib.fsutil import atomic_open
from lib.hashing import sha256, sha256_file

META_FORMAT = 3  # 3: a test split beside train and val
SPLITS = ("train", "val", "test")


def read_meta(prepared_dir) -> dict:
    path = Path(prepared_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path} does not exist: the dataset is not prepared "
            f"(make data, or python -m gpt2.data [.config])"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is damaged (not UTF-8 at byte {e.start}); delete "
                        f"{path.parent} and run make data") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is damaged ({e}); delete {path.parent} and run "
                        f"make data") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} is damaged (not a JSON object); delete {path.parent} and "
                        f"run make data")
    return meta


def vocab_size(prepared_dir) -> int:
    return int(read_meta(prepared_dir)["vocab_size"])


def write_shard(path, tokens: np.ndarray) -> dict:
    """Write `tokens` to `path` atomically (lib/fsutil.atomic_open); its files entry."""
    path = Path(path)
    tokens = np.ascontiguousarray(tokens)
    with atomic_open(path, "wb") as f:
        tokens.tofile(f)
    return {"bytes": tokens.nbytes, "sha256": sha256(memoryview(tokens)),
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
    try:
        if "splits" in meta:
            return {s: [(e["file"], int(e["tokens"])) for e in meta["splits"].get(s, [])]
                    for s in SPLITS}
        return {s: [(f"{s}.bin", int(meta[f"{s}_tokens"]))] for s in SPLITS
                if f"{s}_tokens" in meta}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"meta.json lacks or garbles the shard list ({type(e).__name__}: "
                        f"{e}); delete the prepared directory and run make data") from None


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
        self.vocab_size = int(meta["vocab_size"]) if "vocab_size" in meta else None
        for k in range(len(self.paths)):
            self._check_size(k)

    def _check_size(self, k: int) -> None:
        check_size(self.paths[k], int(self.sizes[k]) * self.dtype.itemsize)

    def _open(self, k: int) -> np.ndarray:
        """Shard k memory-mapped, its length checked against meta.json (no extra I/O)."""
        try:
            data = np.memmap(self.paths[k], dtype=self.dtype, mode="r")
        except (OSError, ValueError):
            self._check_size(k)
            raise
        if data.size != self.sizes[k]:
            self._check_size(k)
        return data

    def check_tokens(self, tokens: np.ndarray, starts) -> None:
        """A token id at or above the vocabulary is a DataError naming its shard and
        offset: one max over windows already on the host; the search runs on error only.
        tokens: [len(starts), length] windows, or one run of tokens from starts[0]."""
        if self.vocab_size is None or tokens.size == 0 or tokens.max() < self.vocab_size:
            return
        bad = np.argwhere(np.atleast_2d(tokens) >= self.vocab_size)[0]
        row, col = int(bad[0]), int(bad[1])
        value = int(np.atleast_2d(tokens)[row, col])
        position = int(np.atleast_1d(starts)[row]) + col
        k = int(np.searchsorted(self.offsets, position, side="right")) - 1
        raise DataError(
            f"{self.paths[k]} holds token id {value} at token offset "
            f"{position - int(self.offsets[k])}, outside the vocabulary of {self.vocab_size}: "
            f"the shard is damaged; delete {self.paths[k].parent} and run make data")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def windows(self, starts, length: int) -> np.ndarray:
        """int64 array [len(starts), length]: the tokens from each start on, across shard
        boundaries where a window spans two shards."""
        starts = np.asarray(starts, dtype=np.int64)
        if len(self.paths) == 1:
            out = self._open(0)[starts[:, None] + np.arange(length)].astype(np.int64)
            self.check_tokens(out, starts)
            return out
        out = np.empty((len(starts), length), dtype=np.int64)
        maps = {}
        for row, start in enumerate(starts.tolist()):
            k = int(np.searchsorted(self.offsets, start, side="right")) - 1
            filled, local = 0, start - int(self.offsets[k])
            while filled < length:
                if k not in maps:
                    maps[k] = self._open(k)
                take = min(length - filled, int(self.sizes[k]) - local)
                out[row, filled:filled + take] = maps[k][local:local + take]
                filled, local, k = filled + take, 0, k + 1
        self.check_tokens(out, starts)
        return out


def check_size(path: Path, expected_bytes: int) -> None:
    """The shard exists with the size meta.json records, else a DataError naming it."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path} is missing: delete {path.parent} and run make "
                        f"data") from None
    if actual != expected_bytes:
        raise DataError(f"{path} has {actual:,} bytes where meta.json records "
                        f"{expected_bytes:,}: the shard is damaged or truncated; delete "
                        f"{path.parent} and run make data")
