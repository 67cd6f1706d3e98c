"""make bench: the training step of a fixed list of configurations, or of the current one.

  python -m scripts.bench [.config] [--list cpu|gpu|current|DIR] [--compare DIR] [--rounds N]
  python -m scripts.bench [.config] --optimizers adamw/foreach,adamw,lion [--steps N]

A list is a directory of defconfig fragments (benchmarks/cpu, benchmarks/gpu): `_base`
on top of defconfigs/default, then each other file, in name order, on top of that. By
default the list of the device .config would train on (gpu with CUDA, else cpu);
"current" is .config itself. The configurations are timed in --rounds interleaved rounds
(A B C, A B C, ...), each run in its own process (clean peak memory and compile caches)
through the real trainer: BENCH_WARMUP_ITERS warm-up steps, reported apart as compile_s
(their time beyond as many steady steps), then BENCH_TIMED_ITERS steps timed one by one.
Written to results/bench/<date>-<device>/bench.md and bench.csv, per configuration: the
median over the rounds of each round's median ms per iteration and the rounds' range,
tokens/s, MFU (model FLOPs per token 6N + 12 L H Q T over the device's peak from
lib/devices.py; "n/a" for a device not in the table, the CPU included), peak memory (CUDA
max allocated, or the process's peak RSS on the CPU), compile_s, and the speed relative to
the first row: the median of the per-round ratios, its interval, and "no difference
measured" where the interval holds 1 (scripts/bench_stats.py). --compare puts an earlier
bench directory's tokens/s beside.

--optimizers times the step and the optimizer step alone of .config under each
optimizer, with state sizes (the earlier `make bench`). Figures, not pass/fail: speed
goals live here, never in unit tests.
"""
import argparse
import csv
import datetime
import io
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpt2.train import Trainer
from lib import config as cfglib
from lib import devices, optim, runtime
from lib.fsutil import atomic_write_text
from lib.run import RunDir, results_dir
from scripts import bench_fragments, bench_stats
from scripts.report_md import md_table

LISTS_DIR = cfglib.ROOT / "benchmarks"
BASE_FRAGMENT = "_base"
DEFAULT_CONFIG = cfglib.ROOT / "defconfigs" / "default"  # what every list builds on
CSV_COLUMNS = ["name", "description", "rounds", "ms_per_iter", "ms_min", "ms_max", "round_ms",
               "tokens_per_s", "mfu", "peak_mem_bytes", "peak_mem_kind", "compile_s",
               "speed_vs_first", "speed_lo", "speed_hi", "speed_coverage", "verdict",
               "tokens_per_iter", "flops_per_token", "device", "config_hash", "error"]
DEFAULT_ROUNDS = 3


BASELINE = "adamw/foreach"
DEFAULT_VARIANTS = [BASELINE, *optim.OPTIMIZERS, "adamwspam/foreach"]


def synchronizer(device):
    """A call that waits for the device's queued work (nothing to wait for on the CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _timed(fn, device, warmup: int, steps: int) -> float:
    """Seconds per call of fn, synchronised with the device."""
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def time_steps(trainer: Trainer, warmup: int, steps: int) -> float:
    """Seconds per training step."""
    return _timed(trainer.train_step, trainer.device, warmup, steps)


def time_optimizer_step(trainer: Trainer, warmup: int, steps: int) -> float:
    """Seconds per optimizer step (with gradient preparation) on one fixed set of gradients."""
    x, y = trainer.batches.get("train")
    _, loss = trainer.model(x, y)
    loss.backward()

    def step():
        optim.prepare_grads(trainer.optimizer)
        trainer.optimizer.step()
    return _timed(step, trainer.device, warmup, steps)


def variant_overrides(variant: str) -> list:
    """"adamw/foreach" -> OPTIMIZER=adamw, OPTIMIZER_IMPL=foreach."""
    name, _, impl = variant.partition("/")
    return [f"OPTIMIZER={name}"] + ([f"OPTIMIZER_IMPL={impl}"] if impl else [])


def bench(config, overrides, names, warmup, steps) -> list:
    rows = []
    log = logging.getLogger("kmatrix.bench")
    for name in names:
        cfg = cfglib.load(config, [*overrides, *variant_overrides(name)])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, RunDir(tmp), log)
            trainer.forward = trainer.model
            if trainer.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(trainer.device)
            seconds = time_steps(trainer, warmup, steps)
            optimizer_seconds = time_optimizer_step(trainer, warmup, steps)
            rows.append({
                "optimizer": name,
                "ms_per_step": seconds * 1e3,
                "optimizer_ms": optimizer_seconds * 1e3,
                "tokens_per_s": trainer.tokens_per_iter / seconds,
                "state_bytes": optim.state_bytes(trainer.optimizer),
                "peak_cuda_bytes": (torch.cuda.max_memory_allocated(trainer.device)
                                    if trainer.device.type == "cuda" else None),
            })
    return rows


def print_table(rows) -> None:
    """One line per variant; 'x step' and 'x opt' are time ratios to the baseline (foreach
    AdamW when benchmarked, else the first row): above 1 is slower."""
    base = next((r for r in rows if r["optimizer"] == BASELINE), rows[0])
    print(f"baseline: {base['optimizer']}")
    print(f"{'optimizer':<16} {'ms/step':>9} {'tokens/s':>10} {'x step':>7} {'opt ms':>8} "
          f"{'x opt':>7} {'state MiB':>10} {'x state':>8} {'peak CUDA MiB':>14}")
    for r in rows:
        peak = f"{r['peak_cuda_bytes'] / 2**20:14.1f}" if r["peak_cuda_bytes"] else f"{'n/a':>14}"
        print(f"{r['optimizer']:<16} {r['ms_per_step']:9.2f} {r['tokens_per_s']:10.0f} "
              f"{r['ms_per_step'] / base['ms_per_step']:7.2f} {r['optimizer_ms']:8.3f} "
              f"{r['optimizer_ms'] / base['optimizer_ms']:7.2f} {r['state_bytes'] / 2**20:10.2f} "
              f"{r['state_bytes'] / max(base['state_bytes'], 1):8.2f} {peak}")


# ------------------------------------------------------------------ the suite

def list_configs(list_dir, results, overrides=()) -> list:
    """[(name, description, overrides)] of a list directory, in name order: each fragment
    merged on top of defconfigs/default and `_base` (scripts/bench_fragments), then
    overrides and RESULTS_DIR."""
    list_dir = Path(list_dir)
    base = list_dir / BASE_FRAGMENT
    common = [base] if base.is_file() else []
    entries = sorted(p for p in list_dir.iterdir() if p.is_file() and p.name != BASE_FRAGMENT)
    if not entries:
        raise cfglib.ConfigError(f"{list_dir}: no benchmark fragments in it")
    last = [*overrides, f"RESULTS_DIR={results}"]
    named_last = {o.partition("=")[0].removeprefix("CONFIG_") for o in last}
    return [(p.name, cfglib.config_description(p),
             [a for a in bench_fragments.merge(DEFAULT_CONFIG, [*common, p])
              if a.partition("=")[0] not in named_last] + last)
            for p in entries]


def resolve_list(choice, config_path, overrides):
    """(base config, [(name, description, overrides)]) of --list."""
    cfg = cfglib.load(config_path, overrides)
    results = results_dir(cfg)
    if choice == "current":
        return config_path, [("current", cfg.RECIPE, list(overrides))]
    if choice is None:
        choice = "gpu" if runtime.pick_device(cfg.DEVICE).type == "cuda" else "cpu"
    list_dir = LISTS_DIR / choice if (LISTS_DIR / choice).is_dir() else Path(choice)
    if not list_dir.is_dir():
        raise cfglib.ConfigError(f"--list {choice}: neither a list in {LISTS_DIR} "
                                 f"({', '.join(sorted(p.name for p in LISTS_DIR.iterdir()))}) "
                                 f"nor a directory")
    return DEFAULT_CONFIG, list_configs(list_dir, results)


def measure(cfg) -> dict:
    """One configuration in this process: every step timed alone, the warm-up steps
    (compilation, caches) reported apart as compile_s, the median of the others."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunDir(tmp), logging.getLogger("kmatrix.bench"))
        device = trainer.device
        trainer.forward = runtime.maybe_compile(trainer.model, cfg.COMPILE, cfg.COMPILE_MODE,
                                                device, trainer.log, cfg.COMPILE_FULLGRAPH)
        sync = synchronizer(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        times = []
        for _ in range(cfg.BENCH_WARMUP_ITERS + cfg.BENCH_TIMED_ITERS):
            start = time.perf_counter()
            trainer.train_step()
            sync()
            times.append(time.perf_counter() - start)
        steady, compile_s = bench_stats.split_warmup(times, cfg.BENCH_WARMUP_ITERS)
        peak, kind = runtime.peak_memory(device)
        return {"ms_per_iter": statistics.median(steady) * 1e3, "compile_s": compile_s,
                "peak_mem_bytes": peak, "peak_mem_kind": kind,
                "tokens_per_iter": trainer.tokens_per_iter,
                "flops_per_token": trainer.model.flops_per_token(),
                "device": runtime.device_name(device), "config_hash": cfg.hash}


def run_row(base, overrides) -> dict:
    """measure() in a child process; {"error": ...} when it fails."""
    command = [sys.executable, "-m", "scripts.bench", str(base), "--row",
               *[a for o in overrides for a in ("--set", o)]]
    result = subprocess.run(command, cwd=cfglib.ROOT, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = [l for l in (result.stderr or result.stdout).strip().splitlines() if l.strip()]
    return {"error": (tail[-1] if tail else f"exit {result.returncode}")[:300]}


def combine_rounds(name, about, results) -> dict:
    """One row from a configuration's rounds: the median of the rounds' ms per iteration
    with their range, median compile_s, the largest peak; the first error if any round
    failed."""
    failed = next((r for r in results if r.get("error")), None)
    if failed is not None:
        return {"name": name, "description": about, "error": failed["error"]}
    ms = [r["ms_per_iter"] for r in results]
    spread = bench_stats.spread(ms)
    last = results[-1]
    return {**last, "name": name, "description": about, "rounds": len(ms),
            "ms_per_iter": spread["median"], "ms_min": spread["min"], "ms_max": spread["max"],
            "round_ms": " ".join(f"{m:.4g}" for m in ms),
            "tokens_per_s": last["tokens_per_iter"] / (spread["median"] / 1e3),
            "compile_s": statistics.median(r["compile_s"] for r in results),
            "peak_mem_bytes": max(r["peak_mem_bytes"] for r in results), "_ms": ms}


def with_speed(rows: list) -> list:
    """Speed relative to the first row that ran: the median of the per-round ratios
    (paired by round), its interval and the verdict ("no difference measured" when the
    interval holds 1)."""
    first = next((r for r in rows if r.get("_ms")), None)
    for r in rows:
        if not r.get("_ms"):
            continue
        ratios = bench_stats.paired_speed(first["_ms"], r["_ms"])
        lo, hi, coverage = bench_stats.median_interval(ratios)
        r.update(speed_vs_first=statistics.median(ratios), speed_lo=lo, speed_hi=hi,
                 speed_coverage=coverage,
                 verdict="baseline" if r is first else bench_stats.verdict(lo, hi))
    return rows


def with_mfu(rows: list, precision_of: dict) -> list:
    """MFU filled in (None for unknown devices)."""
    for r in rows:
        if not r.get("tokens_per_s"):
            r["mfu"] = None
            continue
        precision, tf32 = precision_of[r["name"]]
        peak = devices.peak_flops(r["device"], precision, tf32) if r["device"] != "cpu" else None
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / peak if peak else None
    return rows


def read_csv(directory) -> dict:
    path = Path(directory) / "bench.csv"
    if not path.is_file():
        raise cfglib.ConfigError(f"--compare {directory}: no bench.csv in it")
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def _fmt(value, spec, missing="n/a"):
    return format(value, spec) if isinstance(value, (int, float)) else missing


def _cells(r, width, compare) -> list:
    """One row of bench.md's table, formatted."""
    if r.get("error"):
        return [r["name"], "failed: " + r["error"]] + [""] * (width - 2)
    cells = [r["name"], _fmt(r["ms_per_iter"], ".2f"),
             f"{_fmt(r['ms_min'], '.2f')}-{_fmt(r['ms_max'], '.2f')}",
             _fmt(r["tokens_per_s"], ",.0f"), _fmt(r["mfu"], ".1%"),
             _fmt(r["peak_mem_bytes"] / 2**20, ",.0f"), _fmt(r["compile_s"], ".1f"),
             _fmt(r["speed_vs_first"], ".2f"),
             f"{_fmt(r['speed_lo'], '.2f')}-{_fmt(r['speed_hi'], '.2f')}", r["verdict"]]
    if compare is not None:
        then = compare.get(r["name"], {}).get("tokens_per_s")
        then = float(then) if then else None
        change = r["tokens_per_s"] / then - 1 if then else None
        cells += [_fmt(then, ",.0f"), _fmt(change, "+.1%")]
    return cells


def markdown(rows, device, when, compare=None) -> str:
    rounds = next((r["rounds"] for r in rows if r.get("rounds")), 0)
    coverage = next((r["speed_coverage"] for r in rows if r.get("speed_coverage")), None)
    lines = [f"# make bench: {device}, {when}", "",
             f"{rounds} interleaved rounds (every configuration once per round, in its own "
             "process). ms/iter: the median over the rounds of each round's median step "
             "time; range: the rounds' min-max. Warm-up steps are not timed as training: "
             "compile s is what they took beyond as many steady steps (median over the "
             "rounds). x first: the median of the per-round speed ratios to the first row "
             "(paired by round, above 1 is faster); interval: the order-statistic interval "
             f"of that median (coverage {_fmt(coverage, '.0%')}); \"no difference measured\" "
             "where it holds 1. MFU = tokens/s x (6N + 12 L H Q T) / the device's dense peak "
             "(n/a: device not in lib/devices.py)", ""]
    head = ["configuration", "ms/iter", "range", "tokens/s", "MFU", "peak memory MiB",
            "compile s", "x first", "interval", "verdict"]
    if compare is not None:
        head += ["then tokens/s", "change"]
    lines += md_table(head, [_cells(r, len(head), compare) for r in rows])
    lines += ["Configurations:", ""] + [f"- {r['name']}: {r['description']}" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(rows, out_dir, compare=None) -> Path:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in CSV_COLUMNS})
    atomic_write_text(out_dir / "bench.csv", out.getvalue())
    device = next((r["device"] for r in rows if r.get("device")), "unknown")
    text = markdown(rows, device, out_dir.name.split("-")[0], compare)
    atomic_write_text(out_dir / "bench.md", text)
    return out_dir


def time_rounds(base, runnable: dict, rounds: int) -> dict:
    """{name: [run_row result per round]}, the configurations timed in interleaved rounds."""
    from tqdm import tqdm
    with tqdm(total=rounds * len(runnable), desc="bench", unit="run", disable=None) as bar:
        def run(name):
            bar.update()
            return run_row(base, runnable[name])
        return bench_stats.run_interleaved(list(runnable), rounds, run)


def suite(config_path, overrides, list_choice=None, compare_dir=None,
          rounds=DEFAULT_ROUNDS) -> Path:
    base, entries = resolve_list(list_choice, config_path, overrides)
    compare = read_csv(compare_dir) if compare_dir else None
    runnable, bad, precision_of = {}, {}, {}
    for name, about, row_overrides in entries:
        try:
            cfg = cfglib.load(base, row_overrides)
        except cfglib.ConfigError as e:
            bad[name] = [{"error": str(e).splitlines()[0]}]
            continue
        precision_of[name] = (cfg.PRECISION, cfg.TF32)
        runnable[name] = row_overrides
    results = {**bad, **time_rounds(base, runnable, rounds)}
    rows = [combine_rounds(name, about, results[name]) for name, about, _ in entries]
    with_speed(with_mfu(rows, precision_of))
    device = next((r["device"] for r in rows if r.get("device")), None)
    if device is None:
        device = runtime.device_name(runtime.pick_device(cfglib.load(config_path, overrides).DEVICE))
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    out_dir = results_dir(cfglib.load(config_path, overrides)) / "bench" / (
        f"{stamp}-{devices.slug(device)}")
    write_results(rows, out_dir, compare)
    print((out_dir / "bench.md").read_text())
    print(f"written: {out_dir / 'bench.md'}, {out_dir / 'bench.csv'}")
    return out_dir


def rounds_arg(text: str) -> int:
    """--rounds: an integer of at least 2 (an interval needs two rounds)."""
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of rounds, at least 2 "
                                         "(an interval needs two)")
    return int(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--list", help="cpu, gpu, current, or a directory of fragments "
                                       "(default: the list of .config's device)")
    parser.add_argument("--compare", metavar="DIR", help="an earlier results/bench/... directory")
    parser.add_argument("--rounds", type=rounds_arg, default=DEFAULT_ROUNDS,
                        help="the list: interleaved rounds, every configuration once per round "
                             f"(default {DEFAULT_ROUNDS}; 5 for a 94%% interval)")
    parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--optimizers", help="comma-separated OPTIMIZER[/OPTIMIZER_IMPL] names: "
                        f"time .config under each (e.g. {BASELINE},{','.join(optim.OPTIMIZERS)})")
    parser.add_argument("--warmup", type=int, default=30,
                        help="with --optimizers: untimed steps first (past SPAM_CLIP_DELAY, so "
                             "that compiling the fused SPAM clip is not timed)")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    config = args.config or cfglib.default_config_path()
    try:
        if args.row:
            print(json.dumps(measure(cfglib.load(config, args.set))))
        elif args.optimizers:
            print_table(bench(config, args.set, args.optimizers.split(","), args.warmup,
                              args.steps))
        else:
            suite(config, args.set, args.list, args.compare, args.rounds)
    except cfglib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
