"""metrics.jsonl, summary.json and env.json: the run directory's records."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from lib.config import ROOT
from lib.fsutil import atomic_write_text


class MetricsLog:
    """Append-only JSON lines, one per log or eval record, flushed as written; each record
    also goes to the experiment tracker when one is attached (lib/trackers.py)."""

    def __init__(self, path, tracker=None):
        self.path = Path(path)
        self.tracker = tracker

    def truncate_after(self, iteration: int, last_eval_iter: int = None) -> None:
        """Drop records past `iteration`, and evaluations past `last_eval_iter` (the one
        the checkpoint holds): a resumed run rewrites what it redoes."""
        if not self.path.exists():
            return
        evals_to = iteration if last_eval_iter is None else min(iteration, last_eval_iter)

        def keep(record):
            return record["iter"] <= (evals_to if record["kind"] == "eval" else iteration)

        kept = [line for line in self.path.read_text().splitlines(keepends=True)
                if line.strip() and keep(json.loads(line))]
        atomic_write_text(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log(record)

    def close(self) -> None:
        """End the tracker's run (the file needs no closing)."""
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    def read(self) -> list:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class Discard:
    """The metrics log of a process that writes nothing (a rank other than 0)."""

    def write(self, record: dict) -> None:
        pass

    def truncate_after(self, iteration: int, last_eval_iter: int = None) -> None:
        pass

    def close(self) -> None:
        pass


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def env_info(device: torch.device, device_name: str) -> dict:
    return {
        "git_sha": _git("rev-parse", "HEAD") or None,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "device": device.type,
        "device_name": device_name,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
