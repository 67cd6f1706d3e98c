"""The report's reading half: a matrix directory's run directories and state files into
pandas frames. Reads only results (config, summary.json, metrics.jsonl, env.json,
provenance.json, state/<cell>.json); fields older run directories lack come back as NaN
or None, never as a guess."""
import json
import re
from pathlib import Path

import pandas as pd

from lib import config as cfglib
from lib import optim
from lib.config import ConfigError

DEFAULT_BASELINE = "adamw-none"
HASH_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
COLUMNS = ["cell", "name", "role", "optimizer", "pruning", "variant", "method", "extra", "seed",
           "learning_rate", "lr_multiplier", "target_sparsity", "achieved_sparsity", "train_loss",
           "val_loss", "val_ppl", "best_val_ppl", "test_loss", "test_ppl", "test_acc", "iters",
           "tokens_seen", "train_time_s", "steady_train_time_s", "compile_s", "wall_s",
           "overhead_s", "startup_s", "tokens_per_s", "peak_mem_bytes", "peak_mem_kind",
           "optimizer_state_bytes", "param_count", "init_hash", "data_hash", "extra_budget",
           "status", "exit_code", "reason", "error"]
SUMMARY_KEYS = ("train_loss", "val_loss", "val_ppl", "best_val_ppl", "test_loss", "test_ppl",
                "test_acc", "iters", "tokens_seen", "train_time_s", "steady_train_time_s",
                "compile_s", "tokens_per_s", "peak_mem_bytes", "peak_mem_kind",
                "optimizer_state_bytes", "param_count", "init_hash", "data_hash",
                "extra_budget", "startup_s")
FLOATS = ("learning_rate", "lr_multiplier", "target_sparsity", "achieved_sparsity", "train_loss",
          "val_loss", "val_ppl", "best_val_ppl", "test_loss", "test_ppl", "test_acc",
          "train_time_s", "steady_train_time_s", "compile_s", "wall_s", "overhead_s",
          "tokens_per_s")
INTS = ("seed", "iters", "tokens_seen", "peak_mem_bytes", "optimizer_state_bytes",
        "param_count", "exit_code")
CURVE_COLUMNS = ["cell", "optimizer", "method", "target_sparsity", "seed", "iter", "tokens",
                 "elapsed_s", "val_loss"]


def name_of(cell_id: str) -> str:
    """The cell id without its config hash: adamw-none-seed1337."""
    return HASH_SUFFIX.sub("", cell_id)


def read_json(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return default


def load_config(path):
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


def choice_order(name: str) -> list:
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


def _identity(run: Path, state: dict, summary: dict) -> dict:
    """Optimizer, pruning, variant, seed, sparsity and learning rate: from the cell's
    config, else from its state file."""
    if (run / "config").is_file():
        cfg = load_config(run / "config")
        row = dict(optimizer=cfg.OPTIMIZER, pruning=cfg.PRUNING, variant=cfg.ADAMWPRUNE_VARIANT,
                   seed=cfg.SEED, target_sparsity=cfg.TARGET_SPARSITY,
                   learning_rate=_learning_rate(cfg), config=dict(cfg.items()),
                   eval_interval=cfg.get("EVAL_INTERVAL"))
    else:
        row = {k: state.get(k) for k in ("optimizer", "pruning", "variant", "seed",
                                         "target_sparsity", "learning_rate")}
        row.update(config={}, eval_interval=None)
    if row["learning_rate"] is None:
        row["learning_rate"] = summary.get("learning_rate")
    if row["pruning"] == "none":
        row["target_sparsity"] = 0.0
    row["method"] = f"{row['pruning']}-{row['variant']}" if row.get("variant") else row["pruning"]
    row["extra"] = state.get("extra")
    if row["extra"]:  # the matrix's extra dimension: shown beside the method, grouped apart
        row["method"] = f"{row['method']}[{row['extra']}]"
    return row


def _status(state: dict, summary: dict) -> str:
    """done only for a complete run; a trial stopped early (ASHA) is "stopped", whatever
    the runner's state says, and never counts as complete."""
    if summary.get("status") == "stopped" or summary.get("early_stop"):
        return "stopped"
    status = state.get("status")
    if status is None:  # a run directory without a runner state
        status = "done" if summary.get("status") == "complete" else (
            summary.get("status") or "pending")
    return status


def _row(matrix_dir: Path, cell_id: str) -> dict:
    run = matrix_dir / cell_id
    state = read_json(matrix_dir / "state" / f"{cell_id}.json", {})
    summary = read_json(run / "summary.json", {})
    row = {"cell": cell_id, "name": name_of(cell_id), "summary": summary,
           "role": state.get("role"), "provenance": read_json(run / "provenance.json", {}),
           **_identity(run, state, summary)}
    row["lr_multiplier"] = state.get("lr_multiplier", 1.0)
    row.update({k: summary.get(k) for k in SUMMARY_KEYS})
    if "sparsity" in summary:
        row["achieved_sparsity"] = summary["sparsity"]
    else:
        row["achieved_sparsity"] = 0.0 if row["pruning"] == "none" else None
    wall = state.get("wall_s") or None
    row["wall_s"] = wall
    row["overhead_s"] = (wall - row["train_time_s"]
                         if wall is not None and row["train_time_s"] is not None else None)
    row.update(status=_status(state, summary), exit_code=state.get("exit_code"),
               reason=state.get("reason"), error=state.get("error") or summary.get("error"))
    row["log_tail"] = state.get("log_tail") or []
    return row


def load_cells(matrix_dir) -> pd.DataFrame:
    """One row per cell, from its config, summary.json, provenance.json and state file
    (each read once; the config's values, the summary and the provenance stay in the row
    for the caveats)."""
    matrix_dir = Path(matrix_dir)
    rows = [_row(matrix_dir, cell_id) for cell_id in cell_ids(matrix_dir)]
    extra = ["log_tail", "config", "summary", "provenance", "eval_interval"]
    df = pd.DataFrame(rows, columns=COLUMNS + extra)
    for col in FLOATS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in INTS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return _sorted(df)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    opt_rank = {o: i for i, o in enumerate(choice_order("OPTIMIZER"))}
    prune_rank = {p: i for i, p in enumerate(choice_order("PRUNING"))}
    keys = pd.DataFrame({
        "o": df["optimizer"].map(lambda o: opt_rank.get(o, len(opt_rank))),
        "p": df["pruning"].map(lambda p: prune_rank.get(p, len(prune_rank))),
        "v": df["variant"].fillna(""), "s": df["target_sparsity"], "seed": df["seed"]})
    return df.loc[keys.sort_values(["o", "p", "v", "s", "seed"]).index].reset_index(drop=True)


def _eval_records(path: Path) -> list:
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("kind") == "eval":
            records.append(record)
    return records


def load_curves(matrix_dir, cells: pd.DataFrame) -> pd.DataFrame:
    """Long table of eval records: cell, optimizer, method, target_sparsity, seed, iter,
    tokens, elapsed_s, val_loss (tokens and elapsed_s NaN where a record lacks them)."""
    rows = []
    for cell in cells.itertuples():
        path = Path(matrix_dir) / cell.cell / "metrics.jsonl"
        if not path.is_file():
            continue
        for record in _eval_records(path):
            rows.append({"cell": cell.cell, "optimizer": cell.optimizer,
                         "method": cell.method, "target_sparsity": cell.target_sparsity,
                         "seed": cell.seed, "iter": record["iter"],
                         "tokens": record.get("tokens"), "elapsed_s": record.get("elapsed_s"),
                         "val_loss": record["val_loss"]})
    curves = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    for col in ("tokens", "elapsed_s", "val_loss"):
        curves[col] = pd.to_numeric(curves[col], errors="coerce").astype(float)
    return curves


def environment(matrix_dir, cells: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for cell_id in cells["cell"]:
        env = read_json(Path(matrix_dir) / cell_id / "env.json")
        if env:
            rows.append({k: "-" if env.get(k) is None else str(env[k])
                         for k in ("device", "device_name", "torch", "cuda", "hip", "python",
                                   "git_sha", "git_dirty")})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).drop_duplicates().reset_index(drop=True)


def matrix_setting(matrix_dir, name: str, default=None):
    """A symbol of the matrix's own matrix.config (its Kconfig default for a matrix written
    before the symbol existed), or `default` without a matrix.config."""
    path = Path(matrix_dir) / "matrix.config"
    return load_config(path).get(name) if path.is_file() else default


def matrix_baseline(matrix_dir) -> str:
    return matrix_setting(matrix_dir, "MATRIX_BASELINE") or DEFAULT_BASELINE
