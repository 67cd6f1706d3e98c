"""Preparation of a document corpus: documents are cut into segments, tokenized in worker
processes, drawn into train or val, cut at the token budget and written in shards.

Every shard is a pure function of the documents before it, so the output is the same
byte for byte whatever the number of workers, and a preparation killed at any point
resumes after its last recorded shard (progress.json, rewritten atomically after each)
and ends with the files an uninterrupted run writes. Memory stays bounded by the shard
size plus the tasks in flight, not by the corpus.
"""
import hashlib
import json
import multiprocessing
import os
import re
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

import gpt2.data.splitting as splitting
import gpt2.data.staging as staging
from gpt2.data.errors import DataError
from gpt2.data.shards import META_FORMAT, SPLITS, file_intact, read_meta, write_shard
from gpt2.data.tokenizers import TokenizerSpec, encoder
from lib import faults
from lib.fsutil import atomic_write_json

# Segments are the unit of the train/val draw and of parallel work. Documents up to this
# many characters are one segment; longer ones are cut where tokenization cannot change.
SEGMENT_CHARS = 1 << 16
TASK_CHARS = 1 << 20        # text per worker task
TASK_SEGMENTS = 4096
PROGRESS = "progress.json"
VOCAB = "vocab.json"
# Just before a space or newline that follows a non-space: no GPT-2 pre-tokenizer piece
# spans such a point, so BPE of the two sides concatenated is BPE of the whole.
_SAFE_CUT = re.compile(r"(?<=\S)[ \n]")
_MASK64 = (1 << 64) - 1


def segments(text: str, size: int = SEGMENT_CHARS) -> list:
    """`text` cut into pieces of at least `size` characters (the last may be shorter),
    each cut at the first safe point after `size` characters."""
    pieces, start = [], 0
    while len(text) - start > size:
        match = _SAFE_CUT.search(text, start + size)
        if match is None:
            break
        pieces.append(text[start:match.start()])
        start = match.start()
    pieces.append(text[start:])
    return pieces


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of x."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def drawn_split(seed: int, doc: int, seg: int, train_split: float,
                test_fraction: float = 0.0) -> str:
    """train, val or test for segment `seg` of document `doc`: a fixed function of the
    numbers, so it does not depend on batching, workers or resumption. One number u per
    segment: test when u >= 1 - test_fraction, else train when u < train_split, else val;
    so the training split does not depend on test_fraction."""
    u = _mix(_mix(_mix(seed) ^ doc) ^ seg) / 2.0**64
    if u >= 1.0 - test_fraction:
        return "test"
    return "train" if u < train_split else "val"


# ------------------------------------------------------------ parallel tokenization

_WORKER_ENCODER = None


def _init_worker(spec: TokenizerSpec) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder(spec)


def _encode_task(items: list) -> list:
    """[(text, end of document)] -> token arrays, the end-of-text token after each
    document's last segment when the tokenizer has one."""
    enc, out = _WORKER_ENCODER, []
    for text, last in items:
        tokens = enc.encode(text)
        if last and enc.eot is not None:
            tokens = np.append(tokens, np.array([enc.eot], dtype=tokens.dtype))
        out.append(tokens)
    return out


def _tasks(records):
    """Group (doc, seg, text, last) records into worker tasks of about TASK_CHARS."""
    batch, chars = [], 0
    for record in records:
        batch.append(record)
        chars += len(record[2])
        if chars >= TASK_CHARS or len(batch) >= TASK_SEGMENTS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class Tokenizers:
    """Tokenize tasks in order, in `workers` processes (1: in this process), with at
    most two tasks per worker in flight so a streamed corpus is never read far ahead."""

    def __init__(self, spec: TokenizerSpec, workers: int):
        self.spec, self.workers = spec, workers
        self.pool = None
        if workers > 1:
            # spawn: a fork of a process with threads (tqdm, datasets) can deadlock.
            self.pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(spec,))

    def map(self, tasks):
        """(task, token arrays) for each task, in order."""
        if self.pool is None:
            _init_worker(self.spec)
            for task in tasks:
                yield task, _encode_task([(r[2], r[3]) for r in task])
            return
        pending = deque()
        for task in tasks:
            pending.append((task, self.pool.submit(_encode_task, [(r[2], r[3]) for r in task])))
            if len(pending) >= 2 * self.workers:
                task, future = pending.popleft()
                yield task, future.result()
        while pending:
            task, future = pending.popleft()
            yield task, future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def worker_count(requested: int) -> int:
    """DATA_WORKERS, 0 meaning every CPU this process may run on."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------- the writer

def _records(stream, start_doc: int, start_seg: int):
    """(doc, seg, text, last segment of its document) from (start_doc, start_seg) on,
    and the stream's document count (None when unknown)."""
    texts, total = stream.open(start_doc)

    def generate():
        for doc, text in enumerate(texts, start=start_doc):
            pieces = segments(text)
            first = start_seg if doc == start_doc else 0
            for seg in range(first, len(pieces)):
                yield doc, seg, pieces[seg], seg == len(pieces) - 1
    return generate(), total


class ShardWriter:
    """Writes the streams of a corpus into <out_dir>/{train,val}-NNNNN.bin, one unit of
    about `shard_tokens` tokens (both splits together) at a time, recording each in
    progress.json; resumes from it."""

    def __init__(self, out_dir: Path, key: str, tok: TokenizerSpec, spec, bar=None,
                 edges=None):
        self.out_dir, self.key, self.tok, self.spec = Path(out_dir), key, tok, spec
        self.bar = bar
        self.edges = edges  # {stream index: (end of train, start of test)}: cut by position
        self.progress = self._load_progress()

    # -- progress ----------------------------------------------------------
    def _load_progress(self) -> dict:
        fresh = {"key": self.key, "units": [], "finished_streams": 0}
        try:
            progress = json.loads((self.out_dir / PROGRESS).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            progress = fresh
        if progress.get("key") != self.key:
            progress = fresh
        kept = []
        for unit in progress["units"]:
            if not all(file_intact(self.out_dir / name, entry)
                       for name, entry in unit["files"].items()):
                break
            kept.append(unit)
        if len(kept) < len(progress["units"]):
            progress["finished_streams"] = kept[-1]["stream"] if kept else 0
        progress["units"] = kept
        # Shards written but not recorded (killed in between), and temporary files.
        recorded = {name for unit in kept for name in unit["files"]}
        for path in self.out_dir.iterdir():
            if (path.suffix == ".bin" and path.name not in recorded) or path.name.endswith(".tmp"):
                path.unlink()
        return progress

    def _save_progress(self) -> None:
        atomic_write_json(self.out_dir / PROGRESS, self.progress)

    def tokens_done(self) -> int:
        return sum(sum(unit["tokens"].values()) for unit in self.progress["units"])

    # -- writing -------------------------------------------------------------
    def _flush(self, stream_index: int, buffers: dict, position: tuple, stream_tokens: int):
        unit_index = len(self.progress["units"])
        files, tokens = {}, {}
        for split in SPLITS:
            tokens[split] = int(sum(a.size for a in buffers[split]))
            if tokens[split]:
                name = f"{split}-{unit_index:05d}.bin"
                files[name] = write_shard(self.out_dir / name,
                                          np.concatenate(buffers[split]).astype(self.tok.dtype))
            buffers[split].clear()
        self.progress["units"].append({
            "stream": stream_index, "next_doc": position[0], "next_seg": position[1],
            "stream_tokens": stream_tokens, "tokens": tokens, "files": files})
        self._save_progress()
        faults.point("shard", unit_index)

    def write_stream(self, stream_index: int, stream, tokenizers: Tokenizers) -> None:
        spec = self.spec
        previous = [u for u in self.progress["units"] if u["stream"] == stream_index]
        doc, seg, stream_tokens = ((previous[-1]["next_doc"], previous[-1]["next_seg"],
                                    previous[-1]["stream_tokens"]) if previous else (0, 0, 0))
        budget = spec.max_tokens or None
        fractions = spec.draw_fractions()
        buffers, buffered = {s: [] for s in SPLITS}, 0
        position = (doc, seg)
        if budget is None or stream_tokens < budget:
            records, total_docs = _records(stream, doc, seg)
            for task, arrays in tokenizers.map(_tasks(records)):
                for (d, s, _, last), tokens in zip(task, arrays):
                    if budget is not None and stream_tokens + tokens.size > budget:
                        tokens = tokens[:budget - stream_tokens]
                    for split, piece in self._route(stream_index, stream, (d, s), tokens,
                                                    stream_tokens, fractions):
                        buffers[split].append(piece)
                    buffered += tokens.size
                    stream_tokens += tokens.size
                    position = (d + 1, 0) if last else (d, s + 1)
                    if self.bar is not None:
                        self.bar.update(tokens.size)
                        if budget is None and total_docs:
                            self.bar.total = int(self.bar.n / max(position[0], 1) * total_docs)
                    if budget is not None and stream_tokens >= budget:
                        break
                    if buffered >= spec.shard_tokens:
                        self._flush(stream_index, buffers, position, stream_tokens)
                        buffered = 0
                else:
                    continue
                break
        if buffered:
            self._flush(stream_index, buffers, position, stream_tokens)
        self.progress["finished_streams"] = stream_index + 1
        self._save_progress()

    def _route(self, index: int, stream, where: tuple, tokens, position: int, fractions):
        if stream.split:
            return [(stream.split, tokens)]
        if self.edges is None:
            return [(drawn_split(self.spec.split_seed, *where, *fractions), tokens)]
        return splitting.cut_by_position(tokens, position, self.edges[index])

    def drawn_totals(self, corpus) -> dict:
        """{index of a drawn stream: its tokens}, from the recorded units."""
        totals = {i: 0 for i, stream in enumerate(corpus.streams) if stream.split is None}
        for unit in self.progress["units"]:
            if unit["stream"] in totals:
                totals[unit["stream"]] = unit["stream_tokens"]
        return totals

    def write(self, corpus) -> dict:
        """Write every stream not finished yet; {split: [{file, tokens}]} and files."""
        start = self.progress["finished_streams"]
        if start < len(corpus.streams):
            tokenizers = Tokenizers(self.tok, worker_count(self.spec.workers))
            try:
                for i in range(start, len(corpus.streams)):
                    self.write_stream(i, corpus.streams[i], tokenizers)
            finally:
                tokenizers.close()
        splits, files = {s: [] for s in SPLITS}, {}
        for unit in self.progress["units"]:
            for name, entry in unit["files"].items():
                split = name.split("-")[0]
                tokens = entry["bytes"] // self.tok.dtype.itemsize
                splits[split].append({"file": name, "tokens": tokens})
                files[name] = entry
        return {"splits": splits, "files": files}


# ----------------------------------------------------------------- vocabulary pass

def char_vocab(corpus, spec) -> str:
    """The sorted distinct characters of the text the preparation will tokenize (the
    same segments and the same budget cut: one character is one token)."""
    seen = set()
    for stream in corpus.streams:
        count = 0
        records, _ = _records(stream, 0, 0)
        for _, _, text, _ in records:
            if spec.max_tokens and count + len(text) >= spec.max_tokens:
                seen.update(text[:spec.max_tokens - count])
                break
            seen.update(text)
            count += len(text)
    return "".join(sorted(seen))


# --------------------------------------------------------------------- preparation

def corpus_key(spec, corpus) -> str:
    """Everything that decides the bytes written: a change starts the preparation over."""
    identity = {"format": META_FORMAT, "spec": spec.identity(), "inputs": corpus.inputs,
                "segment_chars": SEGMENT_CHARS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def is_prepared(out_dir: Path, key: str) -> bool:
    try:
        meta = read_meta(out_dir)
        return meta.get("format") == META_FORMAT and meta.get("key") == key and all(
            file_intact(out_dir / name, entry) for name, entry in meta["files"].items())
    except (DataError, KeyError, TypeError):
        return False


def _tokenizer_spec(spec, corpus, out_dir: Path, key: str) -> TokenizerSpec:
    if spec.tokenizer == "gpt2":
        from gpt2.data.tokenizers import gpt2_files
        return TokenizerSpec("gpt2", bpe_files=tuple(map(str, gpt2_files(spec.data_dir))))
    path = out_dir / VOCAB
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return TokenizerSpec("char", vocab=saved["vocab"])
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        pass
    vocab = char_vocab(corpus, spec)
    atomic_write_json(path, {"key": key, "vocab": vocab})
    return TokenizerSpec("char", vocab=vocab)


def prepare(spec, corpus, out_dir: Path) -> Path:
    """Prepare `corpus` into out_dir unless it is already up to date: written in its
    partial directory (resuming what an interrupted run left there), renamed at the end."""
    key = corpus_key(spec, corpus)
    if is_prepared(out_dir, key):
        return out_dir
    final = out_dir
    with staging.locked(final, wait=False):
        if is_prepared(final, key):  # finished by another process meanwhile
            return final
        out_dir = staging.resumable_partial(final)  # where everything below writes
        tok = _tokenizer_spec(spec, corpus, out_dir, key)
        budget = spec.max_tokens * len(corpus.streams) if spec.max_tokens else None
        with tqdm(total=budget, unit="tok", unit_scale=True, mininterval=1.0, delay=1.0,
                  desc=f"preparing {out_dir.name}", dynamic_ncols=True) as bar:
            writer = ShardWriter(out_dir, key, tok, spec, bar)
            bar.update(writer.tokens_done())
            written = writer.write(corpus)
            counts = {s: sum(e["tokens"] for e in written["splits"][s]) for s in SPLITS}
            split_mode, short = "draw", splitting.starved(spec, counts)
            if short:
                splitting.say(corpus.label, short, counts)
                edges = {i: splitting.bounds(spec, n)
                         for i, n in writer.drawn_totals(corpus).items()}
                bar.reset(total=budget)
                writer = ShardWriter(out_dir, key + "-stream", tok, spec, bar, edges)
                written, split_mode = writer.write(corpus), "stream"
        counts = {s: sum(e["tokens"] for e in written["splits"][s]) for s in SPLITS}
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            raise DataError(
                f"The {' and '.join(empty)} split of {corpus.label} is empty ("
                + ", ".join(f"{counts[s]:,} {s}" for s in SPLITS) + " tokens): "
                + ("; ".join(f"{spec.split_knob(s)} names a split that holds no text"
                             if spec.named(s) else f"raise {spec.split_knob(s)}" for s in empty)
                   + ", set DATA_MAX_TOKENS higher or to 0 (the whole corpus), or name the "
                     "split (HF_VAL_SPLIT/HF_TEST_SPLIT, TEXT_FILES_VAL_PATH/"
                     "TEXT_FILES_TEST_PATH)"))
        meta = {
            "format": META_FORMAT, "key": key, "dataset": spec.dataset,
            "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "dtype": tok.dtype.name,
            "train_split": spec.train_split, "test_fraction": spec.test_fraction,
            "split_mode": split_mode,
            **{f"{s}_tokens": counts[s] for s in SPLITS}, "splits": written["splits"],
            "files": written["files"],
            "inputs": corpus.inputs, "spec": spec.identity(),
        }
        if tok.kind == "char":
            meta["vocab"] = tok.vocab
        else:
            meta["eot_token"] = tok.eot
        atomic_write_json(out_dir / "meta.json", meta)
        (out_dir / PROGRESS).unlink(missing_ok=True)
        (out_dir / VOCAB).unlink(missing_ok=True)
        (out_dir / ".lock").unlink(missing_ok=True)  # the lock of in-place preparations
        staging.publish(out_dir, final)
    return final
