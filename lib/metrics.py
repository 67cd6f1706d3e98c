"""metrics.jsonl, summary.json and env.json: the run directory's records."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from lib.config import ROOT, ConfigError
from lib.fsutil import atomic_write_text


class TornRecord(ConfigError):
    """A metrics.jsonl line that is not a whole record, before its last line (a torn last
    line is what a crash or a full disk during an append leaves, and is dropped)."""


def parse_records(path: Path, text: str) -> tuple:
    """([(line, record)], note): the records of a metrics.jsonl text. A torn last line is
    dropped and `note` says so in one line; a torn line elsewhere raises TornRecord naming
    the file and line."""
    lines = text.splitlines(keepends=True)
    records, note = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if number < len(lines):
                raise TornRecord(f"{path}, line {number}: not a whole JSON record (only the "
                                 f"last line may be torn); repair or delete that line and "
                                 f"run again") from None
            note = (f"{path}: dropped a torn last record (line {number}, {len(line)} "
                    f"bytes, left by an interrupted write)")
    return records, note


class MetricsLog:
    """Append-only JSON lines, one per log or eval record, flushed as written; each record
    also goes to the experiment tracker when one is attached (lib/trackers.py)."""

    def __init__(self, path, tracker=None):
        self.path = Path(path)
        self.tracker = tracker

    def truncate_after(self, iteration: int, last_eval_iter: int = None):
        """Drop records past `iteration`, and evaluations past `last_eval_iter` (the one
        the checkpoint holds): a resumed run rewrites what it redoes. Returns the one-line
        note of a torn last record dropped, or None."""
        if not self.path.exists():
            return None
        evals_to = iteration if last_eval_iter is None else min(iteration, last_eval_iter)

        def keep(record):
            return record["iter"] <= (evals_to if record["kind"] == "eval" else iteration)

        records, note = parse_records(self.path, self.path.read_text())
        kept = (line if line.endswith("\n") else line + "\n" for line, record in records
                if keep(record))
        atomic_write_text(self.path, "".join(kept))
        return note

    def write(self, record: dict) -> None:
        """Append one line; a write that fails part way (a full disk) is cut back off, so
        the file keeps whole records only, and the error goes on."""
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            try:
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
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
        return [record for _, record in parse_records(self.path, self.path.read_text())[0]]


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
