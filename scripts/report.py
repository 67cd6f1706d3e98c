"""The matrix report: python -m scripts.report MATRIX_DIR|CONFIG [--baseline-matrix OTHER_DIR]

Reads only the results: each cell's run directory (config, summary.json,
metrics.jsonl, env.json) and the runner's state files, so it can be rerun at
any time without training. Writes into the matrix directory:

  summary.csv      one row per cell (one cell per seed)
  report.md        perplexity tables, deltas to MATRIX_BASELINE with Welch's t-test,
                   learning rates (with a sweep: each optimizer at the rate that won on
                   the validation split), failures, environment, plots
  plots/*.png      val perplexity, achieved sparsity, wall time, peak memory,
                   validation-loss curves per pruning method, perplexity vs sparsity
  comparison.csv   with --baseline-matrix: val perplexity here vs there, per cell

Given a config file instead of a directory, it reports on that config's matrix.
Standard deviations are sample standard deviations (ddof=1) over seeds.
"""
import argparse
import io
import json
import math
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from lib import config as cfglib  # noqa: E402
from lib import optim  # noqa: E402
from lib.config import ConfigError  # noqa: E402
from lib.fsutil import atomic_write_bytes, atomic_write_text  # noqa: E402
from lib.run import dir_of_config  # noqa: E402
from scripts import caveats  # noqa: E402

DEFAULT_BASELINE = "adamw-none"
HASH_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
MEM_LABELS = {"cuda_max_allocated": "GPU memory (CUDA max allocated)",
              "cpu_peak_rss": "CPU peak RSS"}
COLUMNS = ["cell", "name", "optimizer", "pruning", "variant", "method", "extra", "seed",
           "learning_rate", "lr_multiplier", "target_sparsity", "achieved_sparsity", "train_loss", "val_loss", "val_ppl",
           "best_val_ppl", "iters", "tokens_seen", "train_time_s", "wall_s", "overhead_s",
           "startup_s", "tokens_per_s", "peak_mem_bytes", "peak_mem_kind", "optimizer_state_bytes",
           "extra_budget", "status", "exit_code", "reason", "error"]
OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # legends beside the axes
SUMMARY_KEYS = ("train_loss", "val_loss", "val_ppl", "best_val_ppl", "iters", "tokens_seen",
                "train_time_s", "tokens_per_s", "peak_mem_bytes", "peak_mem_kind",
                "optimizer_state_bytes", "extra_budget", "startup_s")


# ------------------------------------------------------------------ reading

def name_of(cell_id: str) -> str:
    """The cell id without its config hash: adamw-none-seed1337."""
    return HASH_SUFFIX.sub("", cell_id)


def _json(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return default


def _load_config(path):
    """A cell's config through the config reader; leniently when the Kconfig
    tree has changed since the run (old results stay readable)."""
    try:
        return cfglib.load(path)
    except ConfigError:
        return cfglib.from_kconf(cfglib.load_kconf(path, strict=False), path)


def _learning_rate(cfg):
    """The peak learning rate a cell's config gives its optimizer (None for results from
    before per-optimizer rates)."""
    entry = optim.OPTIMIZERS.get(cfg.OPTIMIZER)
    return cfg.get(entry.lr) if entry else None


def _choice_order(name: str) -> list:
    tree = cfglib.load_tree()
    choice = next(c for c in tree.unique_choices if c.name == name)
    return [s.name.removeprefix(name + "_").lower().replace("_", "-") for s in choice.syms]


def cell_ids(matrix_dir: Path) -> list:
    """Cells of a matrix: run directories (with a config) and state files."""
    ids = {p.name for p in matrix_dir.iterdir() if p.is_dir() and (p / "config").is_file()}
    state_dir = matrix_dir / "state"
    if state_dir.is_dir():
        ids |= {p.stem for p in state_dir.glob("*.json")}
    return sorted(ids)


def load_cells(matrix_dir) -> pd.DataFrame:
    """One row per cell, from its config, summary.json and state file (each read once;
    the config's values and the summary stay in the row for the caveats)."""
    matrix_dir = Path(matrix_dir)
    rows = []
    for cell_id in cell_ids(matrix_dir):
        run = matrix_dir / cell_id
        state = _json(matrix_dir / "state" / f"{cell_id}.json", {})
        summary = _json(run / "summary.json", {})
        row = {"cell": cell_id, "name": name_of(cell_id), "summary": summary, "config": {}}
        if (run / "config").is_file():
            cfg = _load_config(run / "config")
            row.update(optimizer=cfg.OPTIMIZER, pruning=cfg.PRUNING,
                       variant=cfg.ADAMWPRUNE_VARIANT, seed=cfg.SEED,
                       target_sparsity=cfg.TARGET_SPARSITY, learning_rate=_learning_rate(cfg),
                       config=dict(cfg.items()))
        else:
            row.update({k: state.get(k) for k in ("optimizer", "pruning", "variant", "seed",
                                                  "target_sparsity", "learning_rate")})
        if row["learning_rate"] is None:
            row["learning_rate"] = summary.get("learning_rate")
        row["lr_multiplier"] = state.get("lr_multiplier", 1.0)
        if row["pruning"] == "none":
            row["target_sparsity"] = 0.0
        row["method"] = (f"{row['pruning']}-{row['variant']}" if row.get("variant")
                         else row["pruning"])
        row["extra"] = state.get("extra")
        if row["extra"]:  # the matrix's extra dimension: shown beside the method, grouped apart
            row["method"] = f"{row['method']}[{row['extra']}]"
        row.update({k: summary.get(k) for k in SUMMARY_KEYS})
        if "sparsity" in summary:
            row["achieved_sparsity"] = summary["sparsity"]
        else:
            row["achieved_sparsity"] = 0.0 if row["pruning"] == "none" else None
        wall = state.get("wall_s") or None
        row["wall_s"] = wall
        row["overhead_s"] = (wall - row["train_time_s"]
                             if wall is not None and row["train_time_s"] is not None else None)
        status = state.get("status")
        if status is None:  # a run directory without a runner state
            status = "done" if summary.get("status") == "complete" else (
                summary.get("status") or "pending")
        row.update(status=status, exit_code=state.get("exit_code"),
                   reason=state.get("reason"), error=state.get("error") or summary.get("error"))
        row["log_tail"] = state.get("log_tail") or []
        rows.append(row)
    # beside the CSV's columns: the log tail, and each cell's config values and summary
    df = pd.DataFrame(rows, columns=COLUMNS + ["log_tail", "config", "summary"])
    for col in ("learning_rate", "lr_multiplier", "target_sparsity", "achieved_sparsity",
                "train_loss", "val_loss", "val_ppl",
                "best_val_ppl", "train_time_s", "wall_s", "overhead_s", "tokens_per_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("seed", "iters", "tokens_seen", "peak_mem_bytes", "optimizer_state_bytes",
                "exit_code"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return _sorted(df)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    opt_rank = {o: i for i, o in enumerate(_choice_order("OPTIMIZER"))}
    prune_rank = {p: i for i, p in enumerate(_choice_order("PRUNING"))}
    keys = pd.DataFrame({
        "o": df["optimizer"].map(lambda o: opt_rank.get(o, len(opt_rank))),
        "p": df["pruning"].map(lambda p: prune_rank.get(p, len(prune_rank))),
        "v": df["variant"].fillna(""), "s": df["target_sparsity"], "seed": df["seed"]})
    return df.loc[keys.sort_values(["o", "p", "v", "s", "seed"]).index].reset_index(drop=True)


def load_curves(matrix_dir, cells: pd.DataFrame) -> pd.DataFrame:
    """Long table of eval records: cell, optimizer, method, target_sparsity, seed, iter, val_loss."""
    rows = []
    for cell in cells.itertuples():
        path = Path(matrix_dir) / cell.cell / "metrics.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("kind") == "eval":
                rows.append({"cell": cell.cell, "optimizer": cell.optimizer,
                             "method": cell.method, "target_sparsity": cell.target_sparsity,
                             "seed": cell.seed, "iter": record["iter"],
                             "val_loss": record["val_loss"]})
    return pd.DataFrame(rows, columns=["cell", "optimizer", "method", "target_sparsity",
                                       "seed", "iter", "val_loss"])


def environment(matrix_dir, cells: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for cell_id in cells["cell"]:
        env = _json(Path(matrix_dir) / cell_id / "env.json")
        if env:
            rows.append({k: "-" if env.get(k) is None else str(env[k])
                         for k in ("device", "device_name", "torch", "cuda", "hip", "python",
                                   "git_sha", "git_dirty")})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).drop_duplicates().reset_index(drop=True)


def matrix_baseline(matrix_dir) -> str:
    path = Path(matrix_dir) / "matrix.config"
    if path.is_file():
        return _load_config(path).MATRIX_BASELINE or DEFAULT_BASELINE
    return DEFAULT_BASELINE


# ---------------------------------------------------------------- statistics

AGG_COLUMNS = ["group", "optimizer", "method", "target_sparsity", "learning_rate",
               "lr_multiplier", "n", "mean", "std", "values", "rates_tried", "best_rate"]


def aggregate(df: pd.DataFrame, metric: str = "val_ppl") -> pd.DataFrame:
    """Per group (optimizer, method, target_sparsity, learning rate) of done cells: n,
    mean, std (ddof=1, NaN for one seed) and the values. Where a group was run at several
    learning rates, best_rate marks the rate with the lowest mean (chosen on the
    validation split); with one rate it is always set."""
    done = df[(df["status"] == "done") & df[metric].notna()]
    groups = []
    keys = ["optimizer", "method", "target_sparsity", "learning_rate"]
    for (opt, method, sp, lr), g in done.groupby(keys, sort=False, dropna=False):
        values = g[metric].tolist()
        groups.append({"group": f"{opt}-{method}", "optimizer": opt, "method": method,
                       "target_sparsity": sp, "learning_rate": lr,
                       "lr_multiplier": g["lr_multiplier"].iloc[0], "n": len(values),
                       "mean": float(np.mean(values)),
                       "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                       "values": values})
    agg = pd.DataFrame(groups, columns=AGG_COLUMNS)
    if agg.empty:
        return agg
    by_setting = agg.groupby(["optimizer", "method", "target_sparsity"], sort=False)
    agg["rates_tried"] = by_setting["mean"].transform("size")
    agg["best_rate"] = agg.index.isin(by_setting["mean"].idxmin())
    return agg


def at_best_rate(agg: pd.DataFrame) -> pd.DataFrame:
    """Each (optimizer, method, sparsity) once, at its winning learning rate."""
    return agg[agg["best_rate"]].reset_index(drop=True) if not agg.empty else agg


def _parse_baseline(baseline: str):
    match = re.fullmatch(r"(.+?)(?:-s([0-9.]+))?", baseline.strip())
    return match.group(1), (float(match.group(2)) if match.group(2) else None)


def baseline_deltas(agg: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every group against the baseline group (same sparsity where the baseline
    has several): delta of the mean, and Welch's t-test where both sides have
    at least two seeds. The baseline's own row has mark "baseline"."""
    name, sparsity = _parse_baseline(baseline)
    base = agg[agg["group"] == name]
    if sparsity is not None:
        base = base[np.isclose(base["target_sparsity"], sparsity)]
    out = []
    if base.empty:
        return pd.DataFrame(columns=["group", "target_sparsity", "n", "mean", "std",
                                     "baseline_mean", "delta", "delta_pct", "t", "p", "mark"])
    for row in agg.itertuples():
        same = base[np.isclose(base["target_sparsity"], row.target_sparsity)]
        b = (same if not same.empty else base).iloc[0]
        t = p = math.nan
        mark = "n/a (needs >= 2 seeds on both sides)"
        if row.group == b["group"] and row.target_sparsity == b["target_sparsity"]:
            mark = "baseline"
        elif row.n >= 2 and b["n"] >= 2:
            t, p = stats.ttest_ind(row.values, b["values"], equal_var=False)
            t, p = float(t), float(p)
            mark = "**" if p < 0.01 else "*" if p < 0.05 else "ns"
        delta = row.mean - b["mean"]
        out.append({"group": row.group, "target_sparsity": row.target_sparsity, "n": row.n,
                    "mean": row.mean, "std": row.std, "baseline_mean": b["mean"],
                    "delta": delta, "delta_pct": 100.0 * delta / b["mean"], "t": t, "p": p,
                    "mark": mark})
    return pd.DataFrame(out, columns=["group", "target_sparsity", "n", "mean", "std",
                                      "baseline_mean", "delta", "delta_pct", "t", "p", "mark"])


def compare_matrices(here: pd.DataFrame, there: pd.DataFrame) -> pd.DataFrame:
    """Per cell name (id without hash): val ppl here and in the other matrix, delta."""
    cols = ["name", "val_ppl"]
    a = here[here["status"] == "done"][cols].rename(columns={"val_ppl": "val_ppl_here"})
    b = there[there["status"] == "done"][cols].rename(columns={"val_ppl": "val_ppl_there"})
    merged = a.merge(b, on="name", how="outer", sort=False)
    merged["delta"] = merged["val_ppl_here"] - merged["val_ppl_there"]
    merged["delta_pct"] = 100.0 * merged["delta"] / merged["val_ppl_there"]
    return merged.reset_index(drop=True)


# ------------------------------------------------------------------- plots

def _plain_numbers(fig) -> None:
    """Tick labels read as the numbers they are: never an offset ("+1.8225e1") or a
    scale factor in the corner of an axis."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, mticker.ScalarFormatter):
                formatter.set_useOffset(False)
                formatter.set_scientific(False)


def _save(fig, path: Path) -> None:
    _plain_numbers(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _label(method: str, sparsity: float) -> str:
    return method if method == "none" else f"{method} s={sparsity:g}"


def plot_val_ppl(agg: pd.DataFrame, path) -> pd.DataFrame:
    """Dot and whisker: optimizers on the x axis, one dot per pruning method (and
    sparsity) at the mean over seeds, whiskers +- std, on an axis zoomed to the data
    (bars from zero would hide 1% differences). Returns the means drawn."""
    table = agg.assign(label=[_label(m, s) for m, s in zip(agg["method"], agg["target_sparsity"])])
    means = table.pivot(index="optimizer", columns="label", values="mean")
    stds = table.pivot(index="optimizer", columns="label", values="std")
    means = means.loc[list(dict.fromkeys(table["optimizer"])), list(dict.fromkeys(table["label"]))]
    stds = stds.loc[means.index, means.columns]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * means.size), 4.5))
    width = 0.8 / max(1, len(means.columns))
    x = np.arange(len(means.index))
    for i, label in enumerate(means.columns):
        ax.errorbar(x + i * width - 0.4 + width / 2, means[label], yerr=stds[label].fillna(0),
                    fmt="o", capsize=3, label=label)
    ax.set_xticks(x, means.index)
    ax.set_xlim(-0.5, len(means.index) - 0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.set_xlabel("optimizer")
    ax.set_ylabel("validation perplexity (lower is better)")
    ax.set_title("Final validation perplexity (mean ± std over seeds)")
    ax.legend(title="pruning", fontsize="small", **OUTSIDE)
    _save(fig, Path(path))
    return means


def _per_cell_barh(series_or_frame, path, xlabel, title, stacked=False):
    data = series_or_frame
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(data) + 1)))
    data.plot.barh(ax=ax, stacked=stacked, legend=False)
    if isinstance(data, pd.DataFrame):
        ax.legend(fontsize="small", **OUTSIDE)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cell")
    ax.set_title(title)
    _save(fig, Path(path))


def plot_sparsity(df: pd.DataFrame, path) -> pd.DataFrame:
    """Achieved (and target) sparsity of every done cell."""
    done = df[df["status"] == "done"]
    data = done.set_index("name")[["target_sparsity", "achieved_sparsity"]].fillna(0.0)
    _per_cell_barh(data, path, "sparsity (fraction of prunable weights that are zero)",
                   "Target and achieved sparsity per cell")
    return data


def plot_wall_time(df: pd.DataFrame, path) -> pd.DataFrame:
    """Stacked bars: training time and the rest of the process's wall time."""
    done = df[df["status"] == "done"]
    data = done.set_index("name")[["train_time_s", "overhead_s"]].fillna(0.0)
    data.columns = ["training time (s)", "overhead: start-up, eval, sampling (s)"]
    _per_cell_barh(data, path, "wall time (s)", "Wall time per cell", stacked=True)
    return data


def plot_peak_memory(df: pd.DataFrame, path) -> pd.Series:
    """Peak memory per cell in MiB, labelled with what was measured."""
    done = df[(df["status"] == "done") & df["peak_mem_bytes"].notna()]
    data = done.set_index("name")["peak_mem_bytes"].astype(float) / 2**20
    kinds = sorted(set(done["peak_mem_kind"].dropna()))
    what = MEM_LABELS.get(kinds[0], kinds[0]) if len(kinds) == 1 else "mixed: " + ", ".join(
        MEM_LABELS.get(k, k) for k in kinds)
    data.name = f"{what} (MiB)"
    _per_cell_barh(data, path, data.name, "Peak memory per cell")
    return data


def plot_val_curves(curves: pd.DataFrame, plots_dir) -> dict:
    """One figure per pruning method, one line per optimizer (and sparsity),
    validation loss over iterations, mean over seeds. Returns {method: data}."""
    drawn = {}
    for method, g in curves.groupby("method", sort=False):
        several = g["target_sparsity"].nunique() > 1
        g = g.assign(line=[f"{o} s={s:g}" if several else o
                           for o, s in zip(g["optimizer"], g["target_sparsity"])])
        data = g.groupby(["iter", "line"], sort=True)["val_loss"].mean().unstack("line")
        data = data[list(dict.fromkeys(g["line"]))]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for line in data.columns:
            ax.plot(data.index, data[line], marker="o", markersize=3, label=line)
        ax.set_xlabel("iteration (optimizer steps)")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(f"Validation loss, pruning: {method} (mean over seeds)")
        ax.legend(title="optimizer", fontsize="small", **OUTSIDE)
        _save(fig, Path(plots_dir) / f"val_loss_{method}.png")
        drawn[method] = data
    return drawn


def plot_ppl_vs_sparsity(agg: pd.DataFrame, path) -> pd.DataFrame:
    """Perplexity over target sparsity, one line per optimizer-method; the dense
    cells of each optimizer as a dashed horizontal reference."""
    pruned = agg[agg["method"] != "none"]
    data = pruned.pivot(index="target_sparsity", columns="group", values="mean").sort_index()
    data = data[list(dict.fromkeys(pruned["group"]))]
    for dense in agg[agg["method"] == "none"].itertuples():
        data[dense.group] = dense.mean
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, col in enumerate(data.columns):
        color = colors[i % len(colors)]
        if col.endswith("-none"):  # a reference line, visible with one sparsity level too
            ax.axhline(data[col].iloc[0], linestyle="--", color=color, label=f"{col} (dense)")
        else:
            ax.plot(data.index, data[col], linestyle="-", marker="o", color=color, label=col)
    ax.set_xlabel("target sparsity (fraction of prunable weights)")
    ax.set_ylabel("validation perplexity (lower is better)")
    ax.set_title("Perplexity vs sparsity (mean over seeds)")
    ax.legend(fontsize="small", **OUTSIDE)
    _save(fig, Path(path))
    return data


def make_plots(df, agg, curves, plots_dir) -> dict:
    """Every plot there is data for; {name: (png path, data drawn)}."""
    plots_dir = Path(plots_dir)
    out = {}
    done = df[df["status"] == "done"]
    if done.empty:
        return out
    if not agg.empty:
        out["val_ppl"] = (plots_dir / "val_ppl.png", plot_val_ppl(agg, plots_dir / "val_ppl.png"))
    out["sparsity"] = (plots_dir / "sparsity.png", plot_sparsity(df, plots_dir / "sparsity.png"))
    out["wall_time"] = (plots_dir / "wall_time.png",
                        plot_wall_time(df, plots_dir / "wall_time.png"))
    if done["peak_mem_bytes"].notna().any():
        out["peak_memory"] = (plots_dir / "peak_memory.png",
                              plot_peak_memory(df, plots_dir / "peak_memory.png"))
    ok_curves = curves[curves["cell"].isin(done["cell"])]
    for method, data in plot_val_curves(ok_curves, plots_dir).items():
        out[f"val_loss_{method}"] = (plots_dir / f"val_loss_{method}.png", data)
    if not agg.empty and (agg["method"] != "none").any():
        out["ppl_vs_sparsity"] = (plots_dir / "ppl_vs_sparsity.png",
                                  plot_ppl_vs_sparsity(agg, plots_dir / "ppl_vs_sparsity.png"))
    return out


# -------------------------------------------------------------- markdown

def _fmt(x, digits=3) -> str:
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _fmt_lr(x) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:g}"


def _md_table(header, rows) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines + [""]


def _cell_text(g, flags=None) -> str:
    if g is None:
        return "-"
    text = f"{g['mean']:.3f} ± {g['std']:.3f} (n={g['n']})" if g["n"] > 1 else f"{g['mean']:.3f}"
    if g.get("rates_tried", 1) > 1:  # a learning-rate sweep: say which rate this is
        text += f" @ lr {g['learning_rate']:g}"
    if flags is not None:
        mark = caveats.letters(flags, group=g["group"], target_sparsity=g["target_sparsity"],
                               learning_rate=g.get("learning_rate"))
        text += f" {mark}" if mark else ""
    return text


def ppl_tables(agg: pd.DataFrame, flags=None) -> list:
    """Markdown: one table per target sparsity, rows optimizer, columns pruning
    method; the dense cells are the first column of each."""
    lines = []
    if agg.empty:
        return ["No finished cells yet.", ""]
    optimizers = list(dict.fromkeys(agg["optimizer"]))
    dense = agg[agg["method"] == "none"]
    pruned = agg[agg["method"] != "none"]
    sparsities = sorted(set(pruned["target_sparsity"])) or [None]
    for sp in sparsities:
        at = pruned[np.isclose(pruned["target_sparsity"], sp)] if sp is not None else pruned
        methods = (["none"] if not dense.empty else []) + list(dict.fromkeys(at["method"]))
        lines.append(f"### Target sparsity {sp:g}" if sp is not None else "### Dense")
        lines.append("")
        rows = []
        for opt in optimizers:
            row = [opt]
            for method in methods:
                src = dense if method == "none" else at
                g = src[(src["optimizer"] == opt) & (src["method"] == method)]
                row.append(_cell_text(g.iloc[0] if not g.empty else None, flags))
            rows.append(row)
        lines += _md_table(["optimizer \\ pruning"] + methods, rows)
    return lines


def lr_section(agg: pd.DataFrame) -> list:
    """Markdown: each optimizer's learning rate; with a sweep, every rate tried per setting
    with the winner marked, and a note that it was chosen on the validation split."""
    if agg.empty:
        return []
    lines = ["## Learning rates", ""]
    if (agg["rates_tried"] <= 1).all():
        rates = agg.groupby("optimizer", sort=False)["learning_rate"].unique()
        lines += ["Each optimizer ran at its own peak learning rate (<OPTIMIZER>_LR):", ""]
        lines += _md_table(["optimizer", "peak learning rate"],
                           [[o, ", ".join(f"{r:g}" for r in lrs)] for o, lrs in rates.items()])
        return lines
    lines += ["Each optimizer was run at several multiples of its own peak learning rate "
              "(MATRIX_LR_MULTIPLIERS). The tables above and the baseline comparison show "
              "each setting at the rate with the lowest mean final validation perplexity, "
              "marked **best** here. **The rate was chosen on the validation split, the same "
              "split those tables report, so the winners' figures are optimistically "
              "biased.**", ""]
    rows = []
    setting = ["optimizer", "method", "target_sparsity"]
    edges = agg.groupby(setting, sort=False)["learning_rate"].agg(["min", "max"])
    ordered = agg.assign(order=range(len(agg)))
    ordered["first"] = ordered.groupby(setting, sort=False)["order"].transform("min")
    for r in ordered.sort_values(["first", "learning_rate"]).itertuples():
        mean = _cell_text({"mean": r.mean, "std": r.std, "n": r.n})
        chosen = ""
        if r.best_rate:
            low, high = edges.loc[(r.optimizer, r.method, r.target_sparsity)]
            at_edge = r.learning_rate in (low, high)
            chosen = "**best**" + (" (edge of the sweep: the optimum may lie beyond)"
                                   if at_edge else "")
        rows.append([r.group, f"{r.target_sparsity:g}", f"{r.learning_rate:g}",
                     f"x{r.lr_multiplier:g}", mean, chosen])
    lines += _md_table(["setting", "sparsity", "learning rate", "multiplier", "val ppl",
                        "chosen"], rows)
    return lines


def render(matrix_dir, df, agg, deltas, baseline, env, plots, comparison=None,
           other_dir=None, all_rates=None, flags=None) -> str:
    matrix_dir = Path(matrix_dir)
    counts = df["status"].value_counts().to_dict()
    lines = [f"# Matrix report: {matrix_dir.name}", "",
             f"{len(df)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
             "", "## Validation perplexity (final)", "",
             "Mean ± sample std (ddof=1) over seeds where there are several; "
             "[letters] flag caveats (see Caveats).", ""]
    lines += ppl_tables(agg, flags)
    lines += lr_section(all_rates if all_rates is not None else agg)
    lines += [f"## Against the baseline `{baseline}`", ""]
    if deltas.empty:
        lines += [f"No finished baseline cell `{baseline}` in this matrix.", ""]
    else:
        lines += ["Delta of the mean val perplexity; significance from Welch's t-test "
                  "(scipy.stats.ttest_ind, equal_var=False): ** p<0.01, * p<0.05, ns otherwise.",
                  ""]
        lines += _md_table(
            ["cell", "sparsity", "n", "val ppl", "baseline", "delta", "delta %", "p", "sig.",
             "caveats"],
            [[f"**{r.group}**" if r.mark == "baseline" else r.group, f"{r.target_sparsity:g}",
              r.n, _fmt(r.mean), _fmt(r.baseline_mean), f"{r.delta:+.3f}",
              f"{r.delta_pct:+.2f}%", _fmt(r.p, 4), r.mark,
              caveats.letters(flags, group=r.group, target_sparsity=r.target_sparsity)
              if flags is not None else ""]
             for r in deltas.itertuples()])
    if flags is not None:
        lines += caveats.section(flags)
    extra = df[df["extra_budget"].notna() & (df["extra_budget"] != "")]
    if not extra.empty:
        lines += ["## Extra budget", "", "These cells trained with more compute than the others "
                  "(bitter2 spends what sparsity saves):", ""]
        lines += _md_table(["cell", "extra budget"], [[r.cell, r.extra_budget]
                                                      for r in extra.itertuples()])
    lines += ["## Cells", "", "Overhead is the process's wall time minus its training time "
              "(start-up, data, evaluation, sampling, checkpoints).", ""]
    lines += _md_table(
        ["cell", "status", "lr", "caveats", "val ppl", "best val ppl", "sparsity", "iters",
         "train s", "wall s", "overhead s", "tokens/s", "peak MiB", "optimizer state MiB"],
        [[r.cell, r.status, _fmt_lr(r.learning_rate),
          caveats.letters(flags, cell=r.cell) if flags is not None else "",
          _fmt(r.val_ppl), _fmt(r.best_val_ppl), _fmt(r.achieved_sparsity),
          _fmt(r.iters, 0), _fmt(r.train_time_s, 1), _fmt(r.wall_s, 1), _fmt(r.overhead_s, 1),
          _fmt(r.tokens_per_s, 0),
          _fmt(r.peak_mem_bytes / 2**20, 1) if pd.notna(r.peak_mem_bytes) else "-",
          _fmt(r.optimizer_state_bytes / 2**20, 2) if pd.notna(r.optimizer_state_bytes) else "-"]
         for r in df.itertuples()])
    failed = df[df["status"] == "failed"]
    lines += ["## Failures", ""]
    if failed.empty:
        lines += ["None.", ""]
    for r in failed.itertuples():
        lines += [f"### {r.cell}", "", f"- reason: {r.reason or '-'}",
                  f"- error: {r.error or '-'}", f"- log: `{r.cell}/stdout.log`, last lines:", "",
                  "```", *(r.log_tail or ["(empty)"]), "```", ""]
    unfinished = df[df["status"].isin(["pending", "running", "interrupted"])]
    if not unfinished.empty:
        lines += ["## Not finished", "", "Run the matrix again to run or resume these:", ""]
        lines += [f"- {r.cell} ({r.status})" for r in unfinished.itertuples()] + [""]
    if comparison is not None:
        lines += [f"## Compared with `{other_dir}`", "",
                  "Per cell (id without its config hash): val perplexity here and there; "
                  "delta = here - there.", ""]
        lines += _md_table(["cell", "val ppl here", "val ppl there", "delta", "delta %"],
                           [[r.name, _fmt(r.val_ppl_here), _fmt(r.val_ppl_there),
                             _fmt(r.delta), _fmt(r.delta_pct, 2)]
                            for r in comparison.itertuples()])
    lines += ["## Environment", ""]
    if env.empty:
        lines += ["No env.json in any cell.", ""]
    else:
        lines += _md_table(list(env.columns), env.values.tolist())
        if len(env) > 1:
            lines += ["**The cells ran in different environments.**", ""]
    lines += ["## Plots", ""]
    for name, (path, _) in plots.items():
        lines += [f"![{name}]({path.relative_to(matrix_dir).as_posix()})", ""]
    return "\n".join(lines)


def write_report(matrix_dir, baseline_matrix=None, baseline=None) -> dict:
    """Read the matrix directory and write summary.csv, report.md, plots/ (and
    comparison.csv). Returns the paths and the tables it computed."""
    matrix_dir = Path(matrix_dir)
    if not matrix_dir.is_dir():
        raise ConfigError(f"{matrix_dir}: no such matrix directory")
    df = load_cells(matrix_dir)
    if df.empty:
        raise ConfigError(f"{matrix_dir}: no cells (no run directories or state files)")
    baseline = baseline or matrix_baseline(matrix_dir)
    all_rates = aggregate(df)
    agg = at_best_rate(all_rates)
    deltas = baseline_deltas(agg, baseline)
    curves = load_curves(matrix_dir, df)
    flags = caveats.find(df, curves, baseline)
    plots = make_plots(df, agg, curves, matrix_dir / "plots")
    env = environment(matrix_dir, df)
    comparison = None
    out = {"summary": matrix_dir / "summary.csv", "report": matrix_dir / "report.md"}
    if baseline_matrix is not None:
        other = load_cells(Path(baseline_matrix))
        comparison = compare_matrices(df, other)
        out["comparison"] = matrix_dir / "comparison.csv"
        atomic_write_text(out["comparison"], comparison.to_csv(index=False))
    atomic_write_text(out["summary"], df[COLUMNS].to_csv(index=False))
    atomic_write_text(out["report"], render(matrix_dir, df, agg, deltas, baseline, env, plots,
                                            comparison, baseline_matrix, all_rates, flags))
    return {**out, "cells": df, "groups": agg, "all_rates": all_rates, "deltas": deltas,
            "plots": plots, "comparison": comparison, "caveats": flags}


def resolve(target) -> Path:
    """A matrix directory, or the matrix directory a config file describes."""
    path = Path(target)
    if path.is_dir():
        return path
    if path.is_file():
        return dir_of_config(path)
    raise ConfigError(f"{path}: neither a matrix directory nor a config file")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("matrix", nargs="?", help="matrix directory or config file "
                        "(default: .config or $KCONFIG_CONFIG)")
    parser.add_argument("--baseline-matrix", metavar="OTHER_DIR",
                        help="another matrix directory (or config) to compare each cell with")
    parser.add_argument("--baseline", metavar="CELL",
                        help="baseline cell, e.g. adamw-none (default: the matrix's MATRIX_BASELINE)")
    args = parser.parse_args(argv)
    try:
        matrix_dir = resolve(args.matrix or cfglib.default_config_path())
        other = resolve(args.baseline_matrix) if args.baseline_matrix else None
        out = write_report(matrix_dir, other, args.baseline)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out['report']}\n{out['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
