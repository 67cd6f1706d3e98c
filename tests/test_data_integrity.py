"""Faults of the data side: bytes that are not UTF-8, damaged shards and meta.json, a
preparation that fails half-way, a hub with no network, paths that lead nowhere. Each
ends in one line naming the file or knob, or in files identical to an undisturbed run."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt2 import data, train
from gpt2.data import loaders
from gpt2.data import huggingface, pipeline, verify
from lib import config as cfglib

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak.\n" * 40


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def _shakespeare(tmp_path):
    """A prepared shakespeare-char corpus of TEXT (its own input directory)."""
    inputs = tmp_path / "inputs"
    (inputs / "tinyshakespeare").mkdir(parents=True, exist_ok=True)
    (inputs / "tinyshakespeare" / "input.txt").write_text(TEXT, encoding="utf-8")
    return data.prepare("shakespeare-char", str(inputs), tmp_path / "out", 0.9)


def _poke(path, offset, value):
    """Overwrite token `offset` of a uint16 shard; same size, modification time kept."""
    stat = path.stat()
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[offset] = value
    tokens.tofile(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _one_line_error(result):
    err = result.stderr.strip()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gpt2.data", *map(str, args)],
                          cwd=cfglib.ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


# ------------------------------------------------------------------ 1. not UTF-8

BAD = b"caf\xe9 au lait\n"  # Latin-1 bytes


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_text_files_not_utf8_strict_names_file_and_byte_offset(tmp_path, suffix):
    good = "a good document\n".encode()
    bad = (b'{"text": "' + BAD.strip() + b'"}\n') if suffix == ".jsonl" else BAD
    if suffix == ".jsonl":
        good = b'{"text": "a good document"}\n'
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"a{suffix}").write_bytes(good * 3)
    (tmp_path / "in" / f"b{suffix}").write_bytes(good + bad)
    with pytest.raises(UnicodeDecodeError) as oracle:
        (good + bad).decode("utf-8")
    spec = data.DataSpec("text-files", tokenizer="char", text_files=str(tmp_path / "in"),
                         workers=1)
    with pytest.raises(data.DataError) as info:
        data.prepare_spec(spec, tmp_path / "out")
    message = str(info.value)
    assert f"{tmp_path / 'in' / f'b{suffix}'} (TEXT_FILES_PATH) is not UTF-8 at byte " \
           f"{oracle.value.start}:" in message and "TEXT_FILES_DECODE=replace" in message
    assert not data.prepared_dir(spec, tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_text_files_not_utf8_replace_decodes_as_python_does(tmp_path, suffix):
    raw = b'{"text": "caf\xe9 \xff\xfe ok"}\n' if suffix == ".jsonl" else BAD + b"\xff\xfe ok\n"
    path = tmp_path / "in"  # 20 documents: 20 .txt files, or 20 lines of one .jsonl
    path.mkdir()
    for i in range(1 if suffix == ".jsonl" else 20):
        (path / f"c{i:02d}{suffix}").write_bytes(raw * (20 if suffix == ".jsonl" else 1))
    decoded = raw.decode("utf-8", errors="replace")
    expected = json.loads(decoded)["text"] if suffix == ".jsonl" else decoded
    spec = data.DataSpec("text-files", tokenizer="char", text_files=str(path), workers=1,
                         text_decode="replace", train_split=0.5)
    out = data.prepare_spec(spec, tmp_path / "out")
    meta = data.read_meta(out)
    _, decode = data.load_tokenizer(out)
    text = "".join(decode(np.fromfile(out / e["file"], dtype=meta["dtype"]))
                   for s in data.SPLITS for e in meta["splits"][s])
    assert sorted(text) == sorted(expected * 20)
    assert "\ufffd" in meta["vocab"]
    # The policy is part of the corpus's identity only where it changes the bytes.
    strict = data.DataSpec("text-files", tokenizer="char", text_files=str(path), workers=1,
                           train_split=0.5)
    assert data.prepared_dir(strict, tmp_path / "out") == out
    with pytest.raises(UnicodeDecodeError) as oracle:
        raw.decode("utf-8")
    with pytest.raises(data.DataError, match=f"not UTF-8 at byte {oracle.value.start}:"):
        data.prepare_spec(strict, tmp_path / "out2")


def test_meta_json_not_utf8_is_one_line_naming_file_and_fix(tmp_path):
    out = _shakespeare(tmp_path)
    raw = (out / "meta.json").read_bytes()
    (out / "meta.json").write_bytes(raw[:10] + b"\xff" + raw[11:])
    with pytest.raises(data.DataError) as info:
        data.Batches(out, block_size=8, batch_size=2)
    message = str(info.value)
    assert f"{out / 'meta.json'} is damaged (not UTF-8 at byte 10)" in message
    assert f"delete {out} and run make data" in message
    (out / "meta.json").write_text("[1, 2]")
    with pytest.raises(data.DataError, match="not a JSON object"):
        data.read_meta(out)
    (out / "meta.json").write_text('{"vocab_size": 65, "splits": {"train": [{}]}}')
    with pytest.raises(data.DataError, match="meta.json lacks or garbles the shard list"):
        data.Batches(out, block_size=8, batch_size=2)


# ------------------------------------------------------------------ 2. damaged shards

def test_out_of_vocabulary_token_names_shard_and_offset_in_every_reader(tmp_path):
    out = _shakespeare(tmp_path)
    vocab = data.vocab_size(out)
    _poke(out / "train.bin", 300, 65535)
    expected = f"{out / 'train.bin'} holds token id 65535 at token offset 300, outside " \
               f"the vocabulary of {vocab}"
    batches = data.Batches(out, block_size=16, batch_size=4)
    x, _ = batches.read("train", torch.tensor([0, 100]))  # does not reach it
    assert int(x.max()) < vocab
    with pytest.raises(data.DataError, match=expected):
        batches.read("train", torch.tensor([0, 290]))
    with pytest.raises(data.DataError, match=expected):
        list(data.EvalWindows(out, "train", 16, 4))
    with pytest.raises(data.DataError, match=expected):
        loaders.PreloadedBatches(out, block_size=16, batch_size=4)


def test_truncated_shard_is_an_error_naming_it_when_opened(tmp_path):
    out = _shakespeare(tmp_path)
    size = (out / "val.bin").stat().st_size
    with open(out / "val.bin", "r+b") as f:
        f.truncate(size - 6)
    with pytest.raises(data.DataError, match=f"{out / 'val.bin'} has {size - 6:,} bytes "
                                             f"where meta.json records {size:,}"):
        data.Batches(out, block_size=8, batch_size=2)


def test_verify_finds_changed_bytes_that_keep_size_and_mtime(tmp_path, monkeypatch):
    out = _shakespeare(tmp_path)
    assert verify.check(out) == (3, len(TEXT))
    _poke(out / "train.bin", 5, int(np.fromfile(out / "train.bin", np.uint16)[6]))  # valid id
    found, shards, _ = verify.problems(out)
    assert shards == 3 and len(found) == 1
    assert found[0].startswith(f"{out / 'train.bin'}: sha256 ")
    # The loader's cheap checks cannot see this; DATA_VERIFY at a run's start does.
    data.Batches(out, block_size=8, batch_size=2).get("train")
    cfg = cfglib.load(cfglib.ROOT / "defconfigs" / "default", [
        f"DATA_DIR={tmp_path / 'inputs'}", "TRAIN_SPLIT=0.9", "DATA_VERIFY=y"])
    monkeypatch.setattr(sys.modules["gpt2.data.prepare"], "data_root",
                        lambda cfg: tmp_path / "out")
    with pytest.raises(data.DataError, match=f"damaged prepared data: {out / 'train.bin'}"):
        data.prepare_config(cfg)


def test_data_verify_leaves_the_run_hash_alone():
    """A run started without DATA_VERIFY resumes with it: the same run directory."""
    default = cfglib.ROOT / "defconfigs" / "default"
    assert cfglib.load(default, ["DATA_VERIFY=y"]).hash == cfglib.load(default).hash
    assert cfglib.load(default, ["SEED=2"]).hash != cfglib.load(default).hash


def test_make_data_verify_entry_point(tmp_path):
    inputs = tmp_path / "inputs" / "tinyshakespeare"
    inputs.mkdir(parents=True)
    (inputs / "input.txt").write_text(TEXT)
    config = tmp_path / "config"
    cfglib.write_config(cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default", [
        f"RESULTS_DIR={tmp_path / 'res'}", f"DATA_DIR={tmp_path / 'inputs'}"]), config)
    assert _cli(config).returncode == 0
    ok = _cli("--verify", config)
    assert ok.returncode == 0 and "3 shards" in ok.stdout and "verified" in ok.stdout
    out = tmp_path / "res" / "_data" / "shakespeare-char-split0.9-test0.05"
    _poke(out / "val.bin", 0, 65000)
    bad = _cli("--verify", config)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"error: {out / 'val.bin'}: sha256" in bad.stderr
    assert (out / "train.bin").is_file()  # nothing removed


def test_damaged_shard_mid_run_fails_the_run_with_one_line_and_its_reason(tiny_config, capsys):
    config = tiny_config("MAX_ITERS=5", "EVAL_INTERVAL=5")
    cfg = cfglib.load(config)
    out = data.prepare_config(cfg)
    # the validation split: first read by the evaluation at iteration 5 (the first training
    # batches are read before training starts, for the run's data_hash)
    tokens = np.fromfile(out / "val.bin", dtype=np.uint16)
    stat = (out / "val.bin").stat()
    np.full_like(tokens, 65535).tofile(out / "val.bin")
    os.utime(out / "val.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert train.main([str(config)]) == 3
    summary = json.loads(train.RunDir.for_config(cfg).summary.read_text())
    assert summary["status"] == "failed"
    assert f"{out / 'val.bin'} holds token id 65535" in summary["error"]
    assert "\n" not in summary["error"] and "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------- 3. partial preparations

def _corpus(tmp_path):
    docs = [f"document {i}: " + "lorem ipsum dolor " * (i % 7 + 1) + "\n" for i in range(80)]
    path = tmp_path / "in" / "c.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return data.DataSpec("text-files", tokenizer="char", text_files=str(path),
                         shard_tokens=1000, workers=1)


def _files(directory):
    """The shards' bytes and meta.json, less the modification times it records."""
    meta = data.read_meta(directory)
    for entry in meta["files"].values():
        entry.pop("mtime_ns")
    return {"meta": meta, **{p.name: p.read_bytes() for p in directory.glob("*.bin")}}


def test_failed_preparation_leaves_no_final_directory_and_resumes_identically(tmp_path,
                                                                             monkeypatch):
    spec = _corpus(tmp_path)
    reference = _files(data.prepare_spec(spec, tmp_path / "reference"))
    out = data.prepared_dir(spec, tmp_path / "out")
    real_write, written = pipeline.write_shard, []

    def fail_on_third(path, tokens):
        if len(written) == 3:
            raise OSError("disk full")
        written.append(path.name)
        return real_write(path, tokens)

    monkeypatch.setattr(pipeline, "write_shard", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        data.prepare_spec(spec, tmp_path / "out")
    assert not out.exists()  # nothing can take the partial files for a corpus
    partial = out.with_name(f".{out.name}.partial")
    recorded = [n for unit in json.loads((partial / "progress.json").read_text())["units"]
                for n in unit["files"]]
    assert recorded and not (partial / "meta.json").exists()
    kept = {n: (partial / n).stat().st_mtime_ns for n in recorded}
    monkeypatch.setattr(pipeline, "write_shard", real_write)
    assert data.prepare_spec(spec, tmp_path / "out") == out
    assert not partial.exists()
    assert {n: (out / n).stat().st_mtime_ns for n in recorded} == kept  # resumed, not redone
    assert _files(out) == reference


def test_unfinished_or_damaged_final_directory_is_never_taken_for_a_corpus(tmp_path):
    spec = _corpus(tmp_path)
    reference = _files(data.prepare_spec(spec, tmp_path / "reference"))
    out = data.prepared_dir(spec, tmp_path / "out")
    out.mkdir(parents=True)  # what an in-place preparation killed half-way left
    (out / "train-00000.bin").write_bytes(b"\1\0" * 300)
    (out / "progress.json").write_bytes(b'{"key": "\xff"}')  # not UTF-8: started over
    assert data.prepare_spec(spec, tmp_path / "out") == out
    assert _files(out) == reference
    first = sorted(n for n in reference if n != "meta")[0]
    (out / first).unlink()  # a complete corpus that lost a shard
    assert data.prepare_spec(spec, tmp_path / "out") == out
    assert _files(out) == reference


def test_stale_partial_directory_is_cleared_for_shakespeare(tmp_path):
    partial = tmp_path / "out" / ".shakespeare-char-split0.9-test0.05.partial"
    partial.mkdir(parents=True)
    (partial / "train.bin").write_bytes(b"junk")
    (partial / "meta.json").write_text("{}")
    out = _shakespeare(tmp_path)
    assert not partial.exists()
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.bin", "train.bin",
                                                     "val.bin"]
    assert verify.check(out) == (3, len(TEXT))


# ------------------------------------------------------------------ 4. no network

def _hub_spec():
    return data.DataSpec("hf", tokenizer="char", hf_name="kmatrix-test/no-such-corpus",
                         max_tokens=1000, workers=1)


def test_unreachable_hub_fails_at_once_after_one_connection(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    attempts, loads = [], []
    real_connect = socket.socket.connect

    def counted(self, address):
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", counted)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append(a))
    with pytest.raises(data.DataError) as info:
        data.prepare_spec(_hub_spec(), tmp_path / "out")
    message = str(info.value)
    assert attempts == [("127.0.0.1", 9)] and loads == []
    assert "\n" not in message
    for needle in ("http://127.0.0.1:9 cannot be reached", "HF_HUB_OFFLINE=1",
                   "DATASET=text-files", "HF_NAME=<a local dataset directory>"):
        assert needle in message, needle


NO_NETWORK = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network disabled in this test")
socket.getaddrinfo = socket.socket.connect = refuse
from gpt2.data import main
status = main([sys.argv[1]])
print("network attempts:", len(attempts))
sys.exit(status)
"""


def test_offline_hub_fails_at_once_in_one_line_without_a_network_attempt(tmp_path):
    config = tmp_path / "config"
    cfglib.write_config(cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default", [
        f"RESULTS_DIR={tmp_path / 'res'}", "DATASET=hf", "HF_NAME=kmatrix-test/no-such-corpus",
        "DATA_MAX_TOKENS=1000"]), config)
    result = subprocess.run([sys.executable, "-c", NO_NETWORK, str(config)], cwd=cfglib.ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    message = _one_line_error(result)
    assert "network attempts: 0" in result.stdout
    assert "HF_HUB_OFFLINE" in message and "DATASET=text-files" in message
    assert str(tmp_path / "hf") in message and "load_dataset(" not in message


# ------------------------------------------------------------------ 5. paths

def test_dataset_paths_that_lead_nowhere_name_their_knob(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "c.txt").write_text(TEXT)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    # `..` is an ordinary relative path: it works where it resolves ...
    spec = data.DataSpec("text-files", tokenizer="char", text_files="../corpus/c.txt",
                         text_files_val="../corpus/c.txt", text_files_test="../corpus/c.txt",
                         workers=1)
    out = data.prepare_spec(spec, tmp_path / "out")
    assert data.read_meta(out)["train_tokens"] == len(TEXT)
    # ... and is an error naming the knob where it does not.
    with pytest.raises(data.DataError, match=r"TEXT_FILES_PATH='../nowhere/c.txt' does not "
                                             r"exist \(relative to "):
        data.prepare_spec(spec.__class__("text-files", text_files="../nowhere/c.txt"), tmp_path)
    os.symlink("loop.txt", tmp_path / "loop.txt")
    with pytest.raises(data.DataError, match="TEXT_FILES_PATH=.*a loop of symbolic links"):
        data.prepare_spec(data.DataSpec("text-files", text_files=str(tmp_path / "loop.txt")),
                          tmp_path)
    os.symlink("loop.txt", tmp_path / "corpus" / "loop.txt")  # inside a directory
    with pytest.raises(data.DataError, match="TEXT_FILES_PATH=.*loop.txt is a symbolic link"):
        data.prepare_spec(data.DataSpec("text-files", text_files=str(tmp_path / "corpus")),
                          tmp_path)
    with pytest.raises(data.DataError, match="TEXT_FILES_VAL_PATH=.*does not exist"):
        data.prepare_spec(data.DataSpec("text-files", text_files=str(tmp_path / "corpus/c.txt"),
                                        text_files_val=str(tmp_path / "none")), tmp_path)


def test_data_dir_and_hf_name_of_the_wrong_kind_name_their_knob(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(data.DataError, match="DATA_DIR=.*a-file' is a file where a directory"):
        data.prepare("shakespeare-char", str(tmp_path / "a-file"), tmp_path / "out", 0.9)
    (tmp_path / "d" / "tinyshakespeare" / "input.txt").mkdir(parents=True)
    with pytest.raises(data.DataError, match="DATA_DIR: .*input.txt is not a readable file"):
        data.prepare("shakespeare-char", str(tmp_path / "d"), tmp_path / "out", 0.9)
    with pytest.raises(data.DataError, match="HF_NAME=.*a-file' is a file where a directory"):
        data.prepare_spec(data.DataSpec("hf", hf_name=str(tmp_path / "a-file")), tmp_path)
    with pytest.raises(data.DataError, match="HF_NAME='./no-such-dir' does not exist"):
        data.prepare_spec(data.DataSpec("hf", hf_name="./no-such-dir"), tmp_path)
    assert huggingface.is_local(str(tmp_path)) and not huggingface.is_local("org/name")
