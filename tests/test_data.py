import hashlib
import json
import os

import numpy as np
import pytest
import torch

from gpt2 import data

REAL_SHARED_DATA = data.SHARED_DATA_DIR  # before the fixture below hides it

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
) * 8


def _write_text(root, text=TEXT):
    path = root / "tinyshakespeare" / "input.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, no $KMATRIX_DATA, an empty shared dir and download cache."""
    def no_network(url, timeout=None):
        raise OSError(f"network disabled in tests: {url}")

    monkeypatch.setattr(data.inputs, "download", no_network)
    monkeypatch.delenv("KMATRIX_DATA", raising=False)
    monkeypatch.delenv("KMATRIX_OFFLINE", raising=False)
    monkeypatch.setattr(data.inputs, "SHARED_DATA_DIR", tmp_path / "no-shared")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def text_dir(tmp_path):
    root = tmp_path / "inputs"
    _write_text(root)
    return root


def _mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def _age(directory):
    for p in directory.iterdir():
        os.utime(p, ns=(10**9, 10**9))


def test_char_prepare_round_trip_and_split(text_dir, tmp_path):
    out = data.prepare("shakespeare-char", str(text_dir), tmp_path / "out", 0.75, 0.1)
    assert out == tmp_path / "out" / "shakespeare-char-split0.75-test0.1"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab"] == "".join(sorted(set(TEXT)))
    assert meta["vocab_size"] == len(set(TEXT)) == data.vocab_size(out)
    # nanoGPT's train/val boundary; the test split is the end of its validation part
    cut, test_start = int(len(TEXT) * 0.75), int(len(TEXT) * 0.9)
    assert (meta["train_tokens"], meta["val_tokens"], meta["test_tokens"]) == (
        cut, test_start - cut, len(TEXT) - test_start)

    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    test = np.fromfile(out / "test.bin", dtype=np.uint16)
    assert (train.size, val.size, test.size) == (cut, test_start - cut, len(TEXT) - test_start)
    encode, decode = data.load_tokenizer(out)
    assert decode(train) + decode(val) + decode(test) == TEXT
    assert encode(TEXT[cut:test_start]) == val.tolist()
    assert encode(TEXT[test_start:]) == test.tolist()
    assert decode(encode("Speak, speak.")) == "Speak, speak."
    with pytest.raises(data.DataError, match="not in the vocabulary"):
        encode("xyz#")


def test_prepare_is_idempotent(text_dir, tmp_path):
    out = data.prepare("shakespeare-char", str(text_dir), tmp_path / "out", 0.9)
    _age(out)
    before = _mtimes(out)
    assert data.prepare("shakespeare-char", str(text_dir), tmp_path / "out", 0.9) == out
    assert _mtimes(out) == before
    assert sorted(before) == ["meta.json", "test.bin", "train.bin", "val.bin"]


def test_prepare_redoes_when_input_or_output_changes(text_dir, tmp_path):
    out = data.prepare("shakespeare-char", str(text_dir), tmp_path / "out", 0.9)
    old_val = (out / "val.bin").read_bytes()

    _write_text(text_dir, TEXT + "Zounds!\n")
    _age(out)
    data.prepare("shakespeare-char", str(text_dir), tmp_path / "out", 0.9)
    assert all(t > 10**9 for t in _mtimes(out).values())
    meta = data.read_meta(out)
    assert "Z" in meta["vocab"] and "!" in meta["vocab"]
    assert (out / "val.bin").read_bytes() != old_val
    assert meta["inputs"]["tinyshakespeare/input.txt"]["sha256"] == hashlib.sha256(
        (text_dir / "tinyshakespeare" / "input.txt").read_bytes()).hexdigest()

    # A damaged output (same size, other bytes) is noticed through its hash.
    good = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(b"\0\0" + good[2:])
    data.prepare("shakespeare-char", str(text_dir), tmp_path / "out", 0.9)
    assert (out / "train.bin").read_bytes() == good


def test_interrupted_prepare_leaves_no_meta_and_is_redone(text_dir, tmp_path, monkeypatch):
    out_root = tmp_path / "out"
    data.prepare("shakespeare-char", str(text_dir), out_root, 0.9)  # a valid old preparation
    _write_text(text_dir, TEXT + "new text\n")

    real_replace = os.replace

    def crash_on_val(src, dst):
        if str(dst).endswith("test.bin"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_val)
    with pytest.raises(OSError, match="disk full"):
        data.prepare("shakespeare-char", str(text_dir), out_root, 0.9)
    monkeypatch.setattr(os, "replace", real_replace)

    # The old preparation is left whole; the failed one only in its partial directory.
    out = data.prepared_path(out_root, "shakespeare-char", 0.9)
    _, decode = data.load_tokenizer(out)
    old = [np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val", "test")]
    assert decode(old[0]) + decode(old[1]) + decode(old[2]) == TEXT
    partial = out.with_name(f".{out.name}.partial")
    assert sorted(p.name for p in partial.iterdir()) == ["train.bin", "val.bin"]  # no meta
    with pytest.raises(data.DataError, match="not prepared"):
        data.Batches(partial, block_size=4, batch_size=2)

    data.prepare("shakespeare-char", str(text_dir), out_root, 0.9)
    _, decode = data.load_tokenizer(out)
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    test = np.fromfile(out / "test.bin", dtype=np.uint16)
    assert decode(train) + decode(val) + decode(test) == TEXT + "new text\n"


def test_bad_arguments(text_dir, tmp_path):
    with pytest.raises(data.DataError, match="shakespeare-char, shakespeare"):
        data.prepare("no-such-dataset", str(text_dir), tmp_path, 0.9)
    for split in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(data.DataError, match=r"\(0, 1\)"):
            data.prepare("shakespeare-char", str(text_dir), tmp_path, split)
    assert not (tmp_path / "shakespeare-char-split1.5").exists()


def test_lookup_order(tmp_path, monkeypatch):
    configured, env, shared = (tmp_path / n for n in ("configured", "env", "shared"))
    for root in (configured, env, shared):
        _write_text(root, f"text from {root.name}\n")
    monkeypatch.setenv("KMATRIX_DATA", str(env))
    monkeypatch.setattr(data.inputs, "SHARED_DATA_DIR", shared)
    rel = "tinyshakespeare/input.txt"

    assert data.find_input(rel, str(configured)) == configured / rel
    assert data.find_input(rel, "") == env / rel
    assert data.find_input(rel, str(tmp_path / "empty")) == env / rel
    monkeypatch.delenv("KMATRIX_DATA")
    assert data.find_input(rel, "") == shared / rel

    out = data.prepare("shakespeare-char", str(configured), tmp_path / "out", 0.5)
    _, decode = data.load_tokenizer(out)
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert decode(train) == "text from configured\n"[: len(train)]


def test_missing_input_without_network_is_one_clear_error(tmp_path, monkeypatch):
    configured, env = tmp_path / "configured", tmp_path / "env"
    monkeypatch.setenv("KMATRIX_DATA", str(env))
    with pytest.raises(data.DataError) as info:
        data.prepare("shakespeare-char", str(configured), tmp_path / "out", 0.9)
    message = str(info.value)
    rel = "tinyshakespeare/input.txt"
    for root in (configured, env, data.inputs.SHARED_DATA_DIR):
        assert str(root / rel) in message
    assert data.SOURCES[rel][0] in message
    assert "network disabled in tests" in message
    assert "DATA_DIR" in message and "KMATRIX_DATA" in message
    assert not (tmp_path / "out").exists()

    monkeypatch.setenv("KMATRIX_OFFLINE", "1")
    monkeypatch.setattr(data.inputs, "download", lambda *a, **k: pytest.fail("download attempted"))
    with pytest.raises(data.DataError, match="KMATRIX_OFFLINE"):
        data.find_input(rel, str(configured))


def test_download_is_saved_to_first_writable_place(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, timeout=None):
        calls.append(url)
        return TEXT.encode()

    monkeypatch.setattr(data.inputs, "download", fake_download)
    configured = tmp_path / "configured"
    path = data.find_input("tinyshakespeare/input.txt", str(configured))
    assert path == configured / "tinyshakespeare" / "input.txt"
    assert path.read_text() == TEXT
    assert data.find_input("tinyshakespeare/input.txt", str(configured)) == path
    assert len(calls) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["input.txt"]

    # A download with the wrong hash is refused and not saved.
    with pytest.raises(data.DataError, match="wrong sha256"):
        data.find_input("gpt2/vocab.bpe", str(configured))
    assert not (configured / "gpt2" / "vocab.bpe").exists()


@pytest.fixture
def gpt2_files(monkeypatch):
    if not (REAL_SHARED_DATA / "gpt2" / "vocab.bpe").is_file():
        pytest.skip(f"no GPT-2 BPE files in {REAL_SHARED_DATA}/gpt2")
    monkeypatch.setenv("KMATRIX_DATA", str(REAL_SHARED_DATA))


def test_bpe_prepare(text_dir, tmp_path, gpt2_files):
    # A literal "<|endoftext|>" in the input is plain text, not the special token.
    text = TEXT + "<|endoftext|>\n"
    _write_text(text_dir, text)
    out = data.prepare("shakespeare", str(text_dir), tmp_path / "out", 0.9)
    meta = data.read_meta(out)
    assert meta["vocab_size"] == data.vocab_size(out) == 50257
    assert meta["inputs"]["gpt2/vocab.bpe"]["sha256"] == data.SOURCES["gpt2/vocab.bpe"][1]
    # The text came from the configured dir, the BPE files from $KMATRIX_DATA.
    assert meta["inputs"]["tinyshakespeare/input.txt"]["path"] == str(
        text_dir / "tinyshakespeare" / "input.txt")

    encode, decode = data.load_tokenizer(out)
    assert encode("Hello world") == [15496, 995]
    assert encode("<|endoftext|>") == [50256]
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    test = np.fromfile(out / "test.bin", dtype=np.uint16)
    assert (train.size, val.size, test.size) == (meta["train_tokens"], meta["val_tokens"],
                                                 meta["test_tokens"])
    assert train.size < int(len(text) * 0.9)  # BPE, not characters
    assert 50256 not in test  # the literal marker at the very end is text
    assert decode(train) + decode(val) + decode(test) == text
    assert decode(test) == text[int(len(text) * 0.95):]
    assert decode(train) == text[: int(len(text) * 0.9)]


def test_bpe_load_does_not_touch_tiktoken_cache(text_dir, tmp_path, gpt2_files, monkeypatch):
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    data._gpt2_encoding.cache_clear()
    out = data.prepare("shakespeare", str(text_dir), tmp_path / "out", 0.9)
    assert data.load_tokenizer(out)[0]("Hello world") == [15496, 995]
    assert list(cache.iterdir()) == []
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(cache)


@pytest.fixture
def prepared(text_dir, tmp_path):
    return data.prepare("shakespeare-char", str(text_dir), tmp_path / "out", 0.9)


def test_batches_shapes_and_shift(prepared):
    batches = data.Batches(prepared, block_size=16, batch_size=5, device="cpu", seed=1)
    train = np.fromfile(prepared / "train.bin", dtype=np.uint16).astype(np.int64)
    assert batches.train_tokens == train.size
    assert batches.val_tokens == data.read_meta(prepared)["val_tokens"]
    for split in ("train", "val"):
        x, y = batches.get(split)
        assert x.shape == y.shape == (5, 16)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
    x, y = batches.get("train")
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        starts = [i for i in range(train.size - 16) if np.array_equal(train[i:i + 16], row_x)]
        assert any(np.array_equal(train[i + 1:i + 17], row_y) for i in starts)
    with pytest.raises(data.DataError, match="split"):
        batches.get("test")


def test_batches_same_seed_same_batches(prepared):
    a = data.Batches(prepared, block_size=8, batch_size=4, seed=7)
    b = data.Batches(prepared, block_size=8, batch_size=4, seed=7)
    c = data.Batches(prepared, block_size=8, batch_size=4, seed=8)
    xs_a = [a.get("train")[0] for _ in range(5)]
    xs_b = [b.get("train")[0] for _ in range(5)]
    xs_c = [c.get("train")[0] for _ in range(5)]
    assert all(torch.equal(p, q) for p, q in zip(xs_a, xs_b))
    assert not all(torch.equal(p, q) for p, q in zip(xs_a, xs_c))


def test_val_sampling_does_not_shift_train_batches(prepared):
    a = data.Batches(prepared, block_size=8, batch_size=4, seed=3)
    b = data.Batches(prepared, block_size=8, batch_size=4, seed=3)
    for _ in range(3):
        b.get("val")
    assert torch.equal(a.get("train")[0], b.get("train")[0])


def test_batches_state_dict_resumes_exact_sequence(prepared, tmp_path):
    run = data.Batches(prepared, block_size=8, batch_size=4, seed=0)
    for _ in range(3):
        run.get("train")
        run.get("val")
    state = run.state_dict()
    assert all(t.dtype == torch.uint8 for t in state.values())
    torch.save(state, tmp_path / "ckpt.pt")
    expected = [run.get(s) for s in ("train", "val", "train", "train")]

    resumed = data.Batches(prepared, block_size=8, batch_size=4, seed=123)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    got = [resumed.get(s) for s in ("train", "val", "train", "train")]
    for (ex, ey), (gx, gy) in zip(expected, got):
        assert torch.equal(ex, gx) and torch.equal(ey, gy)


def test_batches_block_too_large(prepared):
    val_tokens = data.read_meta(prepared)["val_tokens"]
    data.Batches(prepared, block_size=val_tokens - 1, batch_size=2).get("val")
    with pytest.raises(data.DataError, match="val split"):
        data.Batches(prepared, block_size=val_tokens, batch_size=2)


def test_cli_prepares_what_the_config_selects(text_dir, tmp_path, capsys):
    from lib import config as cfglib

    config = tmp_path / "config"
    cfglib.write_config(cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default", [
        f"DATA_DIR={text_dir}", f"RESULTS_DIR={tmp_path / 'res'}", "TRAIN_SPLIT=0.8",
        "BLOCK_SIZE=16"]), config)
    assert data.main([str(config)]) == 0
    out = tmp_path / "res" / "_data" / "shakespeare-char-split0.8-test0.05"
    assert str(out) in capsys.readouterr().out
    assert data.read_meta(out)["train_tokens"] == int(len(TEXT) * 0.8)
    # every split must hold one BLOCK_SIZE window and its target: said at preparation
    assert data.main([str(config), "--set", "BLOCK_SIZE=64"]) == 2
    assert "test split" in capsys.readouterr().err  # 60 characters, fewer than 65
    assert data.main([str(config), "--set", f"DATA_DIR={tmp_path / 'nowhere'}"]) == 2
    assert "KMATRIX_DATA" in capsys.readouterr().err


# ------------------------------------------------------------ evaluation windows

def test_eval_windows_read_each_token_at_most_once_and_never_past_the_split(prepared):
    n = data.read_meta(prepared)["val_tokens"]
    val = np.fromfile(prepared / "val.bin", dtype=np.uint16).astype(np.int64)
    whole = data.EvalWindows(prepared, "val", block_size=16, batch_size=5)
    assert len(whole) == (n - 1) // 16 and whole.tokens == len(whole) * 16
    ys = [y for _, y in whole]
    assert [len(y) for y in ys[:-1]] == [5] * (len(ys) - 1) and 1 <= len(ys[-1]) <= 5
    xs = torch.cat([x for x, _ in whole]).reshape(-1)
    assert torch.equal(xs, torch.from_numpy(val[:whole.tokens]))  # contiguous, no overlap
    assert torch.equal(torch.cat(ys).reshape(-1), torch.from_numpy(val[1:whole.tokens + 1]))
    # a cap far above what the split holds reads the split once, not the cap
    capped = data.EvalWindows(prepared, "val", block_size=16, batch_size=5, max_windows=10**6)
    assert len(capped) == len(whole)


def test_eval_windows_below_the_split_spread_evenly_and_repeat_exactly(prepared):
    a = data.EvalWindows(prepared, "train", block_size=8, batch_size=4, max_windows=6)
    b = data.EvalWindows(prepared, "train", block_size=8, batch_size=4, max_windows=6)
    available = (data.read_meta(prepared)["train_tokens"] - 1) // 8
    assert len(a) == 6 and a.starts[0] == 0 and a.starts[-1] == (available - 1) * 8
    assert len(set(a.starts.tolist())) == 6
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first, second = list(a), list(a)  # the same windows at every evaluation
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, second))
    with pytest.raises(data.DataError, match="block_size"):
        data.EvalWindows(prepared, "val", block_size=data.read_meta(prepared)["val_tokens"],
                         batch_size=2)


def test_split_sizes_count_without_writing(text_dir, tmp_path):
    sizes = data.split_sizes("shakespeare-char", str(text_dir), tmp_path / "out", 0.9)
    assert not (tmp_path / "out").exists()
    meta = data.read_meta(data.prepare("shakespeare-char", str(text_dir), tmp_path / "out", 0.9))
    assert sizes == {s: meta[f"{s}_tokens"] for s in ("train", "val", "test")}
