"""make bench's arithmetic, apart from any timing: the interleaved order of the rounds, the
warm-up split off the steady steps, medians with their spread, and the interval that decides
whether a speed ratio differs from 1.

A speed verdict compares configurations timed in the same rounds (A B C, A B C, ...), so
that a slow spell of a loaded machine hits every configuration of a round alike. The ratio
of a configuration to the baseline is taken per round (paired by round) and its median gets
the distribution-free order-statistic interval (the sign test's): with n rounds,
[x_(k), x_(n+1-k)] of the sorted ratios covers the median of the ratio's distribution with
probability 1 - 2 P(Binomial(n, 1/2) <= k - 1); with k = 1, [min, max], 1 - 2^(1-n)."""
import math
import statistics

# The coverage the ratio interval aims at; with fewer rounds than reach it (5 for 90%), the
# interval is the whole range of the per-round ratios and says its own, lower, coverage.
TARGET_COVERAGE = 0.90
NO_DIFFERENCE = "no difference measured"


def interleaved(names, rounds: int) -> list:
    """[(round, name)] in timing order: every name once per round, rounds one after another."""
    return [(r, name) for r in range(rounds) for name in names]


def run_interleaved(names, rounds: int, run) -> dict:
    """{name: [run(name) of each round]} called in interleaved order. A name whose result
    has an "error" is not run again (its list holds that one result)."""
    results = {name: [] for name in names}
    for _, name in interleaved(names, rounds):
        done = results[name]
        if not (done and done[-1].get("error")):
            done.append(run(name))
    return results


def split_warmup(step_seconds, warmup: int) -> tuple:
    """(steady step times, compile_s) of one process's step times in order: the first
    `warmup` steps are warm-up (compilation, caches), never timed as training; compile_s is
    what they took beyond as many steady steps (the median steady step)."""
    if len(step_seconds) <= warmup:
        raise ValueError(f"{len(step_seconds)} step times leave no steady step after "
                         f"{warmup} warm-up steps")
    head, steady = list(step_seconds[:warmup]), list(step_seconds[warmup:])
    return steady, sum(head) - warmup * statistics.median(steady)


def spread(values) -> dict:
    """The median and the range (min, max) of values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _binom_cdf_half(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def median_interval(values, target: float = TARGET_COVERAGE) -> tuple:
    """(lo, hi, coverage): the narrowest order-statistic interval of the median whose
    coverage reaches target, or [min, max] with its coverage when none does."""
    x, n = sorted(values), len(values)
    if n < 2:
        raise ValueError("an interval needs at least 2 values")
    best = 1
    for k in range(2, n // 2 + 1):
        if 1 - 2 * _binom_cdf_half(k - 1, n) >= target:
            best = k
    return x[best - 1], x[n - best], 1 - 2 * _binom_cdf_half(best - 1, n)


def paired_speed(base_seconds, seconds) -> list:
    """Per-round speed relative to the base (base time / time: above 1 is faster), paired
    by round."""
    if len(base_seconds) != len(seconds):
        raise ValueError(f"rounds differ: {len(base_seconds)} and {len(seconds)}")
    return [b / s for b, s in zip(base_seconds, seconds)]


def verdict(lo: float, hi: float) -> str:
    """What an interval of a speed ratio says."""
    if lo <= 1 <= hi:
        return NO_DIFFERENCE
    return "faster" if lo > 1 else "slower"
