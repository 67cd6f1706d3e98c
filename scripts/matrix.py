"""The test matrix: python -m scripts.matrix [CONFIG] [--dry-run] [--retry-failed] [--set NAME=VALUE ...]

Expands the "Test matrix" settings of a .config (MATRIX=y) into cells, one
optimizer x pruning method (x AdamWPrune variant x sparsity) (x learning-rate
multiplier) x seed each, every optimizer at its own <OPTIMIZER>_LR,
writes every cell's own .config through kconfiglib, runs the ordinary trainer
on each in its own process (MATRIX_JOBS at once), and writes the comparison
report (scripts.report) at the end. Run it again to resume: finished cells are
skipped, interrupted ones resume from their checkpoints, failed ones are
retried only with --retry-failed.

Layout, under results/<RECIPE>-matrix-<hash>/ (the hash ignores RESULTS_DIR, RUN_NAME,
MATRIX_JOBS, MATRIX_BASELINE and MATRIX_ON_FAILURE):
  matrix.config        the matrix configuration (with --set applied)
  <cell id>/           each cell's ordinary run directory (see README.md); its
                       `config` is written here before the trainer starts and is
                       byte for byte what the trainer would write itself
  <cell id>/stdout.log the trainer's stdout and stderr, every attempt appended
  state/<cell id>.json the runner's record of the cell (pending, running, done,
                       interrupted, failed)
  summary.csv, report.md, plots/   the report

Exit status: 0 every cell done, 1 a cell failed (or was left pending by
MATRIX_ON_FAILURE=stop), 2 bad configuration or matrix mode off, 130 interrupted.
"""
import argparse
import fnmatch
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lib import config as cfglib
from lib import distributed, optim, trackers
from lib.config import ConfigError
from lib.fsutil import atomic_write_json, atomic_write_text, lock_directory, safe_name
from gpt2.budget import check_pruning
from gpt2.data import DataError
from lib.run import OFF_HINT, RunDir, matrix_dir, results_setting

# Test hook: comma-separated fnmatch patterns of cell ids whose trainer is
# replaced by a stand-in that prints a log, writes a failed summary.json and
# exits 3. Honoured only here; never set it outside tests.
FAIL_CELLS_ENV = "KMATRIX_TEST_FAIL_CELLS"
LOG_TAIL_LINES = 20
EXIT_MEANINGS = {2: "bad configuration or input", 3: "training failed", 130: "interrupted"}
# Signals by which a user (Ctrl-C, kill) or a batch scheduler stops work: a cell they end
# is interrupted, not failed, and resumes on the next run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
POLL_S = 0.2

_FAKE_FAILURE = """\
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
for i in range(30):
    print(f"stand-in trainer line {i}")
print("stand-in trainer: injected failure", file=sys.stderr)
(run / "summary.json").write_text(json.dumps(
    {"status": "failed", "error": "injected failure (KMATRIX_TEST_FAIL_CELLS)"}))
sys.exit(3)
"""


# ------------------------------------------------------------------ the grid

@functools.lru_cache(maxsize=1)
def state_optimizers() -> tuple:
    """Optimizers AdamWPrune can prune from: those with which the Kconfig tree lets
    PRUNING_STATE be selected (its `depends on` is the one place that says so)."""
    tree = cfglib.load_tree()
    allowed = []
    for member in tree.named_choices["OPTIMIZER"].syms:
        member.set_value("y")
        if tree.syms["PRUNING_STATE"].visibility:
            allowed.append(member.name.removeprefix("OPTIMIZER_").lower().replace("_", "-"))
    return tuple(allowed)


@dataclass(frozen=True)
class CellSpec:
    """One point of the grid, before it has a configuration."""
    optimizer: str
    pruning: str
    variant: str = None
    sparsity: float = None
    seed: int = 0
    lr_multiplier: float = 1.0
    lr_setting: str = None  # NAME=VALUE of the optimizer's LR symbol, when not x1
    extra_symbol: str = None  # MATRIX_EXTRA_SYMBOL and this cell's value of it
    extra_value: str = None

    @property
    def extra(self) -> str:
        """"SYMBOL=value" of the extra dimension, or None."""
        return f"{self.extra_symbol}={self.extra_value}" if self.extra_symbol else None

    @property
    def method(self) -> str:
        """The pruning column of the report: none, magnitude, state-bitter0, ..."""
        return f"{self.pruning}-{self.variant}" if self.variant else self.pruning

    @property
    def name(self) -> str:
        """The readable part of the cell id: adamw-state-bitter0-s0.5[-lr0.3x]-seed1337."""
        parts = [self.optimizer, self.method]
        if self.sparsity is not None:
            parts.append(f"s{self.sparsity:g}")
        if self.lr_setting:
            parts.append(f"lr{self.lr_multiplier:g}x")
        if self.extra_symbol:
            parts.append(f"{self.extra_symbol.lower()}-{safe_name(self.extra_value)}")
        return "-".join(parts + [f"seed{self.seed}"])

    def overrides(self) -> list:
        """NAME=VALUE assignments that turn the matrix config into this cell's."""
        out = ["MATRIX=n", f"OPTIMIZER={self.optimizer}", f"PRUNING={self.pruning}"]
        if self.variant:
            out.append(f"ADAMWPRUNE_VARIANT={self.variant}")
        if self.sparsity is not None:
            out.append(f"TARGET_SPARSITY={self.sparsity:g}")
        if self.lr_setting:
            out.append(self.lr_setting)
        if self.extra_symbol:
            out.append(self.extra)
        return out + [f"SEED={self.seed}"]


# Dimensions the grid sweeps itself; the extra dimension may not take them.
OWN_DIMENSIONS = ("OPTIMIZER", "PRUNING", "ADAMWPRUNE_VARIANT", "TARGET_SPARSITY", "SEED",
                  "MATRIX", "RESULTS_DIR", "RUN_NAME")


def extra_dimension(cfg) -> list:
    """[(symbol, value)] of MATRIX_EXTRA_SYMBOL x MATRIX_EXTRA_VALUES, or [(None, None)]."""
    symbol = (cfg.MATRIX_EXTRA_SYMBOL or "").strip().removeprefix("CONFIG_")
    values = (cfg.MATRIX_EXTRA_VALUES or "").split()
    if not symbol and not values:
        return [(None, None)]
    if not symbol:
        raise ConfigError(f"MATRIX_EXTRA_VALUES=\"{cfg.MATRIX_EXTRA_VALUES}\" without "
                          f"MATRIX_EXTRA_SYMBOL: name the symbol the values are for")
    if not values:
        raise ConfigError(f"MATRIX_EXTRA_SYMBOL={symbol} without MATRIX_EXTRA_VALUES: list "
                          f"its values, space-separated")
    lr_symbols = {entry.lr for entry in optim.OPTIMIZERS.values()}
    if symbol in OWN_DIMENSIONS or symbol.startswith("MATRIX_") or symbol in lr_symbols:
        raise ConfigError(f"MATRIX_EXTRA_SYMBOL={symbol}: the matrix sweeps it with its own "
                          f"settings (MATRIX_OPTIMIZER_*, MATRIX_PRUNING_*, MATRIX_SPARSITIES, "
                          f"MATRIX_LR_MULTIPLIERS, MATRIX_SEEDS); choose another symbol")
    if len(set(values)) != len(values):
        raise ConfigError(f"MATRIX_EXTRA_VALUES=\"{cfg.MATRIX_EXTRA_VALUES}\": a value is "
                          f"repeated")
    return [(symbol, v) for v in values]


def selected(cfg, prefix: str) -> list:
    """Names of the MATRIX_<prefix>_* booleans that are set, in Kconfig order:
    MATRIX_OPTIMIZER_ADAMW_8BIT -> "adamw-8bit"."""
    prefix = f"MATRIX_{prefix}_"
    return [key.removeprefix(prefix).lower().replace("_", "-")
            for key, value in cfg.items() if key.startswith(prefix) and value is True]


def enumerate_cells(cfg) -> tuple:
    """(cells, skipped) of a matrix Config: cells a list of CellSpec in run
    order, skipped a list of (combination, reason) for the dry run."""
    if not cfg.MATRIX:
        raise ConfigError(OFF_HINT)
    optimizers = selected(cfg, "OPTIMIZER")
    methods = selected(cfg, "PRUNING")
    variants = selected(cfg, "VARIANT")
    sparsities = cfg.MATRIX_SPARSITIES or ()
    multipliers = cfg.MATRIX_LR_MULTIPLIERS or (1.0,)
    seeds = [cfg.SEED + i for i in range(cfg.MATRIX_SEEDS)]
    extras = extra_dimension(cfg)
    cells, skipped = [], []
    if not optimizers:
        skipped.append(("every cell", "no optimizer selected (MATRIX_OPTIMIZER_*)"))
    if not methods:
        skipped.append(("every cell", "no pruning method selected (MATRIX_PRUNING_*)"))
    if variants and "state" not in methods:
        skipped.append((f"variants {', '.join(variants)}",
                        "no state pruning selected (MATRIX_PRUNING_STATE)"))
    if "state" in methods and not variants:
        skipped.append(("state", "no AdamWPrune variant selected (MATRIX_VARIANT_*)"))
    for optimizer in optimizers:
        lr_symbol = optim.OPTIMIZERS[optimizer].lr
        rates = [(m, None if m == 1 else f"{lr_symbol}={cfg[lr_symbol] * m:.6g}")
                 for m in multipliers]
        for method in methods:
            if method == "none":
                points = [(None, None)]
            elif method == "state":
                if optimizer not in state_optimizers():
                    skipped.append((f"{optimizer}-state",
                                    f"state pruning prunes from Adam moments; {optimizer} has "
                                    f"none (only {', '.join(state_optimizers())})"))
                    continue
                points = [(v, s) for v in variants for s in sparsities]
            else:
                points = [(None, s) for s in sparsities]
            for variant, sparsity in points:
                for multiplier, lr_setting in rates:
                    for symbol, value in extras:
                        for seed in seeds:
                            cells.append(CellSpec(optimizer, method, variant, sparsity, seed,
                                                  multiplier, lr_setting, symbol, value))
    return cells, skipped


# ------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Cell:
    spec: CellSpec
    id: str
    hash: str
    text: str        # the cell's full .config
    dir: Path        # its run directory, <matrix dir>/<id>
    kconf: object = field(default=None, repr=False, compare=False)

    @property
    def config(self) -> Path:
        return self.dir / "config"

    @property
    def log(self) -> Path:
        return self.dir / "stdout.log"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def learning_rate(self) -> float:
        """The peak learning rate the cell's config gives its optimizer."""
        return float(self.kconf.syms[optim.OPTIMIZERS[self.spec.optimizer].lr].str_value)


@dataclass
class Matrix:
    cfg: object          # the matrix Config
    kconf: object
    path: Path           # results/<RECIPE>-matrix-<hash>
    cells: list
    skipped: list

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    def state_path(self, cell) -> Path:
        return self.state_dir / f"{cell.id}.json"


def cell_kconf(config_path, overrides, spec, results, run_name="", project=()):
    # --set values of the matrix's own knobs (the grid, the executor) do not reach a cell,
    # where MATRIX=n drops them.
    kept = [o for o in overrides if not o.partition("=")[0].strip().removeprefix("CONFIG_")
            .startswith(("MATRIX", "SLURM_"))]
    try:
        return cfglib.load_kconf(config_path, [*kept, *spec.overrides(), *project,
                                               f"RESULTS_DIR={results}", f"RUN_NAME={run_name}"])
    except ConfigError as e:
        raise ConfigError(f"cell {spec.name}: {e}") from None


def load_matrix(config_path, overrides=()) -> Matrix:
    """Read the matrix config and resolve every cell's configuration (validated
    like any .config: a cell value that does not take is an error naming it)."""
    kconf = cfglib.load_kconf(config_path, overrides)
    cfg = cfglib.from_kconf(kconf, config_path)
    specs, skipped = enumerate_cells(cfg)
    path = matrix_dir(cfg, kconf)
    results = results_setting(cfg, path.name)
    # The cells of a matrix are one tracker project.
    project = ([f"TRACKER_PROJECT={path.name}"]
               if cfg.TRACKER != "none" and not cfg.TRACKER_PROJECT else [])
    cells = []
    for spec in specs:
        cell_hash = cfglib.config_hash(cell_kconf(config_path, overrides, spec, results))
        cell_id = f"{spec.name}-{cell_hash}"
        kconf_cell = cell_kconf(config_path, overrides, spec, results, cell_id, project)
        cells.append(Cell(spec, cell_id, cell_hash, cfglib.config_text(kconf_cell),
                          path / cell_id, kconf_cell))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("two cells of the matrix resolve to the same configuration: "
                          + ", ".join(sorted({i for i in ids if ids.count(i) > 1})))
    return Matrix(cfg, kconf, path, cells, skipped)


def write_cell_config(cell) -> None:
    """<cell dir>/config, the same bytes the trainer writes when it claims the
    directory; an existing one is left alone (the cell id pins its hash)."""
    if cell.config.exists():
        if cell.config.read_text() != cell.text:
            other = cfglib.config_hash(cfglib.load_kconf(cell.config, strict=False))
            if other != cell.hash:
                raise ConfigError(f"{cell.dir} holds a run of a different configuration "
                                  f"(hash {other}, the cell's is {cell.hash})")
        return
    cell.dir.mkdir(parents=True, exist_ok=True)
    cfglib.write_config(cell.kconf, cell.config)  # atomic; no .old, as there is no old one


def check_cells(matrix: Matrix) -> None:
    """Every cell's pruning schedule fits its budget, or one ConfigError naming each cell
    that does not (before any cell runs, and in the dry run)."""
    trackers.check(matrix.cfg)  # a missing tracker package, once, before any cell starts
    problems = []
    for cell in matrix.cells:
        try:
            check_pruning(cfglib.from_kconf(cell.kconf, cell.config))
        except (ConfigError, DataError) as e:
            problems.append(f"cell {cell.name}: {e}")
    if problems:
        raise ConfigError("\n".join(problems))


# ------------------------------------------------------------------- state

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
            "error": None, "log_tail": [], "attempts": [], "wall_s": 0.0}


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


# ------------------------------------------------------------- processes

def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus(device: str) -> list:
    """CUDA_VISIBLE_DEVICES entries the cells can be pinned to (none on the CPU)."""
    if device not in ("auto", "cuda"):
        return []
    try:
        import torch
        count = torch.cuda.device_count()
    except Exception:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in env.split(",") if d.strip()] if env else []
    return [names[i] if i < len(names) else str(i) for i in range(count)]


def pick_gpu(gpus: list, busy: list):
    """The GPU running the fewest cells (the lowest index among ties)."""
    if not gpus:
        return None
    return min(gpus, key=lambda g: (busy.count(g), gpus.index(g)))


def child_env(base: dict, gpu, threads) -> dict:
    env = dict(base)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def command(cell) -> list:
    patterns = [p for p in os.environ.get(FAIL_CELLS_ENV, "").split(",") if p]
    if any(fnmatch.fnmatchcase(cell.id, p) for p in patterns):
        return [sys.executable, "-c", _FAKE_FAILURE, str(cell.dir)]
    return [sys.executable, "-m", "gpt2.train", str(cell.config)]


class Runner:
    def __init__(self, matrix: Matrix, retry_failed: bool):
        self.m = matrix
        self.retry_failed = retry_failed
        self.jobs = matrix.cfg.MATRIX_JOBS
        self.stop_on_failure = matrix.cfg.MATRIX_ON_FAILURE == "stop"
        self.running = {}   # Popen -> (cell, state, monotonic start)
        self.new_failures = []
        self.signal = None

    def lock(self):
        self.m.path.mkdir(parents=True, exist_ok=True)
        try:
            return lock_directory(self.m.path)
        except BlockingIOError:
            raise ConfigError(f"{self.m.path} is in use by another matrix runner or by cells it "
                              f"started (see the pids in {self.m.state_dir}); wait for them or "
                              f"stop them, then run again") from None

    def prepare(self, todo) -> None:
        """Prepare the dataset once before the cells start, so parallel cells do
        not race to write <matrix dir>/_data."""
        if not todo:
            return
        result = subprocess.run([sys.executable, "-m", "gpt2.data", str(todo[0].config)],
                                capture_output=True, text=True)
        if result.returncode != 0 and self.signal is None:
            raise ConfigError(f"preparing the data failed:\n{result.stderr.strip()}")

    def write_state(self, cell, state) -> None:
        atomic_write_json(self.m.state_path(cell), state)

    def start(self, cell, state, gpu, threads) -> None:
        now = time.time()
        cmd = command(cell)
        shown = shlex.join(cmd) if cmd[1] == "-m" else f"stand-in failure ({FAIL_CELLS_ENV})"
        with open(cell.log, "ab") as log:
            log.write(f"=== kmatrix: attempt {len(state['attempts']) + 1} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {shown}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cfglib.ROOT,
                                    env=child_env(os.environ, gpu, threads),
                                    pass_fds=(self.lock_fd,))
        # Registered before anything else can go wrong, so it is always waited for.
        self.running[proc] = (cell, state, time.monotonic(), gpu)
        state.update(status="running", pid=proc.pid, started_at=now, finished_at=None,
                     exit_code=None, reason=None, error=None, log_tail=[], gpu=gpu,
                     threads=threads)
        state["attempts"].append({"pid": proc.pid, "started_at": now, "finished_at": None,
                                  "wall_s": None, "exit_code": None})
        self.write_state(cell, state)

    def finish(self, proc, bar) -> None:
        cell, state, t0, _ = self.running.pop(proc)
        wall = time.monotonic() - t0
        summary = read_summary(cell)
        status, reason = outcome(proc.returncode, summary, self.signal is not None)
        state["attempts"][-1].update(finished_at=time.time(), wall_s=wall,
                                     exit_code=proc.returncode)
        state.update(status=status, pid=None, finished_at=time.time(),
                     exit_code=proc.returncode, reason=reason,
                     error=summary.get("error") if status == "failed" else None,
                     log_tail=log_tail(cell.log) if status == "failed" else [],
                     wall_s=sum(a.get("wall_s") or 0.0 for a in state["attempts"]))
        self.write_state(cell, state)
        ppl = summary.get("val_ppl")
        ppl = f"{ppl:.3f}" if isinstance(ppl, (int, float)) else "-"
        line = f"{cell.id}  {status}  val ppl {ppl}  wall {wall:.1f} s"
        if status == "failed":
            line += f"  ({reason}{': ' + state['error'] if state['error'] else ''})"
            self.new_failures.append(cell)
        tqdm.write(line)
        bar.update(1)

    def on_signal(self, signum, frame):
        # Only noted here; the loop acts on it between two polls.
        if self.signal is None:
            self.signal = signum

    def run(self) -> int:
        processes = distributed.world_size(self.m.cfg)
        if processes > 1 and self.jobs > 1:
            raise ConfigError(f"MATRIX_JOBS={self.jobs} with {processes} processes per cell "
                              f"(DDP_NPROC_PER_NODE x DDP_NNODES): each cell trains over all "
                              f"the node's GPUs, so set MATRIX_JOBS=1, or run the matrix on "
                              f"Slurm (MATRIX_EXECUTOR_SLURM)")
        self.lock_fd = self.lock()
        try:
            return self._run()
        finally:
            os.close(self.lock_fd)

    def _run(self) -> int:
        m = self.m
        m.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(m.path / "matrix.config", cfglib.config_text(m.kconf))
        todo, states, done, old_failures = [], {}, 0, 0
        for cell in m.cells:
            write_cell_config(cell)
            state = read_state(m.state_path(cell)) or new_state(cell)
            if state.get("status") == "running":
                close_dead_attempt(state, cell.log)
            if state.get("status") == "done" and not RunDir(cell.dir).is_complete():
                # e.g. a summary an older trainer wrote before its final evaluation
                state.update(status="interrupted", reason="its run directory lacks the final "
                             "evaluation, samples or summary; the trainer finishes them")
            states[cell.id] = state
            run_it, _ = should_run(state, self.retry_failed)
            if run_it:
                todo.append(cell)
            elif state["status"] == "done":
                done += 1
            else:
                old_failures += 1
            self.write_state(cell, state)
        parallel = max(1, min(self.jobs, len(todo)))
        # A cell that trains over several processes (torchrun) takes all the node's GPUs.
        gpus = visible_gpus(m.cfg.DEVICE) if todo and distributed.world_size(m.cfg) == 1 else []
        threads = None if gpus else max(1, cpu_cores() // parallel)
        where = (f"GPUs {','.join(gpus)} round-robin" if gpus
                 else f"{threads} CPU thread{'s' if threads != 1 else ''} per cell")
        earlier = f", {old_failures} failed earlier (--retry-failed reruns)" if old_failures else ""
        print(f"matrix {m.path}: {len(m.cells)} cells, {done} done{earlier}, {len(todo)} to run, "
              f"{self.jobs} at once, {where}", flush=True)
        old_handlers = {sig: signal.signal(sig, self.on_signal) for sig in STOP_SIGNALS}
        bar = tqdm(total=len(m.cells), initial=done, unit="cell", desc="matrix",
                   dynamic_ncols=True, disable=None)
        stopping = False
        try:
            self.prepare(todo)
            while todo or self.running:
                if self.signal is not None:
                    self.interrupt(bar)
                    return 130
                while todo and len(self.running) < self.jobs and not stopping:
                    cell = todo.pop(0)
                    busy = [g for (_, _, _, g) in self.running.values()]
                    self.start(cell, states[cell.id], pick_gpu(gpus, busy), threads)
                time.sleep(POLL_S)
                for proc in [p for p in self.running if p.poll() is not None]:
                    self.finish(proc, bar)
                    if self.new_failures and self.stop_on_failure and not stopping:
                        stopping = True
                        tqdm.write(f"MATRIX_ON_FAILURE=stop: starting no more cells "
                                   f"({len(todo)} left pending)")
                if stopping and not self.running:
                    break
            if self.signal is not None:  # it came as the last cells ended
                self.interrupt(bar)
                return 130
        finally:
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        self.report()
        failed = [c.id for c in m.cells if states[c.id]["status"] == "failed"]
        pending = [c.id for c in m.cells
                   if states[c.id]["status"] in ("pending", "running", "interrupted")]
        print(f"matrix {m.path}: {len(m.cells) - len(failed) - len(pending)} done, "
              f"{len(failed)} failed, {len(pending)} not run")
        for cell_id in failed:
            print(f"  failed: {cell_id} ({states[cell_id]['reason']})")
        return 1 if failed or pending else 0

    def interrupt(self, bar) -> None:
        """The signal is passed on to the cells (Ctrl-C reached them already; a second
        one costs nothing), which checkpoint and exit 130; they resume on the next run."""
        tqdm.write(f"interrupted: waiting for {len(self.running)} running cell(s) to "
                   f"checkpoint; run again to resume")
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(self.signal)
        while self.running:
            time.sleep(POLL_S)
            for proc in [p for p in self.running if p.poll() is not None]:
                self.finish(proc, bar)

    def report(self) -> None:
        from scripts import report  # here: pandas and matplotlib cost seconds at start-up
        try:
            paths = report.write_report(self.m.path)
            print(f"report: {paths['report']}")
        except Exception as e:  # the cells' results are safe; the report can be rerun
            print(f"warning: the report failed ({e!r}); rerun python -m scripts.report "
                  f"{self.m.path}", file=sys.stderr)


def _slurm_runner(matrix, retry_failed):
    from scripts.slurm import SlurmRunner  # submitit only where Slurm is selected
    return SlurmRunner(matrix, retry_failed, sys.modules[__name__])


# MATRIX_EXECUTOR -> the runner of the cells.
EXECUTORS = {"local": Runner, "slurm": _slurm_runner}


# ------------------------------------------------------------- dry run

def cell_estimate(cell) -> str:
    """`make estimate` of a cell in one line (scripts.estimate)."""
    from scripts import estimate
    try:
        return "estimate: " + estimate.one_line(
            estimate.estimate(cfglib.from_kconf(cell.kconf, cell.config)))
    except (ConfigError, DataError) as e:
        return f"estimate: n/a ({(str(e).splitlines() or [''])[0][:160]})"


def dry_run(matrix: Matrix, retry_failed: bool) -> int:
    m = matrix
    print(f"matrix {m.path}")
    print(f"{len(m.cells)} cells ({m.cfg.MATRIX_JOBS} at once):")
    walls, to_run = [], 0
    for cell in m.cells:
        state = read_state(m.state_path(cell))
        run_it, why = should_run(state, retry_failed) if state else (True, "pending")
        to_run += run_it
        if state.get("status") == "done" and state.get("wall_s"):
            walls.append(state["wall_s"])
        print(f"  {cell.id:<60} lr {cell.learning_rate:<8g} {why}")
        print(f"  {'':<60} {cell_estimate(cell)}")
    if m.skipped:
        print(f"skipped ({len(m.skipped)}):")
        for what, reason in m.skipped:
            print(f"  {what}: {reason}")
    print(f"{to_run} of {len(m.cells)} cells would run")
    if m.cfg.MATRIX_EXECUTOR == "slurm" and to_run:
        from scripts import slurm
        print("\n".join(slurm.describe(m.cfg, m.path / "slurm", to_run)))
    if walls and to_run:
        estimate = sum(walls) / len(walls) * to_run / max(1, min(m.cfg.MATRIX_JOBS, to_run))
        print(f"estimated wall time: {estimate / 60:.1f} min (mean {sum(walls) / len(walls):.0f} s "
              f"over {len(walls)} finished cells x {to_run} cells / {m.cfg.MATRIX_JOBS} jobs)")
    elif to_run:
        print("estimated wall time: unknown (no finished cell in this matrix yet)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="config file (default: .config or $KCONFIG_CONFIG)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the cells, the skipped combinations and an estimate; run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a symbol of the matrix config, validated like .config")
    args = parser.parse_args(argv)
    try:
        matrix = load_matrix(args.config or cfglib.default_config_path(), args.set)
        if not matrix.cells:
            raise ConfigError("the matrix has no cells: "
                              + "; ".join(f"{w}: {r}" for w, r in matrix.skipped))
        check_cells(matrix)
        if args.dry_run:
            return dry_run(matrix, args.retry_failed)
        return EXECUTORS[matrix.cfg.MATRIX_EXECUTOR](matrix, args.retry_failed).run()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = Path(e.filename).parent if e.filename else "the matrix directory"
        print(f"error: cannot write in {where}: {e.strerror or e} (check that RESULTS_DIR is "
              f"writable and has free space, or set RESULTS_DIR to another directory)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
