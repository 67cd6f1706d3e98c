"""Early stopping of tuning trials: synchronous successive halving (the rungs of ASHA,
Li et al. 2020, with each rung's decision taken once every trial of the group reached it,
so that it is the same on every machine whatever order the cells finish in).

Pure functions: the rungs of a budget, and from the validation losses recorded so far the
trials still running, those stopped (at which rung) and what is left to run."""
import math
from dataclasses import dataclass, field

from lib.config import ConfigError

KNOBS = "MATRIX_ASHA_ETA, MATRIX_ASHA_MIN_ITERS, EVAL_INTERVAL and the budget (MAX_ITERS ...)"


def rungs(total_iters, eval_interval: int, eta: int, min_iters: int) -> list:
    """Iterations at which trials are compared, ascending, the last the whole budget:
    total / eta^k for k = K..1 (K the largest with total / eta^K >= min_iters), each
    rounded to the nearest multiple of eval_interval so that it has a validation loss."""
    if total_iters is None:
        raise ConfigError("MATRIX_EARLY_STOP=asha needs a budget in iterations, epochs or "
                          "tokens (BUDGET=minutes has no rungs); set another BUDGET or "
                          "MATRIX_EARLY_STOP=off")
    depth = 0
    while total_iters / eta ** (depth + 1) >= min_iters:
        depth += 1
    if depth == 0:
        raise ConfigError(f"MATRIX_EARLY_STOP=asha: no rung fits: {total_iters} iterations / "
                          f"MATRIX_ASHA_ETA={eta} is below MATRIX_ASHA_MIN_ITERS={min_iters}; "
                          f"lower MATRIX_ASHA_MIN_ITERS or MATRIX_ASHA_ETA, or set "
                          f"MATRIX_EARLY_STOP=off")
    exact = [total_iters / eta ** k for k in range(depth, 0, -1)]
    aligned = [round(r / eval_interval) * eval_interval for r in exact]
    if (any(r <= 0 or r >= total_iters for r in aligned)
            or len(set(aligned)) != len(aligned)):
        raise ConfigError(f"MATRIX_EARLY_STOP=asha: the rungs at {', '.join(f'{r:.0f}' for r in exact)} "
                          f"of {total_iters} iterations cannot be aligned to EVAL_INTERVAL="
                          f"{eval_interval} (they become {aligned}); lower EVAL_INTERVAL or "
                          f"change {KNOBS}")
    return aligned + [total_iters]


def survivors(losses: dict, eta: int) -> list:
    """The keys of the best max(1, floor(n / eta)) of n finite losses (lowest first; ties
    by key); a trial without a finite loss (failed, diverged) never goes on."""
    finite = {k: v for k, v in losses.items() if v is not None and math.isfinite(v)}
    keep = max(1, len(losses) // eta)
    return sorted(finite, key=lambda k: (finite[k], k))[:keep]


@dataclass
class Plan:
    """Where a group of trials stands."""
    rung: int = None            # the rung being run (None: every decision is taken)
    to_run: list = field(default_factory=list)   # trials still to reach it
    stopped: dict = field(default_factory=dict)  # trial -> the rung it stopped at
    finished: list = field(default_factory=list)  # trials that reached the last rung


def plan(trials: list, losses: dict, n_rungs: int, eta: int, failed=()) -> Plan:
    """Replay the decisions from `losses` ({(trial, rung index): val loss}); a trial in
    `failed` counts as an infinite loss where it has none."""
    alive, stopped = list(trials), {}
    for k in range(n_rungs):
        missing = [t for t in alive if (t, k) not in losses and t not in failed]
        if missing:
            return Plan(k, missing, stopped)
        at_rung = {t: losses.get((t, k), math.inf) for t in alive}
        if k == n_rungs - 1:
            return Plan(None, [], stopped, [t for t in alive if math.isfinite(at_rung[t])])
        keep = survivors(at_rung, eta)
        stopped.update({t: k for t in alive if t not in keep and t not in failed})
        alive = keep
    return Plan(None, [], stopped, [])
