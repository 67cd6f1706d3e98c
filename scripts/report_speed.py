"""Speed over seeds and time to a target validation loss, per setting against the baseline.

Speed uses the steady-state figures of summary.json (steady_train_time_s, tokens_per_s:
compilation and warm-up left out); time to target reads each cell's eval records
(iter, tokens, elapsed_s) and takes compile_s off the seconds where the summary has it.
Each figure is the median over seeds with its range; a ratio to the baseline is paired by
seed with a 95% interval (scripts/stats.py) and says "no difference measured" where the
interval includes 1."""
import math

import numpy as np
import pandas as pd

from scripts import stats
from scripts.report_verdict import SETTING, baseline_rows

# (summary field, column title, digits, words for a ratio above / below 1)
SPEED_METRICS = (("steady_train_time_s", "steady-state training time (s)", 1,
                  ("longer", "shorter")),
                 ("tokens_per_s", "steady-state tokens/s", 0, ("faster", "slower")))
TARGET_COLUMNS = ["seed", "reached", "iter", "tokens", "seconds"]


def _by_setting(cells: pd.DataFrame):
    done = cells[cells["status"] == "done"]
    return done.groupby(SETTING, sort=False, dropna=False)


def _seed_map(g: pd.DataFrame, column: str) -> dict:
    return {int(s): float(v) for s, v in zip(g["seed"], g[column])
            if pd.notna(v) and math.isfinite(float(v))}


def _base_group(cells: pd.DataFrame, baseline: str, sparsity) -> pd.DataFrame:
    done = cells[cells["status"] == "done"].assign(group=lambda d: d["optimizer"] + "-"
                                                   + d["method"])
    base = baseline_rows(done, baseline)
    same = base[np.isclose(base["target_sparsity"], sparsity)]
    return same if not same.empty else base


def speed_table(cells: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per setting: for each speed metric its median and range over seeds, and its ratio
    to the baseline's (paired by seed) with interval and decision."""
    rows = []
    for (opt, method, sp), g in _by_setting(cells):
        base = _base_group(cells, baseline, sp)
        row = {"group": f"{opt}-{method}", "target_sparsity": sp}
        for metric, *_ in SPEED_METRICS:
            row[metric] = stats.median_spread(g[metric].tolist())
            row[f"{metric}_ratio"] = stats.ratio(_seed_map(g, metric), _seed_map(base, metric))
        rows.append(row)
    return pd.DataFrame(rows)


def cell_times(curves: pd.DataFrame, cells: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per done cell: whether it reached the target and its iteration, tokens and seconds
    (compile excluded) at the first evaluation at or below it."""
    rows = []
    for cell in cells[cells["status"] == "done"].itertuples():
        evals = curves[curves["cell"] == cell.cell].to_dict("records")
        compile_s = cell.compile_s if pd.notna(cell.compile_s) else 0.0
        hit = stats.time_to_target(evals, target, compile_s)
        rows.append({"cell": cell.cell, "seed": cell.seed, "reached": hit is not None,
                     **(hit or {"iter": math.nan, "tokens": math.nan, "seconds": math.inf})})
    return pd.DataFrame(rows, columns=["cell", *TARGET_COLUMNS])


def default_target(cells: pd.DataFrame, baseline: str) -> float:
    """MATRIX_TARGET_VAL_LOSS = 0: the baseline's median final validation loss."""
    done = cells[cells["status"] == "done"].assign(group=lambda d: d["optimizer"] + "-"
                                                   + d["method"])
    values = baseline_rows(done, baseline)["val_loss"].dropna()
    return float(values.median()) if not values.empty else math.nan


def target_table(cells: pd.DataFrame, curves: pd.DataFrame, baseline: str,
                 target: float) -> pd.DataFrame:
    """Per setting: seeds that reached the target (of those run), median and range of the
    iterations, tokens and seconds of those that did, and the speed-up in seconds against
    the baseline (baseline seconds / these, paired by seed over seeds where both reached)."""
    times = cell_times(curves, cells, target).set_index("cell")
    rows = []
    for (opt, method, sp), g in _by_setting(cells):
        mine = times.loc[g["cell"]]
        base = times.loc[_base_group(cells, baseline, sp)["cell"]]
        reached = mine[mine["reached"]]
        row = {"group": f"{opt}-{method}", "target_sparsity": sp,
               "reached": int(len(reached)), "runs": int(len(mine)),
               "median_seconds_all": float(np.median(mine["seconds"])) if len(mine) else math.inf}
        for col in ("iter", "tokens", "seconds"):
            row[col] = stats.median_spread(reached[col].tolist())
        row["speedup"] = stats.ratio(_seed_map(base[base["reached"]], "seconds"),
                                     _seed_map(reached, "seconds"))
        rows.append(row)
    return pd.DataFrame(rows)
