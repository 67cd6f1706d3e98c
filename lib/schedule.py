"""Learning-rate schedules: linear warm-up, then a shape from LR_SCHEDULE.

A shape maps decay progress p in [0, 1] to a factor in [0, 1] between min_lr
(0) and the optimizer's peak rate lr (1). Progress is measured in iterations, or in time for
the minutes budget, by the training loop.
"""
import math


def cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(progress: float) -> float:
    return 1.0


# WSD_DECAY_SHAPE: the factor at q in [0, 1] of the decay phase.
WSD_SHAPES = {"linear": lambda q: 1.0 - q, "cosine": cosine, "sqrt": lambda q: 1.0 - math.sqrt(q)}


def wsd(progress: float, decay_fraction: float = 0.2, decay_shape: str = "linear") -> float:
    """Warmup-stable-decay: 1 until the last decay_fraction of the span, then decay_shape."""
    stable_end = 1.0 - decay_fraction
    if progress <= stable_end:
        return 1.0
    return WSD_SHAPES[decay_shape](min((progress - stable_end) / decay_fraction, 1.0))


SCHEDULES = {"cosine": cosine, "constant": constant, "wsd": wsd}


def schedule_options(cfg) -> dict:
    """The keyword arguments LR_SCHEDULE's shape takes from the Config (WSD's knobs)."""
    if cfg.LR_SCHEDULE == "wsd":
        return {"decay_fraction": cfg.WSD_DECAY_FRACTION, "decay_shape": cfg.WSD_DECAY_SHAPE}
    return {}


def learning_rate(it: int, progress: float, *, schedule: str, lr: float, min_lr: float,
                  warmup_iters: int, **options) -> float:
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    shape = SCHEDULES[schedule](min(max(progress, 0.0), 1.0), **options)
    return min_lr + shape * (lr - min_lr)
