"""Training data: locate the raw inputs, tokenize them once into uint16 .bin
files, and draw reproducible random batches from them.

Raw inputs are looked up in the configured directory (Kconfig DATA_DIR), then
$KMATRIX_DATA, then ../shared/data beside the project, then a download cache,
and only then downloaded from their public source.
"""
import argparse
import functools
import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np
import torch

from lib.environ import scoped_env
from lib.fsutil import atomic_write_bytes, atomic_write_json

DATASETS = ("shakespeare-char", "shakespeare")
SPLITS = ("train", "val")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"

TEXT_FILE = "tinyshakespeare/input.txt"
ENCODER_JSON = "gpt2/encoder.json"
VOCAB_BPE = "gpt2/vocab.bpe"

_GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
# relative path -> (download URL, pinned sha256 or None)
SOURCES = {
    TEXT_FILE: (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        None,
    ),
    # The hashes tiktoken itself pins for the official GPT-2 files.
    ENCODER_JSON: (
        _GPT2_URL + "encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    VOCAB_BPE: (
        _GPT2_URL + "vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256

DOWNLOAD_TIMEOUT_S = 60.0
META_FORMAT = 1


class DataError(Exception):
    """Data cannot be found, prepared or loaded; the message says what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    return _sha256(Path(path).read_bytes())


# ---------------------------------------------------------------- input lookup

def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kmatrix" / "data"


def _search_dirs(data_dir: str) -> list[tuple[str, Path]]:
    """(label, directory) in lookup order."""
    dirs = []
    if data_dir:
        dirs.append(("DATA_DIR", Path(data_dir).expanduser()))
    if os.environ.get("KMATRIX_DATA"):
        dirs.append(("$KMATRIX_DATA", Path(os.environ["KMATRIX_DATA"]).expanduser()))
    dirs.append(("shared data beside the project", SHARED_DATA_DIR))
    dirs.append(("download cache", _cache_dir()))
    return dirs


def download(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """The network access of this module, in one place (tests replace it)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _save_download(relpath: str, payload: bytes, dirs: list[tuple[str, Path]]) -> Path:
    errors = []
    for _, directory in dirs:
        target = directory / relpath
        try:
            atomic_write_bytes(target, payload)
            return target
        except OSError as e:
            errors.append(f"  {target.absolute()}: {e}")
    raise DataError(f"Downloaded {relpath} but could not save it anywhere:\n" + "\n".join(errors))


def find_input(relpath: str, data_dir: str = "") -> Path:
    """Path of a raw input file (a key of SOURCES), downloading it if needed."""
    url, expected_sha256 = SOURCES[relpath]
    dirs = _search_dirs(data_dir)
    looked = []
    for label, directory in dirs:
        candidate = directory / relpath
        if candidate.is_file():
            return candidate
        looked.append(f"  {candidate.absolute()}  ({label})")

    if os.environ.get("KMATRIX_OFFLINE"):
        failure = f"downloading {url} was skipped (KMATRIX_OFFLINE is set)"
    else:
        try:
            payload = download(url)
        except Exception as e:  # any network failure ends in the one message below
            failure = f"downloading {url} failed: {e!r}"
        else:
            if expected_sha256 and _sha256(payload) != expected_sha256:
                failure = f"the file downloaded from {url} has the wrong sha256"
            else:
                return _save_download(relpath, payload, dirs)

    raise DataError(
        f"Cannot find {relpath}. Looked in:\n" + "\n".join(looked) + "\n"
        f"and {failure}.\n"
        f"To provide it, set the Kconfig symbol DATA_DIR (make menuconfig, menu Data) "
        f"or the environment variable KMATRIX_DATA to a directory holding {relpath}."
    )


# ------------------------------------------------------------------ tokenizers

@functools.lru_cache(maxsize=4)
def _gpt2_encoding(vocab_bpe: str, encoder_json: str):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    try:
        # The files are local: an empty cache dir stops tiktoken copying them anywhere.
        with scoped_env("TIKTOKEN_CACHE_DIR", ""):
            ranks = data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=vocab_bpe,
                encoder_json_file=encoder_json,
                vocab_bpe_hash=SOURCES[VOCAB_BPE][1],
                encoder_json_hash=SOURCES[ENCODER_JSON][1],
            )
    except ValueError as e:
        raise DataError(
            f"The GPT-2 BPE files {vocab_bpe} and {encoder_json} are not OpenAI's originals "
            f"(sha256 mismatch): {e}"
        ) from e
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def _gpt2_files(data_dir: str) -> tuple[Path, Path]:
    return find_input(VOCAB_BPE, data_dir), find_input(ENCODER_JSON, data_dir)


def _char_codec(vocab: str):
    stoi = {ch: i for i, ch in enumerate(vocab)}

    def encode(text: str) -> list[int]:
        unknown = sorted(set(text) - stoi.keys())
        if unknown:
            raise DataError(f"Characters not in the vocabulary: {''.join(unknown)!r}")
        return [stoi[ch] for ch in text]

    def decode(ids) -> str:
        return "".join(vocab[int(i)] for i in ids)

    return encode, decode


def load_tokenizer(data_dir_of_prepared, input_data_dir: str = ""):
    """(encode, decode) for a prepared dataset: encode(str) -> list[int], decode(ids) -> str."""
    meta = read_meta(data_dir_of_prepared)
    if meta["dataset"] == "shakespeare-char":
        return _char_codec(meta["vocab"])
    enc = _gpt2_encoding(*map(str, _gpt2_files(input_data_dir)))

    def encode(text: str) -> list[int]:
        return enc.encode(text, allowed_special={"<|endoftext|>"})

    def decode(ids) -> str:
        return enc.decode([int(i) for i in ids])

    return encode, decode


# ----------------------------------------------------------------- preparation

def _check_args(dataset: str, train_split) -> float:
    if dataset not in DATASETS:
        raise DataError(f"Unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    try:
        split = float(train_split)
    except (TypeError, ValueError):
        raise DataError(f"TRAIN_SPLIT must be a number in (0, 1), got {train_split!r}") from None
    if not 0.0 < split < 1.0:
        raise DataError(f"TRAIN_SPLIT must be in (0, 1), got {train_split!r}")
    return split


def prepared_path(out_root, dataset: str, train_split) -> Path:
    """Directory prepare() writes for these arguments."""
    split = _check_args(dataset, train_split)
    return Path(out_root) / f"{dataset}-split{split!r}"


def read_meta(prepared_dir) -> dict:
    path = Path(prepared_dir) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path} does not exist: the dataset is not prepared "
            f"(python -m gpt2.data --dataset NAME --out DIR)"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is damaged ({e}); delete it and prepare again") from e


def vocab_size(prepared_dir) -> int:
    return int(read_meta(prepared_dir)["vocab_size"])


def _is_prepared(out_dir: Path, dataset: str, split: float, input_hashes: dict) -> bool:
    try:
        meta = read_meta(out_dir)
    except DataError:
        return False
    try:
        recorded_inputs = {name: entry["sha256"] for name, entry in meta["inputs"].items()}
        if (meta["format"] != META_FORMAT or meta["dataset"] != dataset
                or meta["train_split"] != split or recorded_inputs != input_hashes):
            return False
        for s in SPLITS:
            entry, path = meta["files"][f"{s}.bin"], out_dir / f"{s}.bin"
            # Size first: it catches truncation without reading the file.
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return False
            if _sha256_file(path) != entry["sha256"]:
                return False
    except (KeyError, TypeError):
        return False
    return True


def _read_inputs(dataset: str, data_dir: str):
    """(input paths, their bytes, their sha256) of a dataset."""
    input_paths = {TEXT_FILE: find_input(TEXT_FILE, data_dir)}
    if dataset == "shakespeare":
        input_paths[VOCAB_BPE], input_paths[ENCODER_JSON] = _gpt2_files(data_dir)
    raw = {name: path.read_bytes() for name, path in input_paths.items()}
    return input_paths, raw, {name: _sha256(data) for name, data in raw.items()}


def _tokenize(dataset: str, input_paths: dict, raw: dict, split: float) -> tuple:
    """({split: uint16 tokens}, meta without the file entries)."""
    try:
        text = raw[TEXT_FILE].decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{input_paths[TEXT_FILE]} is not UTF-8 text: {e}") from e
    cut = int(len(text) * split)
    parts = {"train": text[:cut], "val": text[cut:]}
    meta = {"format": META_FORMAT, "dataset": dataset, "train_split": split}

    if dataset == "shakespeare-char":
        vocab = "".join(sorted(set(text)))
        if len(vocab) > 2**16:
            raise DataError(f"{len(vocab)} distinct characters do not fit uint16 tokens")
        encode, _ = _char_codec(vocab)
        meta.update(vocab_size=len(vocab), vocab=vocab)
    else:
        enc = _gpt2_encoding(str(input_paths[VOCAB_BPE]), str(input_paths[ENCODER_JSON]))
        # Plain text only: a literal "<|endoftext|>" in the input is not the special token.
        encode = enc.encode_ordinary
        meta.update(vocab_size=GPT2_VOCAB_SIZE, eot_token=GPT2_EOT)

    tokens = {s: np.array(encode(parts[s]), dtype=np.uint16) for s in SPLITS}
    for s in SPLITS:
        if tokens[s].size == 0:
            raise DataError(f"The {s} split of {input_paths[TEXT_FILE]} is empty "
                            f"(text of {len(text)} characters, train_split {split})")
    return tokens, meta


def prepare(dataset: str, data_dir: str, out_root, train_split) -> Path:
    """Tokenize the dataset into <out_root>/<dataset>-split<train_split>/ and
    return that directory; does nothing when it is already up to date."""
    split = _check_args(dataset, train_split)
    out_dir = prepared_path(out_root, dataset, split)
    input_paths, raw, input_hashes = _read_inputs(dataset, data_dir)
    if _is_prepared(out_dir, dataset, split, input_hashes):
        return out_dir
    tokens, meta = _tokenize(dataset, input_paths, raw, split)

    out_dir.mkdir(parents=True, exist_ok=True)
    # meta.json is the completion marker: remove it first, write it last.
    (out_dir / "meta.json").unlink(missing_ok=True)
    files = {}
    for s in SPLITS:
        payload = tokens[s].tobytes()
        atomic_write_bytes(out_dir / f"{s}.bin", payload)
        files[f"{s}.bin"] = {"bytes": len(payload), "sha256": _sha256(payload)}
    meta.update(
        train_tokens=int(tokens["train"].size),
        val_tokens=int(tokens["val"].size),
        inputs={name: {"sha256": input_hashes[name], "path": str(input_paths[name].absolute())}
                for name in input_paths},
        files=files,
    )
    atomic_write_json(out_dir / "meta.json", meta)
    return out_dir


@functools.lru_cache(maxsize=8)
def split_sizes(dataset: str, data_dir: str, out_root, train_split) -> dict:
    """{"train": tokens, "val": tokens} of the dataset prepare() would write, from its
    meta.json when that is up to date, else by tokenizing in memory: writes nothing."""
    split = _check_args(dataset, train_split)
    out_dir = prepared_path(out_root, dataset, split)
    input_paths, raw, input_hashes = _read_inputs(dataset, data_dir)
    if _is_prepared(out_dir, dataset, split, input_hashes):
        meta = read_meta(out_dir)
        return {s: int(meta[f"{s}_tokens"]) for s in SPLITS}
    tokens, _ = _tokenize(dataset, input_paths, raw, split)
    return {s: int(tokens[s].size) for s in SPLITS}


# --------------------------------------------------------------------- batches

class Batches:
    """Random (x, y) blocks from a prepared dataset, reproducible from a seed.

    Each split has its own generator, so how often the validation split is
    sampled does not change the training batches.
    """

    def __init__(self, prepared_dir, block_size: int, batch_size: int, device="cpu", seed: int = 0):
        self.prepared_dir = Path(prepared_dir)
        self.block_size = int(block_size)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self._meta = read_meta(self.prepared_dir)
        for s in SPLITS:
            n = self._meta[f"{s}_tokens"]
            if self.block_size + 1 > n:
                raise DataError(f"block_size {self.block_size} + 1 exceeds the {n} tokens of the "
                                f"{s} split of {self.prepared_dir}")
        train_seed, val_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
        self._generators = {
            "train": torch.Generator().manual_seed(int(train_seed)),
            "val": torch.Generator().manual_seed(int(val_seed)),
        }

    @property
    def train_tokens(self) -> int:
        return int(self._meta["train_tokens"])

    @property
    def val_tokens(self) -> int:
        return int(self._meta["val_tokens"])

    def get(self, split: str):
        return self._read(split, self._draw(split))

    def step(self, split: str, count: int, rank: int = 0, processes: int = 1) -> list:
        """The `count` micro-batches of one optimizer step, drawn in order as `count` calls
        of get() would draw them; of those, the contiguous share count/processes of `rank`.
        The processes of a run together see exactly the batches one process would."""
        starts = [self._draw(split) for _ in range(count)]
        share = count // processes
        return [self._read(split, s) for s in starts[rank * share:(rank + 1) * share]]

    def _draw(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return torch.randint(int(self._meta[f"{split}_tokens"]) - self.block_size,
                             (self.batch_size,), generator=self._generators[split])

    def _read(self, split: str, starts: torch.Tensor):
        # A fresh memmap per batch: nothing stays mapped between calls, and it
        # survives a fork or pickling of the object.
        data = np.memmap(self.prepared_dir / f"{split}.bin", dtype=np.uint16, mode="r")
        T = self.block_size
        index = starts.numpy()[:, None] + np.arange(T + 1)
        block = torch.from_numpy(data[index].astype(np.int64))
        x, y = block[:, :-1].contiguous(), block[:, 1:].contiguous()
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        """The data position: each split's generator state (uint8 tensors)."""
        return {s: g.get_state() for s, g in self._generators.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(SPLITS):
            raise DataError(f"Batches state must have the keys {SPLITS}, got {sorted(state)}")
        for s in SPLITS:
            self._generators[s].set_state(state[s].to(torch.uint8).cpu())


class EvalWindows:
    """Fixed evaluation windows of one split: non-overlapping blocks of block_size tokens
    (inputs at k * block_size, targets one token on), so each token is predicted at most
    once. max_windows caps the count (None: every window the split holds); a cap below
    that picks windows spread evenly over the split. They depend only on the split's size
    and these arguments: identical at every evaluation and in every run."""

    def __init__(self, prepared_dir, split: str, block_size: int, batch_size: int,
                 max_windows=None, device="cpu"):
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.path = Path(prepared_dir) / f"{split}.bin"
        self.block_size, self.batch_size = int(block_size), int(batch_size)
        self.device = torch.device(device)
        n = int(read_meta(prepared_dir)[f"{split}_tokens"])
        available = (n - 1) // self.block_size
        if available < 1:
            raise DataError(f"block_size {self.block_size} + 1 exceeds the {n} tokens of the "
                            f"{split} split of {prepared_dir}")
        count = available if max_windows is None else min(int(max_windows), available)
        picked = np.linspace(0, available - 1, count).round().astype(np.int64)
        self.starts = picked * self.block_size

    @property
    def tokens(self) -> int:
        """Tokens predicted per pass over the windows."""
        return len(self.starts) * self.block_size

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        """(x, y) batches of batch_size windows (the last one may be smaller)."""
        data = np.memmap(self.path, dtype=np.uint16, mode="r")
        offsets = np.arange(self.block_size + 1)
        for i in range(0, len(self.starts), self.batch_size):
            index = self.starts[i:i + self.batch_size, None] + offsets
            block = torch.from_numpy(data[index].astype(np.int64))
            x, y = block[:, :-1].contiguous(), block[:, 1:].contiguous()
            yield x.to(self.device), y.to(self.device)


# ------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    """python -m gpt2.data [.config] [--set NAME=VALUE]: prepare the dataset a config selects."""
    from lib import config as cfglib
    from lib.run import results_dir

    parser = argparse.ArgumentParser(prog="python -m gpt2.data", description=main.__doc__)
    parser.add_argument("config", nargs="?", help="config file (default: .config or $KCONFIG_CONFIG)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = cfglib.load(args.config, args.set)
        out_dir = prepare(cfg.DATASET, cfg.DATA_DIR, results_dir(cfg) / "_data", cfg.TRAIN_SPLIT)
    except (cfglib.ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = read_meta(out_dir)
    print(f"{out_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, "
          f"vocabulary {meta['vocab_size']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
