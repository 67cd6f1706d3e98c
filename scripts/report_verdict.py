"""The report's numbers: per-setting aggregates, the learning-rate selection (on the
validation split), the paired verdict against the baseline (on the test split), speed over
seeds and time to a target validation loss. Pure pandas over report_load's frames; the
statistics themselves are scripts/stats.py's."""
import math
import re

import numpy as np
import pandas as pd

from scripts import stats

SETTING = ["optimizer", "method", "target_sparsity"]
VERDICT_COLUMNS = ["group", "target_sparsity", "learning_rate", "n", "mean", "std",
                   "baseline_mean", "n_pairs", "diff", "ci_low", "ci_high", "t", "df", "p",
                   "p_wilcoxon", "p_holm", "d_z", "test", "mark"]


def verdict_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The cells the verdict tables compare: every cell but tuning trials (role "trial")."""
    return df[df["role"] != "trial"] if "role" in df.columns else df


def aggregate(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (optimizer, method, target_sparsity, learning rate) of the done cells: n (cells
    with a finite metric), mean, std (ddof=1, NaN for one seed), {seed: value} and the
    values. A setting whose cells all lack the metric stays, with n 0."""
    done = df[df["status"] == "done"].copy()
    if done.empty:
        return pd.DataFrame(columns=["group", *SETTING, "learning_rate", "lr_multiplier", "n",
                                     "mean", "std", "seeds", "values"])
    done["value"] = done[metric].where(np.isfinite(done[metric].astype(float)))
    keys = [*SETTING, "learning_rate"]
    grouped = done.groupby(keys, sort=False, dropna=False)
    agg = grouped.agg(lr_multiplier=("lr_multiplier", "first"), n=("value", "count"),
                      mean=("value", "mean"), std=("value", "std")).reset_index()
    pairs = grouped[["seed", "value"]].apply(
        lambda g: {int(s): float(v) for s, v in zip(g["seed"], g["value"]) if pd.notna(v)})
    agg["seeds"] = pairs.tolist()
    agg["values"] = [list(s.values()) for s in agg["seeds"]]
    agg.insert(0, "group", agg["optimizer"] + "-" + agg["method"])
    return agg


def select_rates(val_agg: pd.DataFrame) -> pd.DataFrame:
    """val_agg (aggregate over val_ppl) with rates_tried and best_rate: per setting, the
    learning rate with the lowest mean validation perplexity (the selection split)."""
    if val_agg.empty:
        return val_agg.assign(rates_tried=[], best_rate=[])
    by_setting = val_agg.groupby(SETTING, sort=False)
    out = val_agg.assign(rates_tried=by_setting["mean"].transform("size"))
    valid = val_agg[val_agg["mean"].notna()]
    best = valid.groupby(SETTING, sort=False)["mean"].idxmin() if not valid.empty else []
    out["best_rate"] = out.index.isin(best) | (out["rates_tried"] == 1)
    return out


def at_best_rate(cells: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """The cells of each setting at its selected learning rate (all of them without a sweep)."""
    if selection.empty or (selection["rates_tried"] <= 1).all():
        return cells
    chosen = selection[selection["best_rate"].astype(bool)][[*SETTING, "learning_rate"]]
    return cells.merge(chosen, on=[*SETTING, "learning_rate"], how="inner")


def parse_baseline(baseline: str):
    match = re.fullmatch(r"(.+?)(?:-s([0-9.]+))?", baseline.strip())
    return match.group(1), (float(match.group(2)) if match.group(2) else None)


def baseline_rows(agg: pd.DataFrame, baseline: str) -> pd.DataFrame:
    name, sparsity = parse_baseline(baseline)
    base = agg[agg["group"] == name]
    if sparsity is not None:
        base = base[np.isclose(base["target_sparsity"], sparsity)]
    return base


def _baseline_for(base: pd.DataFrame, sparsity):
    same = base[np.isclose(base["target_sparsity"], sparsity)]
    return (same if not same.empty else base).iloc[0]


def verdict(agg: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every group against the baseline group (the same sparsity where the baseline has
    several), paired by seed: the mean difference with its 95% t interval, the paired t
    p, Wilcoxon's p (n >= 6 pairs), Holm's adjustment over the table's comparisons, d_z and
    the mark from the adjusted p. The baseline's own row has mark "baseline"."""
    base = baseline_rows(agg, baseline)
    if base.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    rows = []
    for row in agg.itertuples():
        b = _baseline_for(base, row.target_sparsity)
        is_base = row.group == b["group"] and row.target_sparsity == b["target_sparsity"]
        r = stats.paired(row.seeds, b["seeds"]) if not is_base else {"test": "baseline"}
        rows.append({"group": row.group, "target_sparsity": row.target_sparsity,
                     "learning_rate": row.learning_rate, "n": row.n, "mean": row.mean,
                     "std": row.std, "baseline_mean": b["mean"], "n_pairs": r.get("n", row.n),
                     "diff": r.get("mean_diff", 0.0 if is_base else math.nan),
                     **{k: r.get(k, math.nan) for k in ("ci_low", "ci_high", "t", "df", "p",
                                                        "p_wilcoxon", "d_z")},
                     "test": r["test"]})
    out = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    out["p_holm"] = stats.holm(out["p"].astype(float))
    out["mark"] = [("baseline" if t == "baseline" else stats.mark(p, t))
                   for p, t in zip(out["p_holm"], out["test"])]
    return out


def compare_matrices(here: pd.DataFrame, there: pd.DataFrame) -> pd.DataFrame:
    """Per cell name (id without hash): val ppl here and in the other matrix, delta."""
    cols = ["name", "val_ppl"]
    a = here[here["status"] == "done"][cols].rename(columns={"val_ppl": "val_ppl_here"})
    b = there[there["status"] == "done"][cols].rename(columns={"val_ppl": "val_ppl_there"})
    merged = a.merge(b, on="name", how="outer", sort=False)
    merged["delta"] = merged["val_ppl_here"] - merged["val_ppl_there"]
    merged["delta_pct"] = 100.0 * merged["delta"] / merged["val_ppl_there"]
    return merged.reset_index(drop=True)
