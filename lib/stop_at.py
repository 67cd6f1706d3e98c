"""Stopping at an absolute iteration (`python -m gpt2.train --stop-at N`), the way the
matrix's tuning pauses a trial at a rung, and says in the summary when a trial is
stopped for good by early stopping (`--early-stop-rung K`)."""
from dataclasses import dataclass

from lib.config import ConfigError


@dataclass(frozen=True)
class StopAt:
    iter: int = None  # stop when training reaches this iteration (None: the budget's end)
    rung: int = None  # the ASHA rung this stop is final at (None: a pause, resumable)

    def __post_init__(self):
        if self.rung is not None and self.iter is None:
            raise ConfigError("--early-stop-rung needs --stop-at N, the iteration the trial "
                              "stops at")
        if self.iter is not None and self.iter < 0:
            raise ConfigError(f"--stop-at {self.iter}: expected an iteration >= 0")

    def steps(self, now: int, stop_after):
        """At most how many steps this session trains: --stop-after's and --stop-at's
        limit, whichever comes first (None: no limit)."""
        if self.iter is None:
            return stop_after
        left = max(0, self.iter - now)
        return left if stop_after is None else min(left, stop_after)

    def summary(self, status: str, iters: int) -> dict:
        """Fields a stopped run's summary.json adds: `early_stop` {"iter", "rung"} and the
        reason in words, when this stop is early stopping's final one."""
        if status != "stopped" or self.rung is None:
            return {}
        return {"early_stop": {"iter": iters, "rung": self.rung},
                "stop_reason": f"stopped early at iteration {iters} (ASHA rung {self.rung})"}
