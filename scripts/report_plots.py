"""The report's plots. Each draws what a table of the report says, returns the data it
drew (the tests read it) and writes a PNG atomically."""
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lib.fsutil import atomic_write_bytes  # noqa: E402

MEM_LABELS = {"cuda_max_allocated": "GPU memory (CUDA max allocated)",
              "cpu_peak_rss": "CPU peak RSS"}
OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # legends beside the axes
# Far above the others: more than FAR_MADS median absolute deviations and FAR_RATIO times
# the median of the settings' means (a diverged run sits near ln(vocabulary), not 1% off).
FAR_MADS, FAR_RATIO = 10.0, 1.2


def plain_numbers(fig) -> None:
    """Tick labels read as the numbers they are: never an offset ("+1.8225e1") or a
    scale factor in the corner of an axis."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, mticker.ScalarFormatter):
                formatter.set_useOffset(False)
                formatter.set_scientific(False)


def save(fig, path: Path) -> None:
    plain_numbers(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def label(group: str, sparsity: float) -> str:
    """A setting's name on plots and profiles: the group, with its sparsity when pruned."""
    return group if not sparsity else f"{group} s={sparsity:g}"


def diverging(means: pd.Series) -> list:
    """Labels whose mean is not finite, or far above the others (FAR_MADS and FAR_RATIO;
    with at least three settings to measure the others by)."""
    finite = means[np.isfinite(means.astype(float))]
    out = [k for k, v in means.items() if not math.isfinite(v)]
    if len(finite) >= 3:
        median = float(np.median(finite))
        mad = float(np.median(np.abs(finite - median)))
        out += [k for k, v in finite.items()
                if v - median > FAR_MADS * mad and v > FAR_RATIO * median]
    return out


def plot_final_loss(cells: pd.DataFrame, baseline_mean: float, path) -> pd.DataFrame:
    """Final test loss per setting: every seed a point, the mean with ± one sd, the
    baseline's mean a horizontal line. A diverging setting is written on the plot with
    its value instead of stretching the axis. Returns mean, std, n per label drawn."""
    done = cells[(cells["status"] == "done") & cells["test_loss"].notna()].assign(
        label=lambda d: [label(f"{o}-{m}", s) for o, m, s in
                         zip(d["optimizer"], d["method"], d["target_sparsity"])])
    stats = done.groupby("label", sort=False)["test_loss"].agg(["mean", "std", "count"])
    off = diverging(stats["mean"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(stats) + 2), 4.5))
    x = {k: i for i, k in enumerate(stats.index)}
    shown = done[~done["label"].isin(off)]
    ax.plot([x[k] for k in shown["label"]], shown["test_loss"], "o", alpha=0.4,
            color="grey", label="one seed")
    kept = stats.drop(index=off)
    ax.errorbar([x[k] for k in kept.index], kept["mean"], yerr=kept["std"].fillna(0),
                fmt="D", capsize=4, color="C0", label="mean ± sd over seeds")
    if math.isfinite(baseline_mean):
        ax.axhline(baseline_mean, linestyle="--", color="C3", label="baseline (mean)")
    for k in off:
        ax.annotate(f"{k}: {stats.loc[k, 'mean']:.3g}\n(off scale)", (x[k], 1.0),
                    xycoords=("data", "axes fraction"), ha="center", va="top",
                    fontsize="small", color="C3")
    ax.set_xticks(range(len(stats)), stats.index, rotation=30, ha="right")
    ax.set_ylabel("final test loss (nats/token, lower is better)")
    ax.set_title("Final test loss per setting")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", **OUTSIDE)
    save(fig, Path(path))
    return stats.assign(diverging=stats.index.isin(off))


def _per_cell_barh(data, path, xlabel, title, stacked=False):
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(data) + 1)))
    data.plot.barh(ax=ax, stacked=stacked, legend=False)
    if isinstance(data, pd.DataFrame):
        ax.legend(fontsize="small", **OUTSIDE)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cell")
    ax.set_title(title)
    save(fig, Path(path))


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
    """One figure per pruning method, one line per optimizer (and sparsity), validation
    loss over iterations from the first evaluation on, mean over seeds. {method: data}."""
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
        ax.set_xlim(data.index.min(), max(data.index.max(), data.index.min() + 1))
        ax.set_xlabel("iteration (optimizer steps)")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(f"Validation loss, pruning: {method} (mean over seeds)")
        ax.legend(title="optimizer", fontsize="small", **OUTSIDE)
        save(fig, Path(plots_dir) / f"val_loss_{method}.png")
        drawn[method] = data
    return drawn


def plot_loss_vs_sparsity(agg: pd.DataFrame, path) -> pd.DataFrame:
    """Final test loss over target sparsity, one line per optimizer-method (drawn only where
    the pruned settings span several sparsities); the dense settings as dashed horizontal
    references."""
    pruned = agg[agg["target_sparsity"] > 0]
    data = pruned.pivot(index="target_sparsity", columns="group", values="mean").sort_index()
    data = data[list(dict.fromkeys(pruned["group"]))]
    dense = agg[agg["target_sparsity"] == 0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for col in data.columns:
        ax.plot(data.index, data[col], linestyle="-", marker="o", label=col)
    for i, d in enumerate(dense.itertuples()):
        ax.axhline(d.mean, linestyle="--", color=f"C{(len(data.columns) + i) % 10}",
                   label=f"{d.group} (dense)")
        data[d.group] = d.mean
    ax.set_xlabel("target sparsity (fraction of prunable weights)")
    ax.set_ylabel("final test loss (nats/token, lower is better)")
    ax.set_title("Test loss vs sparsity (mean over seeds)")
    ax.legend(fontsize="small", **OUTSIDE)
    save(fig, Path(path))
    return data


def plot_profiles(taus, profiles: dict, path) -> None:
    """AlgoPerf performance profiles: one step line per method."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, fractions in profiles.items():
        ax.step(taus, fractions, where="post", label=method)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: time to target within this factor of the fastest method's")
    ax.set_ylabel("fraction of workloads")
    ax.set_title("Performance profiles (time to target, compile excluded)")
    ax.legend(fontsize="small", **OUTSIDE)
    save(fig, Path(path))
