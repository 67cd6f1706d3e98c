"""Time data preparation: python -m scripts.bench_data [--mb 50] [--workers 0] [--shard-tokens N]

Builds a local corpus of at least --mb MB of text (the shared tiny Shakespeare repeated,
one .txt file per copy) in a temporary directory, then measures, each in a fresh process:
the text-files preparation (tokens/s, peak RSS of the main process, of the largest worker
and of all together) and a single-process tiktoken loop over the same files (encode_ordinary plus the
end-of-text token per file: the same tokens). Nothing is written outside the temporary
directory.
"""
import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def build_corpus(directory: Path, megabytes: float, data_dir: str) -> list:
    from gpt2.data.inputs import TEXT_FILE, find_input

    text = find_input(TEXT_FILE, data_dir).read_text(encoding="utf-8")
    copies = -(-int(megabytes * 1e6) // len(text.encode()))
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(copies):
        path = directory / f"part-{i:04d}.txt"
        path.write_text(text, encoding="utf-8")
        files.append(path)
    return files


def _rss_mb(pid) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class WorkerMemory:
    """Samples the RSS of this process's children (the tokenizer workers) every 0.2 s:
    ru_maxrss cannot tell, as a spawned child inherits its parent's high-water mark."""

    def __init__(self):
        self.peak_one = self.peak_all = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        me = os.getpid()
        while not self.done.wait(0.2):
            sizes = [_rss_mb(c) for c in _children(me)]
            if sizes:
                self.peak_one = max(self.peak_one, max(sizes))
                self.peak_all = max(self.peak_all, sum(sizes) + _rss_mb(me))

    def stop(self):
        self.done.set()
        self.thread.join()


def measure_prepare(corpus: str, out: str, workers: int, shard_tokens: int, data_dir: str) -> dict:
    from gpt2 import data

    # `datasets` and the torch it imports on first use: one-off costs, not preparation.
    for module in ("datasets", "torch"):
        importlib.import_module(module)
    imports_mb = _rss_mb(os.getpid())
    spec = data.DataSpec("text-files", data_dir, text_files=corpus, workers=workers,
                         shard_tokens=shard_tokens)
    memory = WorkerMemory()
    start = time.perf_counter()
    prepared = data.prepare_spec(spec, out)
    seconds = time.perf_counter() - start
    memory.stop()
    meta = data.read_meta(prepared)
    return {"tokens": meta["train_tokens"] + meta["val_tokens"], "seconds": seconds,
            "shards": len(meta["files"]), "workers": data.pipeline.worker_count(workers),
            "imports_rss_mb": imports_mb, "peak_worker_rss_mb": memory.peak_one,
            "peak_total_rss_mb": memory.peak_all}


def measure_reference(corpus: str, data_dir: str) -> dict:
    from gpt2.data.tokenizers import GPT2_EOT, _gpt2_encoding, gpt2_files

    enc = _gpt2_encoding(*map(str, gpt2_files(data_dir)))
    start = time.perf_counter()
    tokens = 0
    for path in sorted(Path(corpus).glob("*.txt")):
        tokens += len(enc.encode_ordinary(path.read_text(encoding="utf-8")) + [GPT2_EOT])
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "workers": 1}


def _child(args) -> None:
    if args.measure == "prepare":
        result = measure_prepare(args.corpus, args.out, args.workers, args.shard_tokens,
                                 args.data_dir)
    else:
        result = measure_reference(args.corpus, args.data_dir)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _run(what: str, args, corpus: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "scripts.bench_data", "--measure", what, "--corpus", str(corpus),
           "--out", str(out), "--workers", str(args.workers), "--shard-tokens",
           str(args.shard_tokens), "--data-dir", args.data_dir]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (default 50)")
    parser.add_argument("--workers", type=int, default=0, help="DATA_WORKERS (0: every CPU)")
    parser.add_argument("--shard-tokens", type=int, default=10_000_000)
    parser.add_argument("--data-dir", default="", help="DATA_DIR for the inputs")
    parser.add_argument("--measure", choices=("prepare", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        _child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="kmatrix-bench-data-") as tmp:
        corpus = Path(tmp) / "corpus"
        files = build_corpus(corpus, args.mb, args.data_dir)
        size = sum(p.stat().st_size for p in files)
        print(f"corpus: {len(files)} files, {size / 1e6:.1f} MB ({corpus})")
        results = {what: _run(what, args, corpus, Path(tmp) / "out")
                   for what in ("reference", "prepare")}
    if results["prepare"]["tokens"] != results["reference"]["tokens"]:
        print(f"error: the preparation wrote {results['prepare']['tokens']:,} tokens, the "
              f"reference {results['reference']['tokens']:,}", file=sys.stderr)
        return 1
    for what, r in results.items():
        label = ("single-process tiktoken loop" if what == "reference"
                 else f"text-files preparation, {r['workers']} workers, {r['shards']} shards")
        print(f"{label}: {r['tokens']:,} tokens in {r['seconds']:.1f} s = "
              f"{r['tokens'] / r['seconds'] / 1e6:.2f}M tokens/s; "
              f"peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f" ({r['imports_rss_mb']:.0f} MB after imports)" if what == "prepare" else "")
              + (f", largest worker {r['peak_worker_rss_mb']:.0f} MB, all processes at most "
                 f"{r['peak_total_rss_mb']:.0f} MB" if what == "prepare" and r["workers"] > 1
                 else ""))
    ratio = (results["prepare"]["tokens"] / results["prepare"]["seconds"]) / (
        results["reference"]["tokens"] / results["reference"]["seconds"])
    print(f"preparation / reference: {ratio:.2f}x (preparation includes reading, the train/val "
          f"draw and writing the shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
