"""Training data: sources of text, tokenized once into memory-mapped shards, and the
batches and evaluation windows read from them.

  shakespeare.py   tiny Shakespeare (characters or GPT-2 BPE), prepared in memory
  huggingface.py   FineWeb-Edu, OpenWebText, any Hugging Face dataset (`datasets`)
  textfiles.py     local .txt, .jsonl and .parquet files (the same `datasets` path)
  pipeline.py      the shared preparation of document corpora: segments, parallel
                   tokenization, train/val/test draw, token budget, resumable shard writing
  shards.py        the prepared format: meta.json, shards, the memory-mapped reader
  tokenizers.py    GPT-2 BPE (tiktoken, local files) and characters
  batches.py       the batch sampler;  evalwindows.py  the evaluation windows
  loaders.py       DATA_LOADER: memmap (batches.py) or preloaded on the device
  prepare.py       DataSpec (what a config selects), directory names, the registry
  staging.py       the partial directory a preparation writes in, renamed at the end
  verify.py        sizes, sha256 and token ids of every shard (make data-verify)
  decoding.py      TEXT_FILES_DECODE: bytes of text files that are not UTF-8
  paths.py         checks of the paths data knobs name;  hub.py  is the hub reachable

The names other modules use are importable from here. Batches and EvalWindows load on
first use, so worker processes that tokenize never import torch.
"""
from gpt2.data.cli import main
from gpt2.data.errors import DataError
from gpt2.data.inputs import (
    ENCODER_JSON, SHARED_DATA_DIR, SOURCES, TEXT_FILE, VOCAB_BPE, download, find_input,
)
from gpt2.data.prepare import (
    DATASETS, DataSpec, prepare, prepare_config, prepare_spec, prepared_dir, prepared_path,
    spec_from_config, split_sizes, split_sizes_config, split_sizes_spec,
)
from gpt2.data.prepare import check_split_sizes, check_split_sizes_config
from gpt2.data.shards import META_FORMAT, SPLITS, SplitTokens, read_meta, vocab_size
from gpt2.data.tokenizers import (
    GPT2_EOT, GPT2_VOCAB_SIZE, TOKENIZERS, _gpt2_encoding, load_tokenizer,
)

__all__ = [
    "main", "DataError", "ENCODER_JSON", "SHARED_DATA_DIR",
    "SOURCES", "TEXT_FILE", "VOCAB_BPE", "download", "find_input", "DATASETS", "DataSpec",
    "prepare", "prepare_config", "prepare_spec", "prepared_dir", "prepared_path",
    "spec_from_config", "split_sizes", "split_sizes_config", "split_sizes_spec",
    "META_FORMAT", "SPLITS", "SplitTokens", "read_meta", "vocab_size", "GPT2_EOT",
    "GPT2_VOCAB_SIZE", "TOKENIZERS", "_gpt2_encoding", "load_tokenizer",
    "Batches", "EvalWindows", "check_split_sizes", "check_split_sizes_config",
]
_LAZY = {"Batches": "gpt2.data.batches", "EvalWindows": "gpt2.data.evalwindows"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
