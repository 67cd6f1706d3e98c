"""The run directory: results/<run-name>/, the contract between trainer, matrix and report.

  config         the exact .config that produced the run
  env.json       git SHA and dirty flag, Python/torch/CUDA versions, device
  provenance.json  git commit, dirty flag and diff hash (provenance.diff), package versions,
                 device, command line; later sessions that differ are added (lib/provenance.py)
  metrics.jsonl  one record per log and per evaluation
  train.log      the run's log
  ckpt.pt        the latest checkpoint (atomic, verified; weights_only loadable)
  ckpt.prev.pt   the checkpoint before it, kept until a new one is written and verified
  samples.txt    text generated after training
  summary.json   final figures and status (running, stopped, interrupted, failed, complete)
  .lock          held (flock) by the trainer working on the run: its pid and host
"""
import json
import os
from pathlib import Path

from lib import config as cfglib
from lib import provenance as provenance_lib
from lib.config import ROOT, ConfigError
from lib.fsutil import LockHeld, atomic_write_json, atomic_write_text, lock_directory


def run_name(cfg) -> str:
    return cfg.RUN_NAME or f"{cfg.RECIPE}-{cfg.hash}"


def results_dir(cfg) -> Path:
    path = Path(cfg.RESULTS_DIR)
    return path if path.is_absolute() else ROOT / path


class RunDir:
    def __init__(self, path):
        self.path = Path(path)
        self.config = self.path / "config"
        self.env = self.path / "env.json"
        self.metrics = self.path / "metrics.jsonl"
        self.log = self.path / "train.log"
        self.ckpt = self.path / "ckpt.pt"
        self.samples = self.path / "samples.txt"
        self.summary = self.path / "summary.json"
        self._lock_fd = None

    @classmethod
    def for_config(cls, cfg) -> "RunDir":
        return cls(results_dir(cfg) / run_name(cfg))

    def check_owner(self, cfg) -> None:
        """Raise unless the directory is absent or already belongs to cfg; writes nothing."""
        if self.config.exists():
            other = cfglib.config_hash(cfglib.load_kconf(self.config, strict=False))
            if other != cfg.hash:
                raise ConfigError(
                    f"{self.path} holds a run of a different configuration (hash {other}, "
                    f"this one is {cfg.hash}); set RUN_NAME to another name, or leave it "
                    f"empty to derive one from the configuration")

    def claim(self, cfg, provenance=None) -> None:
        """Create the directory for cfg (or check that it already belongs to cfg) and
        lock it for this process until it exits; record `provenance`, the
        (info, diff) of lib.provenance.collect, when given."""
        self.check_owner(cfg)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        if not self.config.exists():
            atomic_write_text(self.config, cfg.text)
        if provenance is not None:
            provenance_lib.write(self.path, *provenance)

    def lock(self) -> None:
        try:
            fd = lock_directory(self.path)
        except LockHeld as e:
            raise ConfigError(f"{self.path} is being trained by another process ({e.holder}); "
                              f"wait for it or stop it, then run again") from None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_complete(self) -> bool:
        """Complete means the summary says so and carries the evaluation of its last
        iteration and the test figures (a summary from before `eval_iter` or `test_loss`
        existed is finished again)."""
        summary = self.read_summary()
        return (summary.get("status") == "complete"
                and summary.get("eval_iter") is not None
                and summary.get("eval_iter") == summary.get("iters")
                and summary.get("test_loss") is not None)

    def read_summary(self) -> dict:
        try:
            return json.loads(self.summary.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary, summary)


class RunReader(RunDir):
    """A run directory as a process other than rank 0 sees it: it reads what rank 0
    writes (the checkpoint it resumes from) and writes nothing."""

    def claim(self, cfg, provenance=None) -> None:
        pass

    def unlock(self) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass


# ------------------------------------------------------------ matrix directories
# A matrix directory, results/<RECIPE>-matrix-<hash>/, holds one run directory per cell;
# the matrix runner writes it and the report reads it, both name it from here.

OFF_HINT = ("matrix mode is off: set MATRIX=y in make menuconfig, or "
            "make defconfig-shakespeare-char-matrix")


def matrix_hash(kconf) -> str:
    """Short hash of the matrix configuration, ignoring the knobs tagged "Not part of
    the run hash." (where results go, how the runner runs the cells)."""
    return cfglib.config_hash(kconf)


def matrix_base(cfg) -> str:
    """The RESULTS_DIR setting the matrix directory goes under: SLURM_SHARED_DIR when
    Slurm runs the cells and it is set."""
    return cfg.get("SLURM_SHARED_DIR") or cfg.RESULTS_DIR


def results_setting(cfg, name: str) -> str:
    """RESULTS_DIR for the cells: the matrix directory, relative to the project
    root when the matrix's RESULTS_DIR is."""
    base = matrix_base(cfg)
    return str(Path(base) / name) if Path(base).is_absolute() else f"{base.rstrip('/')}/{name}"


def matrix_name(cfg, kconf) -> str:
    """<RECIPE>-matrix-<hash> ("-matrix" not doubled when the recipe ends in it)."""
    stem = cfg.RECIPE if cfg.RECIPE.endswith("matrix") else f"{cfg.RECIPE}-matrix"
    return f"{stem}-{matrix_hash(kconf)}"


def matrix_dir(cfg, kconf) -> Path:
    base = Path(matrix_base(cfg))
    return (base if base.is_absolute() else ROOT / base) / matrix_name(cfg, kconf)


def dir_of_config(config_path, overrides=()) -> Path:
    """The matrix directory a config file describes (for the report)."""
    kconf = cfglib.load_kconf(config_path, overrides)
    cfg = cfglib.from_kconf(kconf, config_path)
    if not cfg.MATRIX:
        raise ConfigError(OFF_HINT)
    return matrix_dir(cfg, kconf)


