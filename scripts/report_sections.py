"""The sections of report.md, one function each: section(report) -> markdown lines.
report.SECTIONS lists them in order."""
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scripts import caveats
from scripts import report_md as md
from scripts.report_speed import SPEED_METRICS


@dataclass
class Report:
    """Everything the sections lay out, computed once by report.build."""
    matrix_dir: Path
    cells: pd.DataFrame  # every cell
    selection: pd.DataFrame  # every setting at every learning rate, on val_ppl
    groups: pd.DataFrame  # the settings at their selected rate, on test_loss
    verdict: pd.DataFrame
    baseline: str
    flags: pd.DataFrame
    env: pd.DataFrame
    speed: pd.DataFrame
    target: dict  # {"value", "source", "resolution", "table"}
    plots: dict = field(default_factory=dict)
    comparison: pd.DataFrame = None
    other_dir: Path = None


def _letters(r: Report, **where) -> str:
    return caveats.letters(r.flags, **where)


def header(r: Report) -> list:
    counts = r.cells["status"].value_counts().to_dict()
    lines = [f"# Matrix report: {r.matrix_dir.name}", "",
             f"{len(r.cells)} cells: " + ", ".join(f"{n} {s}" for s, n in
                                                    sorted(counts.items())), ""]
    trials = int((r.cells["role"] == "trial").sum())
    if trials:
        lines += [f"{trials} tuning trials are left out of the verdict tables (see Tuning).", ""]
    return lines


def _group_text(r: Report, g) -> str:
    if g is None:
        return "-"
    text = md.mean_sd(g)
    if g.get("rates_tried", 1) > 1:
        text += f" @ lr {g['learning_rate']:g}"
    mark = _letters(r, group=g["group"], target_sparsity=g["target_sparsity"],
                    learning_rate=g.get("learning_rate"))
    return text + (f" {mark}" if mark else "")


def final_loss(r: Report) -> list:
    """One table per target sparsity: rows optimizer, columns pruning method; the dense
    settings first."""
    lines = ["## Final test loss", "",
             "Split: **test** (held out, evaluated once at the end). Mean ± sample sd "
             "(ddof=1) over seeds; [letters] flag caveats (see Caveats); n/a: the run "
             "directories have no test_loss.", ""]
    agg = r.groups
    if agg.empty:
        return lines + ["No finished cells yet.", ""]
    dense, pruned = agg[agg["target_sparsity"] == 0], agg[agg["target_sparsity"] > 0]
    for sp in sorted(set(pruned["target_sparsity"])) or [None]:
        at = pruned[np.isclose(pruned["target_sparsity"], sp)] if sp is not None else pruned
        methods = list(dict.fromkeys(dense["method"])) + list(dict.fromkeys(at["method"]))
        lines += [f"### Target sparsity {sp:g}" if sp is not None else "### Dense", ""]
        rows = []
        for opt in dict.fromkeys(agg["optimizer"]):
            row = [opt]
            for method in methods:
                src = pd.concat([dense, at])
                g = src[(src["optimizer"] == opt) & (src["method"] == method)]
                row.append(_group_text(r, g.iloc[0] if not g.empty else None))
            rows.append(row)
        lines += md.md_table(["optimizer \\ pruning"] + methods, rows)
    return lines


def _rate_rows(agg: pd.DataFrame) -> list:
    rows = []
    setting = ["optimizer", "method", "target_sparsity"]
    edges = agg.groupby(setting, sort=False)["learning_rate"].agg(["min", "max"])
    ordered = agg.assign(order=range(len(agg)))
    ordered["first"] = ordered.groupby(setting, sort=False)["order"].transform("min")
    for g in ordered.sort_values(["first", "learning_rate"]).itertuples():
        chosen = ""
        if g.best_rate:
            low, high = edges.loc[(g.optimizer, g.method, g.target_sparsity)]
            chosen = "**best**" + (" (edge of the sweep: the optimum may lie beyond)"
                                   if g.learning_rate in (low, high) else "")
        rows.append([g.group, f"{g.target_sparsity:g}", f"{g.learning_rate:g}",
                     f"x{g.lr_multiplier:g}", md.mean_sd({"mean": g.mean, "std": g.std,
                                                          "n": g.n}), chosen])
    return rows


def learning_rates(r: Report) -> list:
    """Each optimizer's rate; with a sweep, every rate tried, the one chosen on validation."""
    agg = r.selection
    if agg.empty:
        return []
    lines = ["## Learning rates", ""]
    if (agg["rates_tried"] <= 1).all():
        rates = agg.groupby("optimizer", sort=False)["learning_rate"].unique()
        lines += ["Each optimizer ran at its own peak learning rate (<OPTIMIZER>_LR):", ""]
        return lines + md.md_table(["optimizer", "peak learning rate"],
                                   [[o, ", ".join(f"{x:g}" for x in lrs)]
                                    for o, lrs in rates.items()])
    lines += ["Each optimizer was run at several multiples of its own peak learning rate "
              "(MATRIX_LR_MULTIPLIERS). Split: **validation**: the rate with the lowest mean "
              "final validation perplexity is chosen on the validation split, marked **best**; "
              "the verdict tables report those rates on the test split, which the choice "
              "never saw.", ""]
    return lines + md.md_table(["setting", "sparsity", "learning rate", "multiplier",
                                "val ppl", "chosen"], _rate_rows(agg))


def _verdict_row(r: Report, v) -> list:
    ci = (f"[{v.ci_low:+.4f}, {v.ci_high:+.4f}]" if not math.isnan(v.ci_low) else "-")
    d_z = "-" if math.isnan(v.d_z) else f"{v.d_z:+.2f}"
    return [f"**{v.group}**" if v.mark == "baseline" else v.group, f"{v.target_sparsity:g}",
            md.mean_sd({"mean": v.mean, "std": v.std, "n": v.n}, 4), v.n_pairs,
            md.fmt_or_na(v.diff, 4) if v.mark == "baseline" or pd.isna(v.diff)
            else f"{v.diff:+.4f}", ci, md.fmt_p(v.p), md.fmt_p(v.p_wilcoxon),
            md.fmt_p(v.p_holm), d_z, v.mark,
            _letters(r, group=v.group, target_sparsity=v.target_sparsity)]


def against_baseline(r: Report) -> list:
    lines = [f"## Against the baseline `{r.baseline}`", ""]
    if r.verdict.empty:
        return lines + [f"No finished baseline cell `{r.baseline}` in this matrix.", ""]
    lines += ["Split: **test**. Final test loss, paired by seed (cells of one seed share "
              "their initialisation and data order): diff = mean over seeds of (setting - "
              "baseline), with its 95% t interval; p from the paired t-test, Wilcoxon's "
              "signed-rank p where there are 6 pairs or more; Holm's adjustment over every "
              "comparison of this table; d_z = mean / sd of the differences. Mark from the "
              "Holm-adjusted p: ** < 0.01, * < 0.05, ns otherwise; with one pair, or "
              "differences all equal, no test is made and the row says so.", ""]
    return lines + md.md_table(
        ["setting", "sparsity", "test loss", "pairs", "diff", "95% CI", "p (paired t)",
         "p (Wilcoxon)", "p (Holm)", "d_z", "sig.", "caveats"],
        [_verdict_row(r, v) for v in r.verdict.itertuples()])


def _is_baseline(r: Report, row) -> bool:
    """Whether a table row (group, target_sparsity) is the baseline's own."""
    base = r.verdict[r.verdict["mark"] == "baseline"]
    return bool(((base["group"] == row.group)
                 & np.isclose(base["target_sparsity"].astype(float), row.target_sparsity)).any())


def speed(r: Report) -> list:
    if r.speed.empty:
        return []
    lines = ["## Speed", "", "Steady-state figures (compilation and warm-up left out): "
             "median [range] over seeds; ratio to the baseline paired by seed, geometric mean "
             "[95% interval]; \"no difference measured\" where the interval includes 1.", ""]
    header, rows = ["setting", "sparsity"], []
    for _, title, _, _ in SPEED_METRICS:
        header += [title, "ratio to baseline"]
    for s in r.speed.itertuples(index=False):
        row = [s.group, f"{s.target_sparsity:g}"]
        for metric, _, digits, words in SPEED_METRICS:
            row += [md.spread(getattr(s, metric), digits),
                    "baseline" if _is_baseline(r, s) else
                    md.ratio(getattr(s, f"{metric}_ratio"), *words)]
        rows.append(row)
    return lines + md.md_table(header, rows)


def time_to_target(r: Report) -> list:
    t = r.target
    lines = ["## Time to target", ""]
    if t["table"].empty or math.isnan(t["value"]):
        return lines + [f"No target: {t['source']}.", ""]
    lines += [f"Split: **validation** (the curve). Target validation loss {t['value']:.4f} "
              f"({t['source']}). Resolution: one evaluation every {t['resolution']} "
              "iterations, so a time is that of the first evaluation at or below the target. "
              "Median [range] over the seeds that reached it; seconds exclude compilation. "
              "Speed-up = baseline seconds / these, paired by seed.", ""]
    rows = [[g.group, f"{g.target_sparsity:g}", f"{g.reached}/{g.runs}",
             md.spread(g.iter, 0) if g.reached else "not reached",
             md.spread(g.tokens, 0) if g.reached else "not reached",
             md.spread(g.seconds, 1) if g.reached else "not reached",
             "baseline" if _is_baseline(r, g) else md.ratio(g.speedup, "faster", "slower")]
            for g in t["table"].itertuples()]
    return lines + md.md_table(["setting", "sparsity", "reached", "iterations", "tokens",
                                "seconds", "speed-up"], rows)


def caveat_list(r: Report) -> list:
    return caveats.section(r.flags) + caveats.provenance_section(r.cells)


def extra_budget(r: Report) -> list:
    df = r.cells
    extra = df[df["extra_budget"].notna() & (df["extra_budget"] != "")]
    if extra.empty:
        return []
    return (["## Extra budget", "", "These cells trained with more compute than the others "
             "(bitter2 spends what sparsity saves):", ""]
            + md.md_table(["cell", "extra budget"],
                          [[c.cell, c.extra_budget] for c in extra.itertuples()]))


def _cell_row(r: Report, c) -> list:
    mib = (lambda b, d: md.fmt(b / 2**20, d) if pd.notna(b) else "-")
    return [c.cell, c.status, _fmt_role(c.role), md.fmt_lr(c.learning_rate),
            _letters(r, cell=c.cell), md.fmt_or_na(c.test_loss, 4), md.fmt(c.val_ppl),
            md.fmt(c.achieved_sparsity), md.fmt(c.iters, 0), md.fmt(c.train_time_s, 1),
            md.fmt_or_na(c.steady_train_time_s, 1), md.fmt_or_na(c.compile_s, 1),
            md.fmt(c.wall_s, 1), md.fmt(c.overhead_s, 1), md.fmt(c.tokens_per_s, 0),
            mib(c.peak_mem_bytes, 1), mib(c.optimizer_state_bytes, 2),
            md.fmt_or_na(c.param_count, 0)]


def _fmt_role(role) -> str:
    return role if isinstance(role, str) and role else "grid"


def cells(r: Report) -> list:
    lines = ["## Cells", "", "Overhead is the process's wall time minus its training time "
             "(start-up, data, evaluation, sampling, checkpoints); steady s leaves compilation "
             "and warm-up out. Test loss is the test split's, val ppl the validation split's. "
             f"{md.PARAM_LABELS['param_count'].capitalize()} in the last column.", ""]
    return lines + md.md_table(
        ["cell", "status", "role", "lr", "caveats", "test loss", "val ppl", "sparsity", "iters",
         "train s", "steady s", "compile s", "wall s", "overhead s", "tokens/s", "peak MiB",
         "optimizer state MiB", md.PARAM_LABELS["param_count"]],
        [_cell_row(r, c) for c in r.cells.itertuples()])


def failures(r: Report) -> list:
    failed = r.cells[r.cells["status"] == "failed"]
    lines = ["## Failures", ""]
    if failed.empty:
        return lines + ["None.", ""]
    for c in failed.itertuples():
        lines += [f"### {c.cell}", "", f"- reason: {c.reason or '-'}",
                  f"- error: {c.error or '-'}", f"- log: `{c.cell}/stdout.log`, last lines:", "",
                  "```", *(c.log_tail or ["(empty)"]), "```", ""]
    return lines


def unfinished(r: Report) -> list:
    df = r.cells
    rest = df[df["status"].isin(["pending", "running", "interrupted", "stopped"])]
    if rest.empty:
        return []
    return (["## Not finished", "", "Run the matrix again to run or resume these (a trial "
             "stopped early by the tuner stays stopped, and never counts as complete):", ""]
            + [f"- {c.cell} ({c.status})" for c in rest.itertuples()] + [""])


def comparison(r: Report) -> list:
    if r.comparison is None:
        return []
    return ([f"## Compared with `{r.other_dir}`", "",
             "Per cell (id without its config hash): val perplexity here and there; "
             "delta = here - there.", ""]
            + md.md_table(["cell", "val ppl here", "val ppl there", "delta", "delta %"],
                          [[c.name, md.fmt(c.val_ppl_here), md.fmt(c.val_ppl_there),
                            md.fmt(c.delta), md.fmt(c.delta_pct, 2)]
                           for c in r.comparison.itertuples()]))


def environment(r: Report) -> list:
    lines = ["## Environment", ""]
    if r.env.empty:
        return lines + ["No env.json in any cell.", ""]
    lines += md.md_table(list(r.env.columns), r.env.values.tolist())
    params = sorted({md.params(s) for s in r.cells["summary"] if s})
    if params:
        lines += ["Model: " + " / ".join(params), ""]
    if len(r.env) > 1:
        lines += ["**The cells ran in different environments.**", ""]
    return lines


def plots(r: Report) -> list:
    lines = ["## Plots", ""]
    for name, (path, _) in r.plots.items():
        lines += [f"![{name}]({path.relative_to(r.matrix_dir).as_posix()})", ""]
    return lines
