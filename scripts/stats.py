"""Statistics of the matrix report: pure functions over numbers, no I/O, no plotting.

Cells of one seed share their initialisation and data order, so two methods are compared
seed by seed (paired), never as two independent samples. Every function returns plain
dicts and floats; where no test can be made it says why in `test` instead of a p-value.
"""
import math

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
WILCOXON_MIN_PAIRS = 6  # below this the signed-rank test cannot reach p < 0.05 two-sided
RELATIVE_ZERO = 1e-12  # differences whose sd is this small next to the values are all equal
NO_TEST_N1 = "n=1: no test"
NO_TEST_ZERO_VAR = "identical differences: no test"
NO_INTERVAL_N1 = "n=1: no interval"
NO_DIFFERENCE = "no difference measured"


def pair_by_seed(a: dict, b: dict) -> tuple:
    """The seeds both {seed: value} maps hold with finite values, sorted, and the two
    value arrays in that order."""
    seeds = sorted(s for s in set(a) & set(b)
                   if math.isfinite(float(a[s])) and math.isfinite(float(b[s])))
    return seeds, np.array([a[s] for s in seeds], float), np.array([b[s] for s in seeds], float)


def paired(a: dict, b: dict, confidence: float = CONFIDENCE) -> dict:
    """a - b over the seeds both hold ({seed: value} each): n pairs, mean difference, its
    confidence interval from the t distribution, the paired t-test's t, df and two-sided p,
    Wilcoxon's signed-rank p where n >= WILCOXON_MIN_PAIRS, and Cohen's d_z (mean / sd of
    the differences). `test` names the test made, or why none was."""
    seeds, x, y = pair_by_seed(a, b)
    d = x - y
    out = {"n": len(d), "seeds": seeds, "mean_diff": float(d.mean()) if len(d) else math.nan,
           "sd_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "t": math.nan,
           "df": math.nan, "p": math.nan, "p_wilcoxon": math.nan, "d_z": math.nan,
           "test": NO_TEST_N1 if len(d) <= 1 else "paired t"}
    if len(d) == 0:
        out["test"] = "no pairs: no test"
    if len(d) <= 1:
        return out
    sd = float(d.std(ddof=1))
    out["sd_diff"] = sd
    if sd <= RELATIVE_ZERO * max(np.abs(x).max(), np.abs(y).max()):  # rounding, not spread
        out.update(sd_diff=0.0, test=NO_TEST_ZERO_VAR)
        return out
    n = len(d)
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    result = sps.ttest_rel(x, y)
    out.update(ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half,
               t=float(result.statistic), df=n - 1, p=float(result.pvalue),
               d_z=out["mean_diff"] / sd)
    if n >= WILCOXON_MIN_PAIRS and np.any(d != 0):
        out["p_wilcoxon"] = float(sps.wilcoxon(x, y).pvalue)
    return out


def holm(pvalues) -> list:
    """Holm's step-down adjustment of a family of p-values (NaN entries are not tests:
    they stay NaN and do not count towards the family size)."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def mark(p_adjusted: float, test: str) -> str:
    """** p < 0.01, * p < 0.05, ns otherwise; without a p-value, why there is none."""
    if p_adjusted is None or math.isnan(p_adjusted):
        return test
    return "**" if p_adjusted < 0.01 else "*" if p_adjusted < 0.05 else "ns"


def time_to_target(evals: list, target: float, compile_s: float = 0.0):
    """The first evaluation whose val_loss <= target, as {iter, tokens, seconds} (seconds:
    elapsed_s minus compile_s), or None when no evaluation reached it. `evals` are eval
    records ({iter, tokens, elapsed_s, val_loss}) in any order."""
    for record in sorted(evals, key=lambda r: r["iter"]):
        loss = record.get("val_loss")
        if loss is not None and math.isfinite(loss) and loss <= target:
            elapsed = record.get("elapsed_s")
            seconds = elapsed - (compile_s or 0.0) if elapsed is not None else math.nan
            return {"iter": record["iter"], "tokens": record.get("tokens", math.nan),
                    "seconds": seconds}
    return None


def median_spread(values) -> dict:
    """Median of the finite values and their spread, the range (min to max): with a handful
    of seeds the range hides nothing a quantile would."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if len(v) == 0:
        return {"n": 0, "median": math.nan, "low": math.nan, "high": math.nan,
                "spread": "range"}
    return {"n": len(v), "median": float(np.median(v)), "low": float(v.min()),
            "high": float(v.max()), "spread": "range"}


def ratio(a: dict, b: dict, confidence: float = CONFIDENCE) -> dict:
    """a / b paired by seed ({seed: positive value} each): the geometric mean of the
    per-seed ratios with a t interval on their logarithms, the range of the ratios, and
    a decision: NO_DIFFERENCE when the interval includes 1, else "above 1" or "below 1"."""
    seeds, x, y = pair_by_seed(a, b)
    keep = (x > 0) & (y > 0)
    r = x[keep] / y[keep]
    out = {"n": len(r), "ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "low": math.nan, "high": math.nan, "decision": NO_INTERVAL_N1}
    if len(r) == 0:
        out["decision"] = "no pairs"
        return out
    logs = np.log(r)
    out.update(ratio=float(np.exp(logs.mean())), low=float(r.min()), high=float(r.max()))
    if len(r) < 2:
        return out
    sd = float(logs.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, len(r) - 1)) * sd / math.sqrt(len(r))
    low, high = math.exp(logs.mean() - half), math.exp(logs.mean() + half)
    out.update(ci_low=low, ci_high=high,
               decision=NO_DIFFERENCE if low <= 1.0 <= high else
               ("above 1" if low > 1.0 else "below 1"))
    return out


def performance_profile(times: dict, taus) -> dict:
    """AlgoPerf performance profiles. `times` is {workload: {method: time}} (inf or NaN:
    never reached). For each method, at each tau: the fraction of workloads on which its
    time is within a factor tau of the fastest method's. Returns {method: [fraction per
    tau]}."""
    methods = sorted({m for per in times.values() for m in per})
    taus = list(taus)
    hits = {m: np.zeros(len(taus)) for m in methods}
    for per in times.values():
        finite = [t for t in per.values() if t is not None and math.isfinite(t) and t > 0]
        if not finite:
            continue
        best = min(finite)
        for m in methods:
            t = per.get(m)
            if t is None or not math.isfinite(t) or t <= 0:
                continue
            hits[m] += np.array([t / best <= tau for tau in taus], float)
    n = max(1, len(times))
    return {m: (hits[m] / n).tolist() for m in methods}
