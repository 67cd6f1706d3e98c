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


SCHEDULES = {"cosine": cosine, "constant": constant}


def learning_rate(it: int, progress: float, *, schedule: str, lr: float, min_lr: float,
                  warmup_iters: int) -> float:
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    shape = SCHEDULES[schedule](min(max(progress, 0.0), 1.0))
    return min_lr + shape * (lr - min_lr)
