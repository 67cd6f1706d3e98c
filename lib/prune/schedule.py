"""Sparsity schedules: how much of the prunable weights is zero at progress p."""

SCHEDULES = ("cubic", "linear")


def sparsity_at(schedule: str, target: float, progress: float) -> float:
    """Sparsity at `progress` p (clamped to [0, 1]) of a schedule that reaches `target` at p = 1.

    cubic (Zhu & Gupta 2017): target * (1 - (1 - p)^3); linear: target * p.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "cubic":
        return target * (1.0 - (1.0 - p) ** 3)
    if schedule == "linear":
        return target * p
    raise ValueError(f"unknown pruning schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
