"""Benchmark the training step of a .config under every optimizer (or a chosen few).

  python -m scripts.bench [.config] [--steps N] [--optimizers adamw,adamw/foreach,lion] [--set NAME=VALUE]

Builds the real trainer for each variant (same data, model, precision, compile and
pruning as `make` would; NAME/IMPL selects OPTIMIZER_IMPL too) and times, after a
warm-up, its whole training step and its optimizer step alone (the step on fixed
gradients, SPAM's gradient preparation included). Prints, per variant: ms per
training step, tokens/s, ms per optimizer step, optimizer-state bytes, and the ratios
to foreach AdamW (the baseline SPAM's speed goal is stated against), and peak CUDA
memory where there is a GPU. Figures, not pass/fail: speed goals live here, never in
unit tests.
"""
import argparse
import logging
import sys
import tempfile
import time

import torch

from gpt2.train import Trainer
from lib import config as cfglib
from lib import optim
from lib.run import RunDir


BASELINE = "adamw/foreach"
DEFAULT_VARIANTS = [BASELINE, *optim.OPTIMIZERS, "adamwspam/foreach"]


def _timed(fn, device, warmup: int, steps: int) -> float:
    """Seconds per call of fn, synchronised with the device."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--optimizers", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated OPTIMIZER[/OPTIMIZER_IMPL] names (default: "
                             f"{BASELINE} and every optimizer)")
    parser.add_argument("--warmup", type=int, default=30,
                        help="untimed steps first (past SPAM_CLIP_DELAY, so that compiling the "
                             "fused SPAM clip is not timed)")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        rows = bench(args.config, args.set, args.optimizers.split(","), args.warmup, args.steps)
    except cfglib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
