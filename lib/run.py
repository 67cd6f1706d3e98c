"""The run directory: results/<run-name>/, the contract between trainer, matrix and report.

  config         the exact .config that produced the run
  env.json       git SHA and dirty flag, Python/torch/CUDA versions, device
  metrics.jsonl  one record per log and per evaluation
  train.log      the run's log
  ckpt.pt        the latest checkpoint (atomic; weights_only loadable)
  samples.txt    text generated after training
  summary.json   final figures and status (running, stopped, interrupted, failed, complete)
"""
import json
from pathlib import Path

from lib import config as cfglib
from lib.config import ROOT, ConfigError
from lib.fsutil import atomic_write_json, atomic_write_text


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

    @classmethod
    def for_config(cls, cfg) -> "RunDir":
        return cls(results_dir(cfg) / run_name(cfg))

    def claim(self, cfg) -> None:
        """Create the directory for cfg, or check that it already belongs to cfg."""
        if self.config.exists():
            other = cfglib.config_hash(cfglib.load_kconf(self.config, strict=False))
            if other != cfg.hash:
                raise ConfigError(
                    f"{self.path} holds a run of a different configuration (hash {other}, "
                    f"this one is {cfg.hash}); set RUN_NAME to another name, or leave it "
                    f"empty to derive one from the configuration")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, cfg.text)

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text()) if self.summary.exists() else {}

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary, summary)
