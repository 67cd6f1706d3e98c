"""Compilation and warm-up apart from training speed.

The first WARMUP_STEPS steps of every session (process) hold torch.compile's
compilation, the allocator's growth and other one-off costs. Their time, less
WARMUP_STEPS times the session's median steady step time, is the session's compile_s;
a run's compile_s is the sum over its sessions, and steady_train_time_s =
train_time_s - compile_s. The steady step time is the median over the log windows that
start after the warm-up (each ends with the window's device sync, so it counts the
device's time); a session with no such window uses the per-step times after the
warm-up, else the median an earlier session measured, else counts no compile time.
"""
import statistics

import torch

WARMUP_STEPS = 3


class StepClock:
    """One session's warm-up and steady step times; compile_s() adds the earlier
    sessions' `prior_compile_s`."""

    def __init__(self, device, prior_compile_s: float = 0.0, prior_steady_step_s=None):
        self.device = torch.device(device)
        self.prior_compile_s, self.prior_steady = prior_compile_s, prior_steady_step_s
        self.steps, self.warm_s = 0, 0.0
        self.window_s, self.window_steps = 0.0, 0
        self.windows, self.step_times = [], []

    def step(self, seconds: float) -> float:
        """Count one step of `seconds`; after the last warm-up step, wait for the device
        (once a session) and return the wait, which the caller adds to training time."""
        self.steps += 1
        if self.steps > WARMUP_STEPS:
            self.window_s += seconds
            self.window_steps += 1
            self.step_times.append(seconds)
            return 0.0
        self.warm_s += seconds
        if self.steps < WARMUP_STEPS:
            return 0.0
        wait = _sync(self.device)
        self.warm_s += wait
        self.window_s, self.window_steps = 0.0, 0
        return wait

    def window_end(self, sync_seconds: float) -> None:
        """A log window ended with a device sync of `sync_seconds`."""
        if self.steps <= WARMUP_STEPS:
            self.warm_s += sync_seconds
        elif self.window_steps:
            self.windows.append((self.window_s + sync_seconds) / self.window_steps)
        self.window_s, self.window_steps = 0.0, 0

    def steady_step_s(self):
        if self.windows:
            return statistics.median(self.windows)
        if self.step_times:
            return statistics.median(self.step_times)
        return self.prior_steady

    def compile_s(self) -> float:
        steady = self.steady_step_s()
        if steady is None:
            return self.prior_compile_s
        warm_steps = min(self.steps, WARMUP_STEPS)
        return self.prior_compile_s + max(0.0, self.warm_s - warm_steps * steady)


def _sync(device: torch.device) -> float:
    import time

    if device.type != "cuda":
        return 0.0
    t0 = time.perf_counter()
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0
