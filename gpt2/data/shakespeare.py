"""Tiny Shakespeare, the smoke-test corpus: one text, small enough to tokenize in memory,
split by characters into one shard per split, train.bin, val.bin and test.bin: the first
TRAIN_SPLIT of the text trains (nanoGPT's boundary), the last TEST_FRACTION is the test
split, the part between validates. shakespeare-char uses its own characters as
the vocabulary, shakespeare GPT-2's BPE (no end-of-text token: it is one document).
"""
from pathlib import Path

import gpt2.data.staging as staging
from gpt2.data.errors import DataError
from gpt2.data.inputs import ENCODER_JSON, TEXT_FILE, VOCAB_BPE, find_input
from gpt2.data.shards import META_FORMAT, SPLITS, file_intact, read_meta, write_shard
from gpt2.data.tokenizers import TokenizerSpec, encoder, gpt2_files
from lib.fsutil import atomic_write_json
from lib.hashing import sha256

TOKENIZER = {"shakespeare-char": "char", "shakespeare": "gpt2"}


def dir_name(dataset: str, train_split: float, test_fraction: float) -> str:
    return f"{dataset}-split{train_split!r}-test{test_fraction!r}"


def char_ranges(n: int, train_split: float, test_fraction: float) -> dict:
    """{split: (start, end)} character ranges of a text of n characters."""
    cut, test_start = int(n * train_split), int(n * (1.0 - test_fraction))
    if test_start <= cut:
        raise DataError(f"TRAIN_SPLIT={train_split!r} + TEST_FRACTION={test_fraction!r} leave "
                        f"no validation split: lower TEST_FRACTION below {1 - train_split:.6g}")
    return {"train": (0, cut), "val": (cut, test_start), "test": (test_start, n)}


def _read_inputs(dataset: str, data_dir: str):
    """(input paths, their bytes, their sha256) of a dataset."""
    input_paths = {TEXT_FILE: find_input(TEXT_FILE, data_dir)}
    if TOKENIZER[dataset] == "gpt2":
        input_paths[VOCAB_BPE], input_paths[ENCODER_JSON] = gpt2_files(data_dir)
    raw = {name: path.read_bytes() for name, path in input_paths.items()}
    return input_paths, raw, {name: sha256(data) for name, data in raw.items()}


def _is_prepared(out_dir: Path, dataset: str, split: float, test: float,
                 input_hashes: dict) -> bool:
    try:
        meta = read_meta(out_dir)
    except DataError:
        return False
    try:
        recorded_inputs = {name: entry["sha256"] for name, entry in meta["inputs"].items()}
        if (meta["format"] != META_FORMAT or meta["dataset"] != dataset
                or meta["train_split"] != split or meta.get("test_fraction") != test
                or recorded_inputs != input_hashes):
            return False
        return all(file_intact(out_dir / f"{s}.bin", meta["files"][f"{s}.bin"]) for s in SPLITS)
    except (KeyError, TypeError):
        return False


def _tokenize(dataset: str, input_paths: dict, raw: dict, split: float, test: float) -> tuple:
    """({split: tokens}, meta without the file entries)."""
    try:
        text = raw[TEXT_FILE].decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{input_paths[TEXT_FILE]} is not UTF-8 text: {e}") from e
    ranges = char_ranges(len(text), split, test)
    parts = {s: text[a:b] for s, (a, b) in ranges.items()}
    kind = TOKENIZER[dataset]
    meta = {"format": META_FORMAT, "dataset": dataset, "train_split": split,
            "test_fraction": test, "char_ranges": ranges, "tokenizer": kind}
    if kind == "char":
        spec = TokenizerSpec("char", vocab="".join(sorted(set(text))))
        meta["vocab"] = spec.vocab
    else:
        spec = TokenizerSpec("gpt2", bpe_files=(input_paths[VOCAB_BPE], input_paths[ENCODER_JSON]))
        meta["eot_token"] = spec.eot
    meta.update(vocab_size=spec.vocab_size, dtype=spec.dtype.name)
    enc = encoder(spec)
    tokens = {s: enc.encode(parts[s]) for s in SPLITS}
    for s in SPLITS:
        if tokens[s].size == 0:
            raise DataError(f"The {s} split of {input_paths[TEXT_FILE]} is empty "
                            f"(text of {len(text)} characters, TRAIN_SPLIT={split}, "
                            f"TEST_FRACTION={test}): raise TEST_FRACTION or TRAIN_SPLIT")
    return tokens, meta


def prepare(spec, out_dir: Path) -> Path:
    """Tokenize into out_dir unless it is already up to date: written in its partial
    directory, renamed at the end."""
    input_paths, raw, input_hashes = _read_inputs(spec.dataset, spec.data_dir)
    if _is_prepared(out_dir, spec.dataset, spec.train_split, spec.test_fraction, input_hashes):
        return out_dir
    tokens, meta = _tokenize(spec.dataset, input_paths, raw, spec.train_split,
                             spec.test_fraction)
    with staging.locked(out_dir, wait=True):
        if _is_prepared(out_dir, spec.dataset, spec.train_split, spec.test_fraction,
                        input_hashes):
            return out_dir  # prepared by another process while this one waited
        work = staging.fresh_partial(out_dir)
        _write(work, tokens, meta, input_paths, input_hashes)
        staging.publish(work, out_dir)
    return out_dir


def _write(out_dir: Path, tokens: dict, meta: dict, input_paths: dict, input_hashes: dict):
    """The shards and, last, meta.json (the completion marker) into out_dir."""
    files = {f"{s}.bin": write_shard(out_dir / f"{s}.bin", tokens[s]) for s in SPLITS}
    meta.update(
        **{f"{s}_tokens": int(tokens[s].size) for s in SPLITS},
        splits={s: [{"file": f"{s}.bin", "tokens": int(tokens[s].size)}] for s in SPLITS},
        inputs={name: {"sha256": input_hashes[name], "path": str(input_paths[name].absolute())}
                for name in input_paths},
        files=files,
    )
    atomic_write_json(out_dir / "meta.json", meta)


def split_sizes(spec, out_dir: Path) -> dict:
    """{split: tokens}, from meta.json when up to date, else by
    tokenizing in memory: writes nothing."""
    input_paths, raw, input_hashes = _read_inputs(spec.dataset, spec.data_dir)
    if _is_prepared(out_dir, spec.dataset, spec.train_split, spec.test_fraction, input_hashes):
        meta = read_meta(out_dir)
        return {s: int(meta[f"{s}_tokens"]) for s in SPLITS}
    tokens, _ = _tokenize(spec.dataset, input_paths, raw, spec.train_split, spec.test_fraction)
    return {s: int(tokens[s].size) for s in SPLITS}
