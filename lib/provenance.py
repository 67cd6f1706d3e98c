"""provenance.json: what produced a run (code, packages, device, command line), written
where the run directory is claimed, by rank 0 only; read by the report, never by the
trainer.

  git_commit, git_dirty, git_diff_sha256   the checkout (`git diff HEAD`, saved beside
                                           it as provenance.diff when the tree is dirty)
  versions       {python, torch, kconfiglib, numpy, bitsandbytes, lion_pytorch, tiktoken,
                  datasets} from importlib.metadata (null when not installed)
  device_name, cuda, cudnn, argv
  resumed_with   one entry per later session whose provenance differed (the first
                 session's fields are never overwritten)

Git runs as an argument list, never through a shell; no package is imported to read
its version.
"""
import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from lib.fsutil import atomic_write_bytes, atomic_write_json

FILE = "provenance.json"
DIFF = "provenance.diff"
# provenance key -> distribution name
PACKAGES = {"torch": "torch", "kconfiglib": "kconfiglib", "numpy": "numpy",
            "bitsandbytes": "bitsandbytes", "lion_pytorch": "lion-pytorch",
            "tiktoken": "tiktoken", "datasets": "datasets"}
GIT_TIMEOUT_S = 30


def versions() -> dict:
    found = {"python": platform.python_version()}
    for key, dist in PACKAGES.items():
        try:
            found[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[key] = None
    return found


def _git(root, *args):
    """stdout (bytes) of `git <args>` in root, or None when git or the repository is not
    there."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True,
                              timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root) -> tuple:
    """({git_commit, git_dirty, git_diff_sha256}, the diff bytes or None)."""
    commit = _git(root, "rev-parse", "HEAD")
    diff = _git(root, "diff", "HEAD") if commit is not None else None
    return {"git_commit": commit.decode().strip() if commit is not None else None,
            "git_dirty": bool(diff) if diff is not None else None,
            "git_diff_sha256": hashlib.sha256(diff).hexdigest() if diff is not None else None,
            }, (diff or None)


def torch_facts(device_name: str) -> dict:
    """device_name, cuda, cudnn of the running torch (imported by the caller already)."""
    import torch

    cudnn = torch.backends.cudnn
    return {"device_name": device_name, "cuda": torch.version.cuda,
            "cudnn": cudnn.version() if cudnn.is_available() else None}


def collect(root, device_name=None, cuda=None, cudnn=None, argv=None) -> tuple:
    """(provenance dict, diff bytes or None) of this process."""
    info, diff = git_state(root)
    info.update(versions=versions(), device_name=device_name, cuda=cuda, cudnn=cudnn,
                argv=list(argv if argv is not None else getattr(sys, "orig_argv", sys.argv)))
    return info, diff


def write(run_path, info: dict, diff) -> None:
    """Record `info` in <run_path>/provenance.json: the first session writes it whole
    (and provenance.diff when dirty); a later one whose provenance differs adds an entry
    to `resumed_with` (its diff as provenance.resumed-<n>.diff) and overwrites nothing."""
    path = Path(run_path) / FILE
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        recorded = None
    except json.JSONDecodeError:  # a torn file from before atomic writes: keep it aside
        path.replace(path.with_suffix(".json.damaged"))
        recorded = None
    if recorded is None:
        if diff:
            atomic_write_bytes(Path(run_path) / DIFF, diff)
        atomic_write_json(path, info)
        return
    seen = [{k: v for k, v in recorded.items() if k != "resumed_with"},
            *recorded.get("resumed_with", [])]
    if info in seen:
        return
    entries = recorded.setdefault("resumed_with", [])
    if diff:
        atomic_write_bytes(Path(run_path) / f"provenance.resumed-{len(entries) + 1}.diff", diff)
    entries.append(info)
    atomic_write_json(path, recorded)

