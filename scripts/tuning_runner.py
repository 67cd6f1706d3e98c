"""The tuning runner: trials (with early stopping when on), selection, confirmations.

Phases, each resumable from the files alone (state/<cell>.json, each trial's summary):
1. trials: every group's MATRIX_TUNING_TRIALS trials run to the first rung (or to the end
   without early stopping); scripts.asha replays the rung decisions from the recorded
   validation losses, so the trials it promotes resume from their checkpoints
   (`--stop-at` the next rung) and those it stops are told so once
   (`--stop-at N --early-stop-rung K`: their summary says "stopped early ...");
2. selection: the finished trial of each group with the lowest final validation loss,
   written atomically to <matrix>/tuning.json with every trial's values and losses, the
   edge flags, the early stops and the compute used and saved;
3. confirmations: each selection at MATRIX_SEEDS fresh seeds, run to the end, never
   stopped. A rerun of a finished matrix starts nothing.
"""
import math
import signal
import time

from tqdm import tqdm

from gpt2 import budget
from gpt2.data import DataError
from lib import config as cfglib
from lib.config import ConfigError
from lib.fsutil import atomic_write_json, atomic_write_text
from lib.stop import STOP_SIGNALS
from scripts import asha, tuning
from scripts import matrix_cells, matrix_runner, matrix_state


def total_iters(cell):
    """The cell's budget in iterations (None for BUDGET=minutes)."""
    cfg = cfglib.from_kconf(cell.kconf, cell.config)
    try:
        tokens = budget.train_tokens(cfg) if cfg.BUDGET == "epochs" else None
    except DataError as e:
        raise ConfigError(f"cell {cell.name}: the rungs of an epochs budget need the "
                          f"dataset's size: {e}") from None
    return budget.Budget(cfg, budget.tokens_per_iter(cfg), tokens).total_iters


def group_rungs(m) -> dict:
    """{group: [rung iterations]} (one rung, the end, without early stopping)."""
    out = {}
    for cell in m.cells:
        if cell.spec.group not in out:
            total = total_iters(cell)
            cfg = m.cfg
            out[cell.spec.group] = (
                asha.rungs(total, cfg.EVAL_INTERVAL, cfg.MATRIX_ASHA_ETA,
                           cfg.MATRIX_ASHA_MIN_ITERS)
                if cfg.MATRIX_EARLY_STOP == "asha" else [total])
    return out


def check(m) -> None:
    """Refuse what tuning cannot do, before any cell runs (and in the dry run)."""
    if m.cfg.MATRIX_EXECUTOR != "local":
        raise ConfigError("MATRIX_TUNING_TRIALS with MATRIX_EXECUTOR_SLURM: tuning's phases "
                          "run on the local executor only; select MATRIX_EXECUTOR_LOCAL or "
                          "set MATRIX_TUNING_TRIALS=0")
    group_rungs(m)
    # the confirmations' seeds take, before any trial runs (the last one is the largest)
    matrix_cells.make_cells(m, tuning.confirm_specs(m.cfg, [m.cells[0].spec])[-1:])


def dry_run_lines(m) -> list:
    rungs = group_rungs(m)
    lines = [f"tuning: {m.cfg.MATRIX_TUNING_TRIALS} trials per group at seed {m.cfg.SEED}, "
             f"early stopping {m.cfg.MATRIX_EARLY_STOP}"]
    for group, points in rungs.items():
        lines.append(f"  {group}: rungs at {', '.join(str(p) for p in points)} iterations")
    for cell in m.cells:
        lines.append(f"  {cell.id}: {' '.join(cell.spec.settings)}")
    seeds = tuning.confirmation_seeds(m.cfg)
    lines.append(f"then each group's selection at seeds {', '.join(map(str, seeds))}: "
                 f"{len(rungs) * len(seeds)} confirmation cells")
    return lines


class TuningRunner(matrix_runner.Runner):
    @staticmethod
    def outcome(exit_code, summary, runner_signalled=False) -> tuple:
        """A trial stopped at a rung (--stop-at) is "stopped": paused, or stopped early."""
        if exit_code == 0 and summary.get("status") == "stopped":
            return "stopped", (summary.get("stop_reason")
                               or f"paused at iteration {summary.get('iters')}")
        return matrix_state.outcome(exit_code, summary, runner_signalled)

    def _run(self) -> int:
        m = self.m
        m.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(m.path / "matrix.config", cfglib.config_text(m.kconf))
        self.trials, self.rungs, self.states = list(m.cells), group_rungs(m), {}
        self.expected = {}  # cell id -> the rung index its running attempt stops at
        for cell in self.trials:
            self.load(cell)
        print(f"matrix {m.path}: {len(self.rungs)} groups x {m.cfg.MATRIX_TUNING_TRIALS} trials "
              f"(rungs {', '.join(str(r) for r in next(iter(self.rungs.values())))}), then "
              f"{m.cfg.MATRIX_SEEDS} confirmation seeds per group; {self.jobs} at once",
              flush=True)
        self.where = self.placement(len(self.trials))
        old = {sig: signal.signal(sig, self.on_signal) for sig in STOP_SIGNALS}
        bar = tqdm(unit="run", desc="tuning", dynamic_ncols=True, disable=None)
        try:
            self.prepare(self.trials)
            if not self.drive(self.trial_actions, bar):
                return 130
            record = self.selection()
            confirms = self.confirmations(record)
            if not self.drive(lambda: self.confirm_actions(confirms), bar):
                return 130
        finally:
            bar.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        self.report()
        return self.summarize(confirms)

    def load(self, cell) -> None:
        matrix_cells.write_cell_config(cell)
        state = matrix_state.read_state(self.m.state_path(cell)) or matrix_state.new_state(cell)
        if state.get("status") == "running":
            matrix_state.close_dead_attempt(state, cell.log)
            state["status"] = "interrupted"
        if state.get("status") == "failed" and self.retry_failed:
            state.update(status="pending", rungs={})
        state.setdefault("rungs", {})
        self.states[cell.id] = state
        self.write_state(cell, state)

    def drive(self, actions, bar) -> bool:
        """Start what actions() asks for, MATRIX_JOBS at once, until it asks nothing and
        nothing runs; False when a stop signal came (the cells were stopped)."""
        gpus, threads = self.where
        while True:
            if self.signal is not None:
                self.interrupt(bar)
                return False
            busy = {c.id for (c, *_) in self.running.values()}
            todo = [(c, a) for c, a in actions() if c.id not in busy]
            halt = self.new_failures and self.stop_on_failure
            if (not todo or halt) and not self.running:
                return True
            while todo and len(self.running) < self.jobs and not halt:
                cell, (rung, args) = todo.pop(0)
                self.expected[cell.id] = rung
                gpu = matrix_runner.pick_gpu(gpus, [g for (*_, g) in self.running.values()])
                self.start(cell, self.states[cell.id], gpu, threads, args)
            time.sleep(matrix_runner.POLL_S)
            for proc in [p for p in self.running if p.poll() is not None]:
                cell = self.running[proc][0]
                self.finish(proc, bar)
                self.record(cell)

    def record(self, cell) -> None:
        """Keep the validation loss of the rung the attempt stopped at (or the end)."""
        state, rung = self.states[cell.id], self.expected.pop(cell.id, None)
        if state["status"] not in ("stopped", "done") or rung is None:
            return
        summary = matrix_state.read_summary(cell)
        target = self.rungs[cell.spec.group][rung]
        if target is not None and summary.get("eval_iter") != target:
            state.update(status="failed", reason=f"no validation loss at rung {rung} "
                         f"(iteration {target}; its last evaluation is at {summary.get('eval_iter')})")
        else:
            state["rungs"][str(rung)] = summary.get("val_loss")
            if summary.get("early_stop"):
                state["early_stop"] = summary["early_stop"]
        self.write_state(cell, state)

    def plans(self) -> dict:
        """{group: (trial cells, asha.Plan)} from the losses recorded so far."""
        out = {}
        for group, rungs in self.rungs.items():
            cells = [c for c in self.trials if c.spec.group == group]
            losses = {(c.id, int(k)): v if v is not None else math.inf
                      for c in cells for k, v in self.states[c.id]["rungs"].items()}
            failed = {c.id for c in cells if self.states[c.id]["status"] == "failed"}
            out[group] = (cells, asha.plan([c.id for c in cells], losses, len(rungs),
                                           self.m.cfg.MATRIX_ASHA_ETA or 1, failed))
        return out

    def trial_actions(self) -> list:
        """[(cell, (rung, trainer args))]: trials to run to their rung, stops to record."""
        out = []
        for group, (cells, plan) in self.plans().items():
            rungs, by_id = self.rungs[group], {c.id: c for c in cells}
            for cell_id in plan.to_run:
                last = plan.rung == len(rungs) - 1
                out.append((by_id[cell_id], (plan.rung, [] if last else
                                             ["--stop-at", str(rungs[plan.rung])])))
            for cell_id, k in plan.stopped.items():
                if not self.states[cell_id].get("early_stop"):
                    out.append((by_id[cell_id], (k, ["--stop-at", str(rungs[k]),
                                                     "--early-stop-rung", str(k)])))
        return out

    def selection(self) -> dict:
        from scripts.tuning_report import record
        data = record(self.m, self.trials, self.states, self.rungs, self.plans())
        atomic_write_json(self.m.path / "tuning.json", data)
        return data

    def confirmations(self, data) -> list:
        by_id = {c.id: c for c in self.trials}
        chosen = [by_id[g["selected"]].spec for g in data["groups"].values() if g["selected"]]
        cells = matrix_cells.make_cells(self.m, tuning.confirm_specs(self.m.cfg, chosen))
        self.m.cells = self.trials + cells
        for cell in cells:
            self.load(cell)
        for group in data["groups"].values():
            group["confirmations"] = [c.id for c in cells if c.spec.group == group["group"]]
        atomic_write_json(self.m.path / "tuning.json", data)
        return cells

    def confirm_actions(self, cells) -> list:
        return [(c, (None, [])) for c in cells
                if matrix_state.should_run(self.states[c.id], self.retry_failed)[0]
                and c.id not in {f.id for f in self.new_failures}]

    def summarize(self, confirms) -> int:
        """Exit 0 when every confirmation is done; a trial that diverged (exit 3) is a
        result of tuning, not a failure of the matrix."""
        bad = [c for c in self.m.cells if self.states[c.id]["status"] in
               ("failed", "pending", "running", "interrupted")
               and not (c.spec.role == "trial" and self.states[c.id].get("exit_code") == 3)]
        done = sum(self.states[c.id]["status"] == "done" for c in confirms)
        print(f"matrix {self.m.path}: {len(self.trials)} trials, {done} of {len(confirms)} "
              f"confirmations done, {len(bad)} failed or not run")
        for cell in bad:
            print(f"  {self.states[cell.id]['status']}: {cell.id} "
                  f"({self.states[cell.id].get('reason')})")
        return 1 if bad or len(confirms) == 0 else 0
