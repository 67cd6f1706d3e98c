"""Benchmark the training step of a .config under every optimizer (or a chosen few).

  python -m scripts.bench [.config] [--steps N] [--optimizers adamw,lion] [--set NAME=VALUE]

Builds the real trainer for each variant (same data, model, precision, compile and
pruning as `make` would) and times its training step after a warm-up. Prints, per
optimizer: ms per step, tokens/s, optimizer-state bytes and the ratios to AdamW, and
peak CUDA memory where there is a GPU. Figures, not pass/fail: speed goals live here,
never in unit tests.
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


def time_steps(trainer: Trainer, warmup: int, steps: int) -> float:
    """Seconds per training step, synchronised with the device."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.train_step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync()
    return (time.perf_counter() - start) / steps


def bench(config, overrides, names, warmup, steps) -> list:
    rows = []
    log = logging.getLogger("kmatrix.bench")
    for name in names:
        cfg = cfglib.load(config, [*overrides, f"OPTIMIZER={name}"])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, RunDir(tmp), log)
            trainer.forward = trainer.model
            if trainer.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(trainer.device)
            seconds = time_steps(trainer, warmup, steps)
            rows.append({
                "optimizer": name,
                "ms_per_step": seconds * 1e3,
                "tokens_per_s": trainer.tokens_per_iter / seconds,
                "state_bytes": optim.state_bytes(trainer.optimizer),
                "peak_cuda_bytes": (torch.cuda.max_memory_allocated(trainer.device)
                                    if trainer.device.type == "cuda" else None),
            })
    return rows


def print_table(rows) -> None:
    base = next((r for r in rows if r["optimizer"] == "adamw"), rows[0])
    print(f"{'optimizer':<12} {'ms/step':>9} {'tokens/s':>10} {'x speed':>8} "
          f"{'state MiB':>10} {'x state':>8} {'peak CUDA MiB':>14}")
    for r in rows:
        peak = f"{r['peak_cuda_bytes'] / 2**20:14.1f}" if r["peak_cuda_bytes"] else f"{'n/a':>14}"
        print(f"{r['optimizer']:<12} {r['ms_per_step']:9.2f} {r['tokens_per_s']:10.0f} "
              f"{base['ms_per_step'] / r['ms_per_step']:8.2f} {r['state_bytes'] / 2**20:10.2f} "
              f"{r['state_bytes'] / max(base['state_bytes'], 1):8.2f} {peak}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--optimizers", default=",".join(optim.OPTIMIZERS),
                        help="comma-separated OPTIMIZER names (default: all)")
    parser.add_argument("--warmup", type=int, default=5)
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
