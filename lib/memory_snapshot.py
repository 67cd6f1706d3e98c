"""MEMORY_SNAPSHOT_ITERS: the CUDA allocator's history over the first N training
iterations, written as <run>/memory_snapshot.pickle (view it at pytorch.org/memory_viz)."""
from pathlib import Path

import torch

from lib.fsutil import atomic_open

SNAPSHOT_NAME = "memory_snapshot.pickle"
MAX_ENTRIES = 100_000  # allocator events kept; enough for a few steps of GPT-2 124M


class MemorySnapshot:
    """start() before the first step, after_step(iteration) after each; a no-op for 0."""

    def __init__(self, iters: int, device: torch.device, run_dir):
        self.iters, self.device, self.path = iters, device, Path(run_dir) / SNAPSHOT_NAME
        self.recording = False

    def start(self, iteration: int, log) -> None:
        if self.iters and self.device.type != "cuda":
            log.warning(f"CONFIG_MEMORY_SNAPSHOT_ITERS={self.iters} ignored: memory snapshots "
                        f"record the CUDA allocator and this run is on {self.device.type}; no "
                        f"{SNAPSHOT_NAME} is written")
        elif self.iters and iteration < self.iters:
            torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES)
            self.recording = True

    def after_step(self, iteration: int) -> None:
        if self.recording and iteration >= self.iters:
            with atomic_open(self.path, "wb") as f:  # the dumper writes by name: f.name
                torch.cuda.memory._dump_snapshot(f.name)
            torch.cuda.memory._record_memory_history(enabled=None)
            self.recording = False
