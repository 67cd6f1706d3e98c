"""Sparsity schedules: how much of the prunable weights is zero at progress p, and when a
pruner's mask updates fall in a budget of known length."""
import math
from dataclasses import dataclass

# A progress this close to 1 counts as 1 (budget fractions are floats).
PROGRESS_EPS = 1e-9

SCHEDULES = {
    # Zhu & Gupta 2017: fast start, gentle near the target.
    "cubic": lambda p: 1.0 - (1.0 - p) ** 3,
    # The AdamWPrune code's ramp: slow start, most pruning near the end.
    "cubic-slow-start": lambda p: p ** 3,
    "linear": lambda p: p,
}


def sparsity_at(schedule: str, target: float, progress: float) -> float:
    """Sparsity at `progress` p (clamped to [0, 1]) of a schedule that reaches `target` at p = 1.

    cubic (Zhu & Gupta 2017): target * (1 - (1 - p)^3); cubic-slow-start (AdamWPrune's
    code): target * p^3; linear: target * p.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pruning schedule {schedule!r}; choose one of "
                         f"{', '.join(SCHEDULES)}")
    p = min(max(float(progress), 0.0), 1.0)
    return target * SCHEDULES[schedule](p)


def ramp_progress(budget_fraction: float, start_fraction, end: float) -> float:
    """Schedule progress in [0, 1] at a budget fraction, for a ramp whose first update
    fell at start_fraction (None: not yet, progress 0) and that ends at `end`."""
    if start_fraction is None:
        return 0.0
    span = end - start_fraction
    if span <= 0:
        return 1.0
    p = (float(budget_fraction) - start_fraction) / span
    if p >= 1.0 - PROGRESS_EPS:
        return 1.0
    return max(p, 0.0)


@dataclass(frozen=True)
class Plan:
    """Where a pruner's schedule falls in a budget of `total_iters` iterations (the
    budget fraction after iteration i being i / total_iters)."""
    total_iters: int
    first_update: int = None     # iteration of the first mask update (None: never)
    target_reached: int = None   # iteration at which sparsity reaches the target (None: never)

    @property
    def full_share(self) -> float:
        """Share of the iterations trained after the target is reached."""
        if self.target_reached is None:
            return 0.0
        return (self.total_iters - self.target_reached) / self.total_iters


def plan(start: int, end: float, total_iters: int) -> Plan:
    """The Plan of a pruner with first update at iteration `start` and the target at the
    budget fraction `end` (the rules of Pruner.after_step, without running them)."""
    total = int(total_iters)
    first = max(int(start), 1)
    if first > total:
        return Plan(total)
    start_fraction = first / total

    def reached(i):
        return ramp_progress(min(1.0, i / total), start_fraction, end) >= 1.0

    # The first i >= first with progress 1: near end * total; step past float rounding.
    i = max(first, math.ceil(end * total) - 1)
    while i > first and reached(i - 1):
        i -= 1
    while i <= total and not reached(i):
        i += 1
    return Plan(total, first, i if i <= total else None)
