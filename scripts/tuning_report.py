"""<matrix>/tuning.json: what the tuning runner records after its trials (record), and the
report's section about it (section)."""
import json
from pathlib import Path

from gpt2 import budget
from lib import config as cfglib
from scripts import tuning
from scripts.report_md import md_table
from scripts.matrix_state import read_summary


def trial_row(cell, state) -> dict:
    summary = read_summary(cell)
    return {"cell": cell.id, "trial": cell.spec.trial, "values": tuning.values_of(cell.spec),
            "lr_multiplier": cell.spec.lr_multiplier, "status": state["status"],
            "val_loss": summary.get("val_loss") if state["status"] == "done" else None,
            "rung_losses": {k: state["rungs"][k] for k in sorted(state["rungs"], key=int)},
            "iters": summary.get("iters") or 0, "early_stop": state.get("early_stop")}


def group_record(cfg, cells, states, rungs) -> tuple:
    """(the group's entry of tuning.json, {iters/tokens trained and full})."""
    rows = [trial_row(c, states[c.id]) for c in cells]
    final = {r["cell"]: r["val_loss"] for r in rows}
    chosen = tuning.select([c.id for c in cells], final)
    spec = next((c.spec for c in cells if c.id == chosen), None)
    total = rungs[-1]
    per_iter = budget.tokens_per_iter(cfglib.from_kconf(cells[0].kconf, cells[0].config))
    trained = sum(r["iters"] for r in rows)
    full = sum(total if total is not None else r["iters"] for r in rows)
    entry = {"group": spec.group if spec else cells[0].spec.group,
             "optimizer": cells[0].spec.optimizer, "method": cells[0].spec.method,
             "target_sparsity": cells[0].spec.sparsity, "extra": cells[0].spec.extra,
             "rungs": rungs, "tokens_per_iter": per_iter, "trials": rows, "selected": chosen,
             "selected_values": tuning.values_of(spec) if spec else None,
             "selected_val_loss": final.get(chosen),
             "edge": tuning.edge_flags(cfg, spec) if spec else [],
             "early_stops": {r["cell"]: r["early_stop"] for r in rows if r["early_stop"]}}
    return entry, {"iters_trained": trained, "iters_full": full,
                   "tokens_trained": trained * per_iter, "tokens_full": full * per_iter}


def record(m, trials, states, rungs, plans) -> dict:
    cfg, groups = m.cfg, {}
    compute = dict.fromkeys(("iters_trained", "iters_full", "tokens_trained", "tokens_full"), 0)
    for group, (cells, _) in plans.items():
        groups[group], used = group_record(cfg, cells, states, rungs[group])
        compute = {k: compute[k] + used[k] for k in compute}
    compute["iters_saved"] = compute["iters_full"] - compute["iters_trained"]
    compute["tokens_saved"] = compute["tokens_full"] - compute["tokens_trained"]
    return {"trials_per_group": cfg.MATRIX_TUNING_TRIALS,
            "draw": "MATRIX_LR_MULTIPLIERS grid" if tuning.is_grid(cfg) else "scrambled Halton",
            "draw_seed": cfg.MATRIX_TUNING_SEED, "trial_seed": cfg.SEED,
            "confirmation_seeds": tuning.confirmation_seeds(cfg),
            "early_stop": cfg.MATRIX_EARLY_STOP, "eta": cfg.MATRIX_ASHA_ETA,
            "groups": groups, "compute": compute}


def _values(values) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in (values or {}).items()) or "-"


def _loss(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "-"


def _trial_cells(g: dict, t: dict) -> list:
    """One trial's row of the section's first table."""
    rungs = ", ".join(f"{g['rungs'][int(k)]}: {_loss(v)}" for k, v in t["rung_losses"].items())
    status = (f"stopped early at iteration {t['early_stop']['iter']} (ASHA rung "
              f"{t['early_stop']['rung']})" if t["early_stop"] else t["status"])
    return [g["group"], t["trial"], _values(t["values"]), status, rungs or "-",
            _loss(t["val_loss"])]


def section(data: dict) -> list:
    """Markdown lines: the trials, the selections, the edge flags, what early stopping saved."""
    lines = ["## Tuning", "",
             f"{data['trials_per_group']} trials per group ({data['draw']}, draw seed "
             f"{data['draw_seed']}), trained at seed {data['trial_seed']}; early stopping: "
             f"{data['early_stop']}{' (eta ' + str(data['eta']) + ')' if data['eta'] else ''}. "
             f"Each group's selection (lowest final validation loss) ran at seeds "
             f"{', '.join(map(str, data['confirmation_seeds']))}: only those confirmation "
             f"cells enter the verdict.", ""]
    lines += md_table(["group", "trial", "values", "status", "rung val losses",
                       "final val loss"],
                      [_trial_cells(g, t) for g in data["groups"].values() for t in g["trials"]])
    lines += md_table(["group", "selected", "values", "val loss", "confirmations", "edge"],
                      [[g["group"], g["selected"] or "none finished",
                        _values(g["selected_values"]), _loss(g["selected_val_loss"]),
                        len(g.get("confirmations", [])), "; ".join(g["edge"]) or "-"]
                       for g in data["groups"].values()])
    c = data["compute"]
    share = c["iters_saved"] / c["iters_full"] if c["iters_full"] else 0.0
    lines += [f"Trials trained {c['iters_trained']:,} of {c['iters_full']:,} iterations "
              f"({c['tokens_trained']:,} of {c['tokens_full']:,} tokens); early stopping saved "
              f"{c['iters_saved']:,} iterations and {c['tokens_saved']:,} tokens ({share:.0%}) "
              f"against running every trial to the end.", ""]
    return lines


def report_section(matrix_dir) -> list:
    """Markdown lines for the report from <matrix_dir>/tuning.json ([] without tuning)."""
    path = Path(matrix_dir) / "tuning.json"
    if not path.exists():
        return []
    return section(json.loads(path.read_text()))
