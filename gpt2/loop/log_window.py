"""The log window: the steps between two train records. Their losses are summed on the
device (no host sync per step); the window's end takes the one sync, the mean over the
processes, and writes the train record to metrics.jsonl. The window in progress is saved
with the checkpoint (state_dict), so a resumed run logs the same train_loss."""
import math
import time

import torch

from gpt2.loop import TrainingFailed
from lib import runtime


class LogWindow:
    """The steps since the last train record: their summed loss, how many they are and
    the training time at the window's start."""

    def __init__(self, interval: int, ranks, device, tokens_per_iter: int, lr_symbol: str):
        self.interval, self.ranks, self.device = interval, ranks, device
        self.tokens_per_iter, self.lr_symbol = tokens_per_iter, lr_symbol
        self.start_s = 0.0
        self.load_state_dict({"loss_sum": 0.0, "iters": 0})

    def state_dict(self) -> dict:
        """Plain numbers; the loss sum is the mean over the processes, so every rank calls
        this."""
        return {"loss_sum": self.ranks.mean(self.loss_sum).item() if self.iters else 0.0,
                "iters": self.iters}

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum = torch.full((), state["loss_sum"], device=self.device)
        self.iters = state["iters"]

    def begin(self, train_time_s: float) -> None:
        """A session starts its first window's clock at the training time it resumes at."""
        self.start_s = train_time_s

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.iters += 1

    def due(self, iteration: int, last: bool) -> bool:
        return iteration % self.interval == 0 or last

    def close(self, p, clock, metrics, lr: float, grad_norm: torch.Tensor,
              stats: dict) -> tuple:
        """End the window at iteration p.iter: sync, count the sync's time into p and the
        step clock, write the train record (the last step's lr and grad_norm, then `stats`)
        and start the next window. Returns (train_loss, tokens_per_s); raises
        TrainingFailed on a non-finite loss."""
        t0 = time.perf_counter()
        train_loss = self.ranks.mean(self.loss_sum / self.iters).item()  # the one sync
        sync_s = time.perf_counter() - t0
        p.train_time_s += sync_s
        clock.window_end(sync_s)
        p.compile_s, p.steady_step_s = clock.compile_s(), clock.steady_step_s()
        if not math.isfinite(train_loss):
            raise TrainingFailed(f"non-finite training loss ({train_loss}) at iteration "
                                 f"{p.iter}; lower {self.lr_symbol} or use GRAD_CLIP")
        tokens_per_s = self.iters * self.tokens_per_iter / max(p.train_time_s - self.start_s,
                                                               1e-9)
        peak, peak_kind = runtime.peak_memory(self.device)
        metrics.write({"kind": "train", "iter": p.iter, "tokens": p.tokens_seen,
                       "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm.item(),
                       "tokens_per_s": tokens_per_s, "elapsed_s": p.train_time_s,
                       "peak_mem_bytes": peak, "peak_mem_kind": peak_kind, **stats})
        self.loss_sum.zero_()
        self.iters, self.start_s = 0, p.train_time_s
        return train_loss, tokens_per_s


def saved_state(state: dict) -> tuple:
    """(progress, log window state) of a checkpoint. One written before the log window had
    its own entry kept the window in progress, as window_loss_sum and window_iters."""
    progress = dict(state["progress"])
    legacy = {"loss_sum": progress.pop("window_loss_sum", 0.0),
              "iters": progress.pop("window_iters", 0)}
    return progress, state.get("log_window", legacy)
