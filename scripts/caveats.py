"""Caveats: the cells of a matrix that did not get what their label says, or that are not
compared on equal terms with the baseline. The report flags them in its tables and lists
them in its "Caveats" section; this module only reads run directories.

Each flag is one letter:
  S  achieved sparsity more than SPARSITY_TOLERANCE from the target (or pruning incomplete)
  C  more compute than the baseline: more tokens, a larger batch, or an extra budget (bitter2)
  H  hyperparameters (the learning rate among them) that differ from the baseline's
  N  fewer seeds than the most any group of the matrix has
  O  validation loss rose over the last OVERFIT_EVALS evaluations (overfitting)
  I  every seed of the setting gives exactly the same final loss: the seed did not reach
     something it should (initialisation or data order)

provenance_section lists the provenance fields (provenance.json) in which cells differ.
"""
import functools

import pandas as pd

from lib import config as cfglib
from lib import optim

FLAGS = {"S": "sparsity", "C": "compute", "H": "hyperparameters", "N": "seeds",
         "O": "overfitting", "I": "identical seeds"}
SPARSITY_TOLERANCE = 0.005  # half a percentage point
OVERFIT_EVALS = 3
# What a matrix varies on purpose: never a hyperparameter difference.
AXES = ("OPTIMIZER", "PRUNING", "ADAMWPRUNE_VARIANT")
AXIS_SYMBOLS = {"TARGET_SPARSITY", "SEED", "RUN_NAME", "RESULTS_DIR"}


@functools.lru_cache(maxsize=1)
def _axis_symbols() -> frozenset:
    tree = cfglib.load_tree()
    members = {s.name for name in AXES for s in tree.named_choices[name].syms}
    return frozenset(AXIS_SYMBOLS | set(AXES) | members)


def hyperparameter_diff(cell: dict, base: dict) -> dict:
    """{symbol: (cell value, baseline value)} for the symbols both configurations set and
    the matrix does not vary on purpose; symbols only one of them has (an optimizer's
    own knobs) are not compared."""
    skip = _axis_symbols()
    return {k: (v, base[k]) for k, v in cell.items()
            if k not in skip and v is not None and base.get(k) is not None and v != base[k]}


def _rising(losses: list) -> bool:
    tail = losses[-OVERFIT_EVALS:]
    return len(tail) >= 2 and all(a < b for a, b in zip(tail, tail[1:]))


def _baseline_of(cells: pd.DataFrame, baseline: str, seed):
    """The baseline cell to hold a cell against: same seed where there is one, and at the
    baseline's own learning rate (multiplier 1) where a sweep ran several."""
    base = cells[(cells["optimizer"] + "-" + cells["method"] == baseline)
                 & (cells["status"] == "done")]
    for column, value in (("seed", seed), ("lr_multiplier", 1)):
        if column in base.columns and (base[column] == value).any():
            base = base[base[column] == value]
    return None if base.empty else base.iloc[0]


def _identical_settings(done: pd.DataFrame, setting: pd.Series) -> dict:
    """{setting: "val_loss 2.1234"} for the settings of two or more seeds whose final
    validation (or test) losses are all exactly equal."""
    out = {}
    for key, g in done.groupby(setting, sort=False):
        for metric in ("val_loss", "test_loss"):
            values = g[metric].dropna() if metric in g.columns else pd.Series(dtype=float)
            if len(g) > 1 and len(values) == len(g) and values.nunique() == 1:
                out[key] = f"{metric} {values.iloc[0]:.6g}"
                break
    return out


def _sparsity(r, ctx) -> list:
    summary = ctx["summaries"][r.cell]
    if r.pruning == "none":
        return []
    off = (pd.isna(r.achieved_sparsity)
           or abs(r.achieved_sparsity - r.target_sparsity) > SPARSITY_TOLERANCE)
    if not (off or summary.get("pruning_incomplete")):
        return []
    return [("S", f"achieved sparsity {r.achieved_sparsity:.3f} for a target of "
                  f"{r.target_sparsity:g}"
                  + (" (pruning incomplete)" if summary.get("pruning_incomplete") else ""))]


def _compute(r, base, ctx) -> list:
    summary, more = ctx["summaries"][r.cell], []
    if pd.notna(r.tokens_seen) and pd.notna(base["tokens_seen"]) \
            and r.tokens_seen > base["tokens_seen"]:
        more.append(f"{int(r.tokens_seen):,} tokens against {int(base['tokens_seen']):,}")
    batch, base_batch = summary.get("batch_size"), ctx["summaries"][base["cell"]].get("batch_size")
    if batch and base_batch and batch > base_batch:
        more.append(f"batch {batch} against {base_batch}")
    if summary.get("extra_budget"):
        more.append(f"extra budget {summary['extra_budget']}")
    return [("C", "more compute than the baseline: " + "; ".join(more))] if more else []


def _tuned_symbols() -> set:
    """The symbols a tuning search may draw: every optimizer's rate, decay and own knobs."""
    return {s for e in optim.OPTIMIZERS.values() for s in (e.lr, e.weight_decay, *e.tuned)}


def _hyperparameters(r, base, ctx) -> list:
    diff = hyperparameter_diff(ctx["values"][r.cell], ctx["values"][base["cell"]])
    lr, base_lr = r.learning_rate, base["learning_rate"]
    if pd.notna(lr) and pd.notna(base_lr) and lr != base_lr:
        lr, base_lr = float(lr), float(base_lr)
        own = {entry.lr for entry in optim.OPTIMIZERS.values()}  # the same fact again
        diff = {"learning rate": (lr, base_lr), **{k: v for k, v in diff.items() if k not in own}}
    if getattr(r, "role", None) == "confirm":
        # each setting's values were chosen by the tuning protocol on the same budget as the
        # baseline's: a different rate is the point, not a caveat (see Tuning)
        tuned = _tuned_symbols() | {"learning rate"}
        diff = {k: v for k, v in diff.items() if k not in tuned}
    if not diff:
        return []
    return [("H", "differs from the baseline in " + ", ".join(
        f"{k} {a!r} (baseline {b!r})" for k, (a, b) in diff.items()))]


def _against_baseline(r, ctx) -> list:
    base = _baseline_of(ctx["done"], ctx["baseline"], r.seed)
    if base is None or base["cell"] == r.cell:
        return []
    return _compute(r, base, ctx) + _hyperparameters(r, base, ctx)


def _seeds(r, ctx) -> list:
    key = ctx["setting"][r.Index]
    n, most, out = int(ctx["seeds"][key]), ctx["most"], []
    if n < most:
        out.append(("N", f"{n} seed{'s' if n > 1 else ''}, where other groups have {most}"))
    if n > 1 and key in ctx["identical"]:
        out.append(("I", f"its {n} seeds give exactly the same final loss "
                         f"({ctx['identical'][key]}): the seed does not reach its "
                         "initialisation or data order"))
    return out


def _overfitting(r, ctx) -> list:
    curves = ctx["curves"]
    losses = curves[curves["cell"] == r.cell].sort_values("iter")["val_loss"].tolist()
    if not _rising(losses):
        return []
    tail = losses[-OVERFIT_EVALS:]
    return [("O", f"val loss rose over its last {len(tail)} evaluations: "
                  + " -> ".join(f"{v:.3f}" for v in tail))]


CHECKS = (_sparsity, _against_baseline, _seeds, _overfitting)  # each (cell, ctx) -> flags


def _context(done: pd.DataFrame, curves: pd.DataFrame, baseline: str) -> dict:
    # a setting at one learning rate is one group: its cells differ only in their seeds
    keys = [k for k in ("optimizer", "method", "target_sparsity", "learning_rate")
            if k in done.columns]
    setting = done[keys].astype(str).agg("|".join, axis=1) if not done.empty else done["cell"]
    seeds = setting.value_counts()
    return {"done": done, "curves": curves, "baseline": baseline, "setting": setting,
            "seeds": seeds, "most": int(seeds.max()) if not done.empty else 0,
            "values": dict(zip(done["cell"], done["config"])),
            "summaries": dict(zip(done["cell"], done["summary"])),
            "identical": _identical_settings(done, setting)}


def find(cells: pd.DataFrame, curves: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per (cell, flag) of the done cells: cell, group, target_sparsity,
    learning_rate, flag, text. `cells` is report.load_cells' frame, with each cell's
    config values and summary."""
    done = cells[cells["status"] == "done"]
    ctx = _context(done, curves, baseline)
    rows = [{"cell": r.cell, "group": f"{r.optimizer}-{r.method}",
             "target_sparsity": r.target_sparsity,
             "learning_rate": getattr(r, "learning_rate", None), "flag": letter, "text": text}
            for r in done.itertuples() for check in CHECKS for letter, text in check(r, ctx)]
    return pd.DataFrame(rows, columns=["cell", "group", "target_sparsity", "learning_rate",
                                       "flag", "text"])


def letters(found: pd.DataFrame, **where) -> str:
    """The flags of the rows matching where (column=value; None or NaN matches any), in
    FLAGS order: "[S,O]" or ""."""
    rows = found
    for column, value in where.items():
        if value is not None and not (isinstance(value, float) and pd.isna(value)):
            rows = rows[rows[column] == value]
    present = [f for f in FLAGS if f in set(rows["flag"])]
    return f"[{','.join(present)}]" if present else ""


def section(found: pd.DataFrame) -> list:
    """Markdown lines of the "Caveats" section."""
    lines = ["## Caveats", ""]
    if found.empty:
        return lines + ["None: every finished cell reached its target sparsity, trained on the "
                        "baseline's budget and hyperparameters, has as many seeds as the "
                        "others, its validation loss did not rise at the end, and its seeds "
                        "did not all give the same final loss.", ""]
    lines += ["Flags in the tables: " + ", ".join(f"{k} {v}" for k, v in FLAGS.items()) + ".",
              ""]
    for cell, rows in found.groupby("cell", sort=False):
        lines.append(f"- `{cell}` {letters(rows)}")
        lines += [f"  - {r.flag}: {r.text}" for r in rows.itertuples()]
    return lines + [""]


PER_CELL_PROVENANCE = ("argv",)


def _flat(provenance: dict, prefix="") -> dict:
    out = {}
    for key, value in (provenance or {}).items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def provenance_differences(cells: pd.DataFrame) -> dict:
    """{field: {value: [cell, ...]}} for every provenance.json field (versions.torch ...)
    whose value is not the same in every cell that has a provenance.json; a cell that has
    one without the field shows "n/a"."""
    # argv names each cell's own config by design: a difference there says nothing.
    flat = {c: {k: v for k, v in _flat(p).items() if k not in PER_CELL_PROVENANCE}
            for c, p in zip(cells["cell"], cells["provenance"]) if p}
    fields = sorted({k for f in flat.values() for k in f})
    out = {}
    for name in fields:
        values = {}
        for cell, f in flat.items():
            values.setdefault(repr(f[name]) if name in f else "n/a", []).append(cell)
        if len(values) > 1:
            out[name] = values
    return out


def provenance_section(cells: pd.DataFrame) -> list:
    """Markdown lines: the provenance fields the cells differ in, with each value's cells."""
    have = sum(1 for p in cells["provenance"] if p) if "provenance" in cells.columns else 0
    lines = ["### Provenance", ""]
    if not have:
        return lines + ["n/a: no cell has a provenance.json.", ""]
    missing = len(cells) - have
    if missing:
        lines += [f"- {missing} cells have no provenance.json (n/a)."]
    diffs = provenance_differences(cells)
    if not diffs and not missing:
        return lines + [f"Every cell ({have}) has the same provenance.", ""]
    for name, values in diffs.items():
        lines.append(f"- `{name}` differs:")
        lines += [f"  - {v}: {', '.join(f'`{c}`' for c in cs)}" for v, cs in values.items()]
    return lines + [""]
