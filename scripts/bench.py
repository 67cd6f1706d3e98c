"""make bench: the training step of a fixed list of configurations, or of the current one.

  python -m scripts.bench [.config] [--list cpu|gpu|current|DIR] [--compare DIR]
  python -m scripts.bench [.config] --optimizers adamw/foreach,adamw,lion [--steps N]

A list is a directory of defconfig fragments (benchmarks/cpu, benchmarks/gpu): `_base`
on top of defconfigs/default, then each other file, in name order, on top of that. By
default the list of the device .config would train on (gpu with CUDA, else cpu);
"current" is .config itself. Each configuration runs in its own process (clean peak
memory and compile caches) through the real trainer: BENCH_WARMUP_ITERS untimed steps,
then BENCH_TIMED_ITERS steps timed one by one. Written to
results/bench/<date>-<device>/bench.md and bench.csv, per configuration: median ms per
iteration, tokens/s, MFU (model FLOPs per token 6N + 12 L H Q T over the device's peak
from lib/devices.py; "n/a" for a device not in the table, the CPU included), peak memory
(CUDA max allocated, or the process's peak RSS on the CPU), and speed relative to the
first row. --compare puts an earlier bench directory's tokens/s beside.

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

LISTS_DIR = cfglib.ROOT / "benchmarks"
BASE_FRAGMENT = "_base"
CSV_COLUMNS = ["name", "description", "ms_per_iter", "tokens_per_s", "mfu", "peak_mem_bytes",
               "peak_mem_kind", "speed_vs_first", "tokens_per_iter", "flops_per_token",
               "device", "config_hash", "error"]


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

def fragment_overrides(path) -> list:
    """NAME=VALUE assignments of a defconfig fragment ("# CONFIG_X is not set" is X=n)."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out.append(f"{line[len('# CONFIG_'):-len(' is not set')]}=n")
        elif line.startswith("CONFIG_"):
            name, _, value = line[len("CONFIG_"):].partition("=")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.append(f"{name}={value}")
    return out


def list_configs(list_dir, results, overrides=()) -> list:
    """[(name, description, overrides)] of a list directory, in name order."""
    list_dir = Path(list_dir)
    base = list_dir / BASE_FRAGMENT
    common = fragment_overrides(base) if base.is_file() else []
    entries = sorted(p for p in list_dir.iterdir() if p.is_file() and p.name != BASE_FRAGMENT)
    if not entries:
        raise cfglib.ConfigError(f"{list_dir}: no benchmark fragments in it")
    tree = cfglib.load_tree()
    return [(p.name, cfglib.config_description(p),
             merged(tree, [*common, *fragment_overrides(p), *overrides, f"RESULTS_DIR={results}"]))
            for p in entries]


def merged(tree, assignments) -> list:
    """NAME=VALUE assignments where a later one replaces an earlier one of the same symbol,
    or of the same choice (a fragment's PRECISION_FP32=y replaces the base's PRECISION_BF16=y)."""
    last = {}
    for assignment in assignments:
        name = assignment.partition("=")[0].strip().removeprefix("CONFIG_")
        sym = tree.syms.get(name)
        key = sym.choice.name if sym is not None and sym.choice is not None else name
        last.pop(key, None)
        last[key] = assignment
    return list(last.values())


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
    return cfglib.ROOT / "defconfigs" / "default", list_configs(list_dir, results)


def measure(cfg) -> dict:
    """One configuration in this process: the trainer's step, warmed up, then timed."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunDir(tmp), logging.getLogger("kmatrix.bench"))
        device = trainer.device
        trainer.forward = runtime.maybe_compile(trainer.model, cfg.COMPILE, cfg.COMPILE_MODE,
                                                device, trainer.log, cfg.COMPILE_FULLGRAPH)
        sync = synchronizer(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(cfg.BENCH_WARMUP_ITERS):
            trainer.train_step()
        sync()
        times = []
        for _ in range(cfg.BENCH_TIMED_ITERS):
            start = time.perf_counter()
            trainer.train_step()
            sync()
            times.append(time.perf_counter() - start)
        peak, kind = runtime.peak_memory(device)
        seconds = statistics.median(times)
        return {"ms_per_iter": seconds * 1e3, "tokens_per_s": trainer.tokens_per_iter / seconds,
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


def with_mfu(rows: list, precision_of: dict) -> list:
    """MFU and speed relative to the first row, filled in (MFU None for unknown devices)."""
    first = next((r for r in rows if r.get("tokens_per_s")), None)
    for r in rows:
        if not r.get("tokens_per_s"):
            r.update(mfu=None, speed_vs_first=None)
            continue
        precision, tf32 = precision_of[r["name"]]
        peak = devices.peak_flops(r["device"], precision, tf32) if r["device"] != "cpu" else None
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / peak if peak else None
        r["speed_vs_first"] = r["tokens_per_s"] / first["tokens_per_s"]
    return rows


def read_csv(directory) -> dict:
    path = Path(directory) / "bench.csv"
    if not path.is_file():
        raise cfglib.ConfigError(f"--compare {directory}: no bench.csv in it")
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def _fmt(value, spec, missing="n/a"):
    return format(value, spec) if isinstance(value, (int, float)) else missing


def markdown(rows, device, when, compare=None) -> str:
    lines = [f"# make bench: {device}, {when}", "",
             "median ms per iteration over the timed iterations after the warm-up; MFU = "
             "tokens/s x (6N + 12 L H Q T) / the device's dense peak (n/a: device not in "
             "lib/devices.py); speed relative to the first row", ""]
    head = ["configuration", "ms/iter", "tokens/s", "MFU", "peak memory MiB", "x first"]
    if compare is not None:
        head += ["then tokens/s", "change"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("error"):
            cells = [r["name"], "failed: " + r["error"].replace("|", "/")] + [""] * (len(head) - 2)
        else:
            cells = [r["name"], _fmt(r["ms_per_iter"], ".2f"), _fmt(r["tokens_per_s"], ",.0f"),
                     _fmt(r["mfu"], ".1%"), _fmt(r["peak_mem_bytes"] / 2**20, ",.0f"),
                     _fmt(r["speed_vs_first"], ".2f")]
            if compare is not None:
                then = compare.get(r["name"], {}).get("tokens_per_s")
                then = float(then) if then else None
                cells += [_fmt(then, ",.0f"),
                          _fmt(r["tokens_per_s"] / then - 1 if then else None, "+.1%")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Configurations:", ""] + [f"- {r['name']}: {r['description']}" for r in rows]
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


def suite(config_path, overrides, list_choice=None, compare_dir=None) -> Path:
    base, entries = resolve_list(list_choice, config_path, overrides)
    compare = read_csv(compare_dir) if compare_dir else None
    rows, precision_of = [], {}
    from tqdm import tqdm
    for name, about, row_overrides in tqdm(entries, desc="bench", unit="config", disable=None):
        try:
            cfg = cfglib.load(base, row_overrides)
        except cfglib.ConfigError as e:
            rows.append({"name": name, "description": about, "error": str(e).splitlines()[0]})
            continue
        precision_of[name] = (cfg.PRECISION, cfg.TF32)
        rows.append({"name": name, "description": about, **run_row(base, row_overrides)})
    with_mfu(rows, precision_of)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--list", help="cpu, gpu, current, or a directory of fragments "
                                       "(default: the list of .config's device)")
    parser.add_argument("--compare", metavar="DIR", help="an earlier results/bench/... directory")
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
            suite(config, args.set, args.list, args.compare)
    except cfglib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
