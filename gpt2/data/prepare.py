"""Which dataset a configuration selects (DataSpec), where it is prepared, and the
registry from the DATASET choice to the code that prepares it."""
import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import gpt2.data.huggingface as huggingface
import gpt2.data.pipeline as pipeline
import gpt2.data.shakespeare as shakespeare
import gpt2.data.textfiles as textfiles
import gpt2.data.verify as verify
from gpt2.data.errors import DataError
from gpt2.data.shards import SPLITS, read_meta
from gpt2.data.tokenizers import TOKENIZERS
from lib.fsutil import safe_name

# DATASET -> Corpus constructor for document corpora (Shakespeare is prepared in memory).
CORPORA = {
    "finewebedu": huggingface.finewebedu,
    "openwebtext": huggingface.openwebtext,
    "hf": huggingface.named,
    "text-files": textfiles.corpus,
}
DATASETS = (*shakespeare.TOKENIZER, *CORPORA)
# Settings that change how fast, never what is written; and the decoding policy, which
# changes only files with bytes that are not UTF-8 (the corpus's inputs record it then).
NOT_IDENTITY = ("workers", "text_decode")


@dataclass(frozen=True)
class DataSpec:
    """Everything that decides a prepared dataset (and DATA_WORKERS, which does not)."""
    dataset: str
    data_dir: str = ""
    train_split: float = 0.9
    test_fraction: float = 0.05
    tokenizer: str = "gpt2"
    max_tokens: int = 0
    split_seed: int = 0
    hf_name: str = ""
    hf_config: str = ""
    hf_split: str = "train"
    hf_val_split: str = ""
    hf_test_split: str = ""
    text_field: str = "text"
    text_files: str = ""
    text_files_val: str = ""
    text_files_test: str = ""
    shard_tokens: int = 100_000_000
    workers: int = 0
    text_decode: str = "strict"
    revision: str = ""  # DATASET_REVISION of a hub dataset

    def identity(self) -> dict:
        """What names the prepared directory; an empty revision is left out, so names
        prepared before DATASET_REVISION existed stay the same."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in NOT_IDENTITY and k != "data_dir"
                and not (k == "revision" and not v)}

    def check(self) -> "DataSpec":
        if self.dataset not in DATASETS:
            raise DataError(f"Unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        try:
            split = float(self.train_split)
        except (TypeError, ValueError):
            raise DataError(f"TRAIN_SPLIT must be a number in (0, 1), "
                            f"got {self.train_split!r}") from None
        if not 0.0 < split < 1.0:
            raise DataError(f"TRAIN_SPLIT must be in (0, 1), got {self.train_split!r}")
        test = float(self.test_fraction)
        if not 0.0 <= test < 1.0:
            raise DataError(f"TEST_FRACTION must be in (0, 1), got {self.test_fraction!r}")
        if not self.named("val") and not self.named("test") and split + test >= 1.0:
            raise DataError(f"TRAIN_SPLIT={split!r} + TEST_FRACTION={test!r} leave no "
                            f"validation split: lower TEST_FRACTION below {1 - split:.6g}")
        if self.tokenizer not in TOKENIZERS:
            raise DataError(f"Unknown tokenizer {self.tokenizer!r}; valid: {', '.join(TOKENIZERS)}")
        if self.max_tokens < 0 or self.shard_tokens < 1:
            raise DataError("DATA_MAX_TOKENS must be >= 0 and DATA_SHARD_TOKENS >= 1")
        return dataclasses.replace(self, train_split=split, test_fraction=test)

    def named(self, split: str) -> str:
        """The dataset's own split (HF) or files (text-files) given for `split`, or ""."""
        if self.dataset == "hf":
            return {"val": self.hf_val_split, "test": self.hf_test_split}.get(split, "")
        if self.dataset == "text-files":
            return {"val": self.text_files_val, "test": self.text_files_test}.get(split, "")
        return ""

    def draw_fractions(self) -> tuple:
        """(train, test) thresholds of the segment draw: a segment whose number u is at
        least 1 - test goes to test, below train to train, else to val; a named split
        is never drawn."""
        test = 0.0 if self.named("test") else self.test_fraction
        return (1.0 - test if self.named("val") else self.train_split), test

    def split_knob(self, split: str) -> str:
        """The knob that sizes `split`, for error messages."""
        if self.named(split):
            return "HF_TEST_SPLIT" if self.dataset == "hf" and split == "test" else (
                "HF_VAL_SPLIT" if self.dataset == "hf" else
                f"TEXT_FILES_{split.upper()}_PATH")
        return {"train": "TRAIN_SPLIT", "val": "TRAIN_SPLIT and TEST_FRACTION"}.get(
            split, "TEST_FRACTION")


def _opt(value, default):
    return default if value is None else value


def spec_from_config(cfg) -> DataSpec:
    """The DataSpec of a Config; symbols the selected dataset does not use are None there
    and take the DataSpec default, which enters no directory name."""
    dataset = cfg.DATASET
    hf_config = cfg.get("FINEWEBEDU_CONFIG") if dataset == "finewebedu" else cfg.get("HF_CONFIG")
    return DataSpec(
        dataset=dataset,
        data_dir=cfg.DATA_DIR,
        train_split=_opt(cfg.get("TRAIN_SPLIT"), 0.9),
        test_fraction=_opt(cfg.get("TEST_FRACTION"), 0.0),
        tokenizer=_opt(cfg.get("TOKENIZER"), shakespeare.TOKENIZER.get(dataset, "gpt2")),
        max_tokens=_opt(cfg.get("DATA_MAX_TOKENS"), 0),
        split_seed=_opt(cfg.get("DATA_SPLIT_SEED"), 0),
        hf_name=_opt(cfg.get("HF_NAME"), ""),
        hf_config=_opt(hf_config, ""),
        hf_split=_opt(cfg.get("HF_SPLIT"), "train"),
        hf_val_split=_opt(cfg.get("HF_VAL_SPLIT"), ""),
        hf_test_split=_opt(cfg.get("HF_TEST_SPLIT"), ""),
        text_field=_opt(cfg.get("TEXT_FIELD"), "text"),
        text_files=_opt(cfg.get("TEXT_FILES_PATH"), ""),
        text_files_val=_opt(cfg.get("TEXT_FILES_VAL_PATH"), ""),
        text_files_test=_opt(cfg.get("TEXT_FILES_TEST_PATH"), ""),
        shard_tokens=_opt(cfg.get("DATA_SHARD_TOKENS"), DataSpec.shard_tokens),
        workers=_opt(cfg.get("DATA_WORKERS"), 0),
        text_decode=_opt(cfg.get("TEXT_FILES_DECODE"), DataSpec.text_decode),
        revision=_opt(cfg.get("DATASET_REVISION"), ""),
    )


def _count(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size and n % (size // 1000 if size >= 10**6 else size) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def dir_name(spec: DataSpec) -> str:
    """<source>-<tokenizer>-<budget>-<split>-seed<seed>-<hash>: readable for what a person
    compares, the hash for every other setting (fields, paths, shard size)."""
    if spec.dataset in shakespeare.TOKENIZER:
        return shakespeare.dir_name(spec.dataset, spec.train_split, spec.test_fraction)
    split = "-".join(_split_label(spec, s) for s in ("val", "test"))
    if not (spec.named("val") and spec.named("test")):
        split += f"-seed{spec.split_seed}"
    budget = f"{_count(spec.max_tokens)}tok" if spec.max_tokens else "all"
    label = CORPORA[spec.dataset](spec).label
    digest = hashlib.sha256(json.dumps(spec.identity(), sort_keys=True).encode()).hexdigest()[:8]
    name = f"{label}-{spec.tokenizer}-{budget}-{split}-{digest}"
    return safe_name(name)


def _split_label(spec: DataSpec, split: str) -> str:
    named = spec.named(split)
    if named:
        return f"{split}-{named if spec.dataset == 'hf' else 'files'}"
    return f"split{spec.train_split!r}" if split == "val" else f"test{spec.test_fraction!r}"


def prepared_dir(spec: DataSpec, out_root) -> Path:
    return Path(out_root) / dir_name(spec.check())


def pinned_corpus(spec: DataSpec, out_dir: Path, resolve: bool):
    """The Corpus of a document dataset, a hub one pinned to a commit (huggingface.pin):
    asked of the hub when `resolve`, else the prepared corpus's own."""
    corpus = CORPORA[spec.dataset](spec)
    try:
        recorded = read_meta(out_dir).get("inputs")
    except (DataError, AttributeError):
        recorded = None
    huggingface.pin(corpus, recorded, out_dir.name, resolve)
    return corpus


def prepare_spec(spec: DataSpec, out_root) -> Path:
    """Prepare the dataset `spec` describes under out_root (nothing when it is up to
    date; resuming an interrupted preparation) and return its directory."""
    spec = spec.check()
    out_dir = prepared_dir(spec, out_root)
    if spec.dataset in shakespeare.TOKENIZER:
        return shakespeare.prepare(spec, out_dir)
    return pipeline.prepare(spec, pinned_corpus(spec, out_dir, resolve=True), out_dir)


@functools.lru_cache(maxsize=8)
def split_sizes_spec(spec: DataSpec, out_root) -> dict:
    """{split: tokens} for every split, writing nothing: Shakespeare is tokenized in
    memory when not prepared; a document corpus must be prepared first."""
    spec = spec.check()
    out_dir = prepared_dir(spec, out_root)
    if spec.dataset in shakespeare.TOKENIZER:
        return shakespeare.split_sizes(spec, out_dir)
    corpus = pinned_corpus(spec, out_dir, resolve=False)
    if not pipeline.is_prepared(out_dir, pipeline.corpus_key(spec, corpus)):
        raise DataError(f"The size of DATASET={spec.dataset} is known once it is prepared "
                        f"(BUDGET=epochs needs it): run `make data` first ({out_dir})")
    meta = read_meta(out_dir)
    return {s: int(meta[f"{s}_tokens"]) for s in SPLITS}


def data_root(cfg) -> Path:
    from lib.run import results_dir
    return results_dir(cfg) / "_data"


def prepare_config(cfg) -> Path:
    """Prepare what a Config selects, under <RESULTS_DIR>/_data; with DATA_VERIFY every
    shard's sha256 and token ids are checked too."""
    out_dir = prepare_spec(spec_from_config(cfg), data_root(cfg))
    if cfg.DATA_VERIFY:
        verify.check(out_dir)
    return out_dir


def split_sizes_config(cfg) -> dict:
    return split_sizes_spec(spec_from_config(cfg), str(data_root(cfg)))


# The Shakespeare-style calls: every other setting at its default.

def prepared_path(out_root, dataset: str, train_split,
                  test_fraction=DataSpec.test_fraction) -> Path:
    """Directory prepare() writes for these arguments."""
    return prepared_dir(DataSpec(dataset, train_split=train_split,
                                 test_fraction=test_fraction), out_root)


def prepare(dataset: str, data_dir: str, out_root, train_split,
            test_fraction=DataSpec.test_fraction) -> Path:
    return prepare_spec(DataSpec(dataset, data_dir, train_split, test_fraction), out_root)


def split_sizes(dataset: str, data_dir: str, out_root, train_split,
                test_fraction=DataSpec.test_fraction) -> dict:
    return split_sizes_spec(DataSpec(dataset, data_dir, train_split, test_fraction),
                            str(out_root))


def check_split_sizes(spec: DataSpec, prepared, block_size: int) -> None:
    """Every split holds at least block_size + 1 tokens (one window and its target), or
    one line naming the knob that sizes the short split."""
    meta = read_meta(prepared)
    for split in SPLITS:
        n = int(meta.get(f"{split}_tokens", 0))
        if n < block_size + 1:
            raise DataError(f"the {split} split of {Path(prepared).name} holds {n:,} tokens, "
                            f"fewer than BLOCK_SIZE + 1 = {block_size + 1:,}: raise "
                            f"{spec.split_knob(split)} or lower BLOCK_SIZE")


def check_split_sizes_config(cfg, prepared) -> None:
    check_split_sizes(spec_from_config(cfg).check(), prepared, cfg.BLOCK_SIZE)
