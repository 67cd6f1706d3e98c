"""Document corpora: local fixtures read through the same `datasets` path as a hub
dataset, the parallel shard writer against one-process references, the token budget,
resumption after kill -9 between shards, the uint32 path and the offline error."""
import json
import os
import random
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import EVENT_LIMIT_S
from gpt2 import data
from gpt2.data import pipeline
from lib import config as cfglib

SHARED = data.inputs.SHARED_DATA_DIR
needs_bpe = pytest.mark.skipif(not (SHARED / "gpt2" / "vocab.bpe").is_file(),
                               reason=f"no GPT-2 BPE files in {SHARED}/gpt2")


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def _docs(n=60, seed=0):
    """Documents of varied length, one longer than a segment, with the whitespace and
    punctuation BPE is sensitive to."""
    rng = random.Random(seed)
    words = ["the", "fox", " ", "  ", "\n", "\n\n", "3.14", "naïve", "café", "!?", "--",
             "'s", "don't", "\t", "日本語", "x\x1c", "1999", "...", "(a)"]
    docs = ["".join(rng.choice(words) + rng.choice(["", " "]) for _ in range(rng.randint(1, 300)))
            for _ in range(n)]
    docs[7] = "word. " * 30000 + "\n\nend"   # 180k characters: three segments
    return docs


def _write_jsonl(path, docs, field="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({field: d, "id": i}) + "\n")
    return path


def _write_parquet(path, docs, field="text"):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), path, row_group_size=16)
    return path


def _split(prepared, split):
    meta = data.read_meta(prepared)
    return np.concatenate([np.fromfile(prepared / e["file"], dtype=meta["dtype"])
                           for e in meta["splits"][split]])


def _gpt2():
    return data._gpt2_encoding(str(SHARED / "gpt2" / "vocab.bpe"),
                               str(SHARED / "gpt2" / "encoder.json"))


def _reference(docs):
    """One process, no segments: each document's BPE and the end-of-text token."""
    enc = _gpt2()
    return np.array([t for d in docs for t in enc.encode_ordinary(d) + [data.GPT2_EOT]])


@needs_bpe
def test_segments_cut_where_bpe_does_not_change():
    enc = _gpt2()
    text = "".join(_docs(20, seed=1))
    pieces = pipeline.segments(text, size=40)
    assert len(pieces) > 50 and "".join(pieces) == text
    assert [t for p in pieces for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text)


@needs_bpe
def test_parallel_writer_is_byte_identical_to_one_process(tmp_path):
    docs, val_docs, test_docs = _docs(), _docs(12, seed=2), _docs(9, seed=3)
    train_file = _write_jsonl(tmp_path / "in" / "train.jsonl", docs)
    val_file = _write_jsonl(tmp_path / "in" / "val.jsonl", val_docs)
    test_file = _write_jsonl(tmp_path / "in" / "test.jsonl", test_docs)
    spec = data.DataSpec("text-files", str(SHARED), text_files=str(train_file),
                         text_files_val=str(val_file), text_files_test=str(test_file),
                         shard_tokens=3000)
    two = data.prepare_spec(replace(spec, workers=2), tmp_path / "a")
    one = data.prepare_spec(replace(spec, workers=1), tmp_path / "b")
    meta = data.read_meta(two)
    assert len(meta["splits"]["train"]) > 5 and meta["dtype"] == "uint16"
    for name in meta["files"]:
        assert (two / name).read_bytes() == (one / name).read_bytes()
    assert np.array_equal(_split(two, "train"), _reference(docs))
    assert np.array_equal(_split(two, "val"), _reference(val_docs))
    assert np.array_equal(_split(two, "test"), _reference(test_docs))
    assert meta["train_tokens"] == _reference(docs).size


@needs_bpe
def test_parquet_share_split_and_budget_cut(tmp_path):
    # many segments of similar size, so that the draw gives every split its share
    docs = _docs(300)
    docs[7] = "word. " * 300
    path = _write_parquet(tmp_path / "in" / "corpus.parquet", docs, field="content")
    enc = _gpt2()
    # The reference: segments in order, each drawn by its (document, segment) numbers.
    expected = {"train": [], "val": [], "test": []}
    for d, doc in enumerate(docs):
        pieces = pipeline.segments(doc)
        for s, piece in enumerate(pieces):
            tokens = enc.encode_ordinary(piece) + ([data.GPT2_EOT] if s == len(pieces) - 1 else [])
            expected[pipeline.drawn_split(5, d, s, 0.8, 0.05)] += tokens
    spec = data.DataSpec("text-files", str(SHARED), train_split=0.8, split_seed=5,
                         text_files=str(path), text_field="content", shard_tokens=2000, workers=1)
    whole = data.prepare_spec(spec, tmp_path / "out")
    for split in ("train", "val", "test"):
        assert _split(whole, split).tolist() == expected[split]
    draws = [pipeline.drawn_split(5, d, s, 0.8, 0.05) for d in range(5000) for s in range(2)]
    assert abs(draws.count("val") / len(draws) - 0.15) < 0.02
    assert abs(draws.count("test") / len(draws) - 0.05) < 0.01
    # the training split does not depend on the test fraction
    assert [x == "train" for x in draws] == [
        pipeline.drawn_split(5, d, s, 0.8) == "train" for d in range(5000) for s in range(2)]

    # A budget takes the first N tokens of the same stream, train and val together.
    budget = 20000
    cut = data.prepare_spec(replace(spec, max_tokens=budget),
                            tmp_path / "out")
    assert cut != whole and "-20ktok-" in cut.name and "split0.8-test0.05-seed5" in cut.name
    meta = data.read_meta(cut)
    assert meta["train_tokens"] + meta["val_tokens"] + meta["test_tokens"] == budget
    for split in ("train", "val", "test"):
        full = _split(whole, split)
        assert np.array_equal(_split(cut, split), full[:meta[f"{split}_tokens"]])

    with pytest.raises(data.DataError, match="TEXT_FIELD"):
        data.prepare_spec(replace(spec, text_field="body"),
                          tmp_path / "other")


def test_char_tokenizer_above_uint16_writes_uint32(tmp_path):
    alphabet = [chr(0x10000 + i) for i in range(70000)]
    random.Random(0).shuffle(alphabet)
    docs = ["".join(alphabet[i:i + 700]) for i in range(0, len(alphabet), 700)]
    path = _write_jsonl(tmp_path / "in" / "wide.jsonl", docs)
    spec = data.DataSpec("text-files", tokenizer="char", text_files=str(path),
                         train_split=0.7, shard_tokens=20000, workers=1)
    out = data.prepare_spec(spec, tmp_path / "out")
    meta = data.read_meta(out)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70000
    assert all((out / n).stat().st_size == e["bytes"] for n, e in meta["files"].items())
    assert sum(e["bytes"] for e in meta["files"].values()) == 4 * 70000
    train = _split(out, "train")
    assert train.max() >= 2**16
    encode, decode = data.load_tokenizer(out)
    assert set(decode(train) + decode(_split(out, "val"))
               + decode(_split(out, "test"))) == set(alphabet)
    batches = data.Batches(out, block_size=16, batch_size=4, seed=0)
    x, y = batches.get("train")
    assert x.dtype == torch.int64 and int(x.max()) < 70000


def test_batches_and_windows_span_shards(tmp_path):
    docs = ["".join(random.Random(i).choice("abcdefgh \n") for _ in range(300)) for i in range(40)]
    path = _write_jsonl(tmp_path / "in" / "c.jsonl", docs)
    spec = data.DataSpec("text-files", tokenizer="char", text_files=str(path),
                         shard_tokens=1000, workers=1)
    out = data.prepare_spec(spec, tmp_path / "out")
    assert len(data.read_meta(out)["splits"]["train"]) >= 8
    train = _split(out, "train").astype(np.int64)
    tokens = data.SplitTokens(out, "train")
    starts = np.arange(0, len(train) - 50, 37)
    assert np.array_equal(tokens.windows(starts, 50), train[starts[:, None] + np.arange(50)])

    a = data.Batches(out, block_size=64, batch_size=8, seed=3)
    b = data.Batches(out, block_size=64, batch_size=8, seed=3)
    for _ in range(5):
        starts = b.starts("train").numpy()
        x, y = a.get("train")
        assert np.array_equal(x.numpy(), train[starts[:, None] + np.arange(64)])
        assert np.array_equal(y.numpy(), train[starts[:, None] + np.arange(1, 65)])
    windows = data.EvalWindows(out, "train", block_size=64, batch_size=5)
    xs = torch.cat([x for x, _ in windows]).reshape(-1).numpy()
    assert np.array_equal(xs, train[:windows.tokens])


def _config(tmp_path, *extra):
    config = tmp_path / "config"
    cfglib.write_config(cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default", [
        f"RESULTS_DIR={tmp_path / 'res'}", *extra]), config)
    return config


def _cli(config, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "gpt2.data", str(config)], cwd=cfglib.ROOT,
                          env=env, capture_output=True, text=True, timeout=EVENT_LIMIT_S)


def test_kill_between_shards_resumes_to_identical_files(tmp_path):
    docs = ["".join(random.Random(i).choice("klmnop qr\n") for _ in range(500)) for i in range(60)]
    path = _write_jsonl(tmp_path / "in" / "c.jsonl", docs)
    config = _config(tmp_path, "DATASET=text-files", f"TEXT_FILES_PATH={path}", "TOKENIZER=char",
                     "DATA_SHARD_TOKENS=4000", "DATA_WORKERS=1", "DATA_SPLIT_SEED=7")
    cfg = cfglib.load(config)
    out = data.prepared_dir(data.spec_from_config(cfg), tmp_path / "res" / "_data")
    assert out.name.startswith("text-files-c.jsonl-char-all-split0.9-test0.05-seed7-")

    killed = _cli(config, {"KMATRIX_TEST_FAULT": "shard@2=KILL"})
    assert killed.returncode == -9, killed.stderr
    partial = out.with_name(f".{out.name}.partial")  # the final directory comes last
    assert not out.exists()
    progress = json.loads((partial / "progress.json").read_text())
    assert len(progress["units"]) == 3 and not (partial / "meta.json").exists()
    done = {n: (partial / n).stat().st_mtime_ns for u in progress["units"] for n in u["files"]}
    (partial / "train-00003.bin").write_bytes(b"half a shard")  # written, never recorded

    resumed = _cli(config)
    assert resumed.returncode == 0, resumed.stderr
    assert not partial.exists()
    assert all((out / n).stat().st_mtime_ns == t for n, t in done.items())  # not redone
    reference = data.prepare_spec(data.spec_from_config(cfg), tmp_path / "reference")
    meta = data.read_meta(out)
    assert len(meta["files"]) > len(done)
    assert sorted(p.name for p in out.glob("*.bin")) == sorted(meta["files"])
    for name in meta["files"]:
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert data.read_meta(reference)["files"].keys() == meta["files"].keys()


def test_missing_hub_dataset_offline_is_one_clear_error(tmp_path):
    config = _config(tmp_path, "DATASET=hf", "HF_NAME=kmatrix-test/no-such-corpus",
                     "HF_CONFIG=small", "DATA_MAX_TOKENS=1000")
    result = _cli(config, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    err = result.stderr
    assert err.startswith("error: Cannot load") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one line, no download recipe
    for needle in ("kmatrix-test/no-such-corpus (small) split train", str(tmp_path / "hf"),
                   "HF_HUB_OFFLINE", "DATASET=text-files", "HF_NAME=<a local dataset"):
        assert needle in err, needle
    assert "load_dataset(" not in err
    assert not list((tmp_path / "res" / "_data").glob("*/*.bin"))


def test_hf_source_reads_a_local_dataset_directory_with_a_named_validation_split(tmp_path):
    train_docs = [f"train document {i}\n" * (i + 1) for i in range(30)]
    val_docs = [f"held out {i}\n" for i in range(5)]
    _write_parquet(tmp_path / "ds" / "train.parquet", train_docs)
    test_docs = [f"kept back {i}\n" for i in range(4)]
    _write_parquet(tmp_path / "ds" / "validation.parquet", val_docs)
    _write_parquet(tmp_path / "ds" / "test.parquet", test_docs)
    spec = data.DataSpec("hf", tokenizer="char", hf_name=str(tmp_path / "ds"),
                         hf_val_split="validation", hf_test_split="test", workers=1)
    out = data.prepare_spec(spec, tmp_path / "out")
    assert "-val-validation-test-test-" in out.name
    _, decode = data.load_tokenizer(out)
    assert decode(_split(out, "train")) == "".join(train_docs)
    assert decode(_split(out, "val")) == "".join(val_docs)
    assert decode(_split(out, "test")) == "".join(test_docs)


@needs_bpe
def test_two_files_that_cannot_fill_every_split_are_cut_by_token_position(tmp_path, capsys):
    """Two small .txt files are two segments: drawn, val and test would be empty; the
    token stream is cut as nanoGPT cuts one file instead, and it says so."""
    texts = ["".join(_docs(40, seed=4)), "".join(_docs(40, seed=5))]
    for i, text in enumerate(texts):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.txt").write_text(text, encoding="utf-8")
    spec = data.DataSpec("text-files", str(SHARED), text_files=str(tmp_path / "in"),
                         train_split=0.9, test_fraction=0.05, workers=1)
    out = data.prepare_spec(spec, tmp_path / "out")
    assert "splitting the token stream instead" in capsys.readouterr().err
    stream = _reference(texts)
    total = stream.size
    train_end, test_start = int(total * 0.9), int(total * 0.95)
    assert np.array_equal(_split(out, "train"), stream[:train_end])
    assert np.array_equal(_split(out, "val"), stream[train_end:test_start])
    assert np.array_equal(_split(out, "test"), stream[test_start:])
    assert data.read_meta(out)["split_mode"] == "stream"
    # prepared once: a second call finds it up to date
    assert data.prepare_spec(spec, tmp_path / "out") == out
    data.check_split_sizes(spec, out, block_size=16)
    with pytest.raises(data.DataError, match="val split .* fewer than BLOCK_SIZE \\+ 1 .*"
                                             "raise TRAIN_SPLIT and TEST_FRACTION"):
        data.check_split_sizes(spec, out, block_size=test_start - train_end)
    assert spec.split_knob("test") == "TEST_FRACTION"
    assert replace(spec, text_files_test="t").split_knob("test") == "TEXT_FILES_TEST_PATH"


def test_named_validation_files_with_a_drawn_test_split(tmp_path):
    """TEXT_FILES_VAL_PATH names the validation split; the test split is drawn from
    TEXT_FILES_PATH alone, so no training segment is drawn into val."""
    docs = ["".join(random.Random(i).choice("abc \n") for _ in range(200)) for i in range(200)]
    path = _write_jsonl(tmp_path / "in" / "train.jsonl", docs)
    val = _write_jsonl(tmp_path / "in" / "val.jsonl", ["held out\n"] * 20)
    spec = data.DataSpec("text-files", tokenizer="char", text_files=str(path),
                         text_files_val=str(val), test_fraction=0.1, split_seed=3, workers=1)
    out = data.prepare_spec(spec, tmp_path / "out")
    _, decode = data.load_tokenizer(out)
    drawn = [pipeline.drawn_split(3, d, 0, 0.9, 0.1) for d in range(len(docs))]
    assert "val" not in drawn
    assert decode(_split(out, "val")) == "held out\n" * 20
    assert decode(_split(out, "train")) == "".join(d for d, s in zip(docs, drawn) if s == "train")
    assert decode(_split(out, "test")) == "".join(d for d, s in zip(docs, drawn) if s == "test")
    assert "-val-files-test0.1-seed3-" in out.name


def test_train_split_and_test_fraction_must_leave_a_validation_split():
    with pytest.raises(data.DataError, match="TRAIN_SPLIT=0.96 \\+ TEST_FRACTION=0.05 leave no "
                                             "validation split"):
        data.DataSpec("finewebedu", train_split=0.96, test_fraction=0.05).check()
