"""The runner's record of a cell (state/<cell id>.json) and the outcome of a trainer
process."""
import json
import os
import signal
from pathlib import Path

from lib.stop import STOP_SIGNALS  # a cell they end is interrupted, and resumes next run

LOG_TAIL_LINES = 20
EXIT_MEANINGS = {2: "bad configuration or input", 3: "training failed", 130: "interrupted"}


def read_state(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        return {}


def new_state(cell) -> dict:
    s = cell.spec
    return {"cell": cell.id, "name": s.name, "optimizer": s.optimizer, "pruning": s.pruning,
            "variant": s.variant, "target_sparsity": s.sparsity, "seed": s.seed,
            "lr_multiplier": s.lr_multiplier, "extra": s.extra,
            "learning_rate": cell.learning_rate,
            "config": f"{cell.id}/config", "status": "pending", "pid": None,
            "started_at": None, "finished_at": None, "exit_code": None, "reason": None,
            "error": None, "log_tail": [], "attempts": [], "wall_s": 0.0,
            **({"role": s.role, "trial": s.trial, "group": s.group,
                "values": {k: float(v) for k, v in (x.split("=", 1) for x in s.settings)}}
               if s.role else {})}


def should_run(state: dict, retry_failed: bool) -> tuple:
    """(run it?, why) for a cell's state. The runner holds the matrix lock, and
    so do the cells it started, so a "running" state here is one whose runner
    and trainer are gone: resume it (the trainer picks up its checkpoint)."""
    status = state.get("status", "pending")
    if status == "done":
        return False, "done"
    if status == "running":
        return True, "resume (its runner stopped)"
    if status == "interrupted":
        return True, "resume (interrupted)"
    if status == "failed":
        if state.get("exit_code") == 130:  # recorded so by an older runner
            return True, "resume (interrupted)"
        if retry_failed:
            return True, "retry (--retry-failed)"
        return False, "failed (rerun with --retry-failed)"
    return True, "pending"


def close_dead_attempt(state: dict, log: Path) -> None:
    """An attempt left open by a runner that died: estimate its end from the
    last write to the cell's log, so the wall time stays about right."""
    for attempt in state.get("attempts", []):
        if attempt.get("finished_at") is None:
            end = log.stat().st_mtime if log.exists() else attempt["started_at"]
            attempt.update(finished_at=max(end, attempt["started_at"]), exit_code=None,
                           wall_s=max(0.0, end - attempt["started_at"]), wall_estimated=True)
    state["wall_s"] = sum(a.get("wall_s") or 0.0 for a in state.get("attempts", []))


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def read_summary(cell) -> dict:
    try:
        return json.loads((cell.dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def outcome(exit_code: int, summary: dict, runner_signalled: bool = False) -> tuple:
    """(status, reason) of a finished trainer process. Stopped by a stop signal (its
    own, or the runner's while the runner was being stopped) is interrupted."""
    if exit_code == 0 and summary.get("status") == "complete":
        return "done", None
    if exit_code == 130:
        return "interrupted", "exit 130 (interrupted)"
    if exit_code < 0 and -exit_code in STOP_SIGNALS:
        return "interrupted", f"stopped by {signal.Signals(-exit_code).name}"
    if runner_signalled and exit_code not in (0, 3):
        return "interrupted", f"exit {exit_code} while the matrix was being stopped"
    if exit_code == 0:
        return "failed", (f"exit 0 but summary.json status is "
                          f"{summary.get('status')!r}, not 'complete'")
    if exit_code < 0:
        return "failed", f"killed by signal {-exit_code}"
    meaning = EXIT_MEANINGS.get(exit_code, "crashed")
    return "failed", f"exit {exit_code} ({meaning})"
