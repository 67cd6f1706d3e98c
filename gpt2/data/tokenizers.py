"""Tokenizers: GPT-2 BPE (tiktoken, from the local encoder.json and vocab.bpe) and
characters. Preparation encodes text into numpy arrays, in worker processes too (an
Encoder is rebuilt there from its picklable TokenizerSpec); load_tokenizer gives the
(encode, decode) pair of a prepared dataset for sampling.
"""
import functools
from dataclasses import dataclass

import numpy as np

from gpt2.data.errors import DataError
from gpt2.data.inputs import ENCODER_JSON, SOURCES, VOCAB_BPE, find_input
from lib.environ import scoped_env

GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256


def token_dtype(vocab_size: int):
    """The smallest unsigned type that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


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


def gpt2_files(data_dir: str) -> tuple:
    """(vocab.bpe, encoder.json) paths, looked up like every raw input."""
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


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker process needs to rebuild the tokenizer: its kind and its files
    (gpt2) or its vocabulary (char: the sorted distinct characters of the corpus)."""
    kind: str
    bpe_files: tuple = ()
    vocab: str = ""

    @property
    def vocab_size(self) -> int:
        return GPT2_VOCAB_SIZE if self.kind == "gpt2" else len(self.vocab)

    @property
    def eot(self):
        """The token appended after each document, or None (characters: none)."""
        return GPT2_EOT if self.kind == "gpt2" else None

    @property
    def dtype(self):
        return token_dtype(self.vocab_size)


class Gpt2Encoder:
    def __init__(self, spec: TokenizerSpec):
        self.enc = _gpt2_encoding(*map(str, spec.bpe_files))
        self.dtype, self.eot = spec.dtype, spec.eot

    def encode(self, text: str) -> np.ndarray:
        # Plain text only: a literal "<|endoftext|>" in the input is not the special token.
        return np.array(self.enc.encode_ordinary(text), dtype=self.dtype)


class CharEncoder:
    def __init__(self, spec: TokenizerSpec):
        self.codepoints = np.array([ord(c) for c in spec.vocab], dtype=np.uint32)
        self.dtype, self.eot = spec.dtype, spec.eot

    def encode(self, text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self.codepoints, points)
        if points.size and (ids.max() >= self.codepoints.size
                            or not np.array_equal(self.codepoints[ids], points)):
            raise DataError("Characters not in the vocabulary of this preparation "
                            "(the corpus changed while it was prepared?)")
        return ids.astype(self.dtype)


ENCODERS = {"gpt2": Gpt2Encoder, "char": CharEncoder}
TOKENIZERS = tuple(ENCODERS)


def encoder(spec: TokenizerSpec):
    return ENCODERS[spec.kind](spec)


def load_tokenizer(prepared_dir, input_data_dir: str = ""):
    """(encode, decode) for a prepared dataset: encode(str) -> list[int], decode(ids) -> str."""
    from gpt2.data.shards import read_meta

    meta = read_meta(prepared_dir)
    if meta.get("tokenizer", "char" if meta["dataset"] == "shakespeare-char" else "gpt2") == "char":
        return _char_codec(meta["vocab"])
    enc = _gpt2_encoding(*map(str, gpt2_files(input_data_dir)))

    def encode(text: str) -> list[int]:
        return enc.encode(text, allowed_special={"<|endoftext|>"})

    def decode(ids) -> str:
        return enc.decode([int(i) for i in ids])

    return encode, decode
