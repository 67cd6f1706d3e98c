"""One checkpoint format: a dict of tensors and plain values, written atomically,
read back with torch.load(weights_only=True).

A new checkpoint is written to a temporary file (lib/fsutil.atomic_open), read back
to verify it, and only then fsynced and renamed over the old one; the old one is
kept as <name>.prev.pt (a hard link where the file system allows, a copy elsewhere),
so a damaged latest checkpoint never costs more than one checkpoint interval.
"""
import os
import shutil
from pathlib import Path

import torch

from lib import faults
from lib.fsutil import atomic_open, no_space


class CheckpointError(Exception):
    """A checkpoint file cannot be read; the message names the file and the way out."""


def previous(path) -> Path:
    """Where the checkpoint before `path` is kept: ckpt.pt -> ckpt.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def remove_orphans(directory) -> list:
    """Delete temporary files (.<name>.<random>.tmp) a killed writer left behind; only
    call it while holding the directory's lock. Returns the names removed."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed


def _keep_previous(path: Path) -> None:
    prev = previous(path)
    tmp = prev.with_name(f".{prev.name}.keep.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here (some network and FAT file systems): a copy
        with open(path, "rb") as src, atomic_open(prev, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    os.replace(tmp, prev)  # the checkpoint's own rename then fsyncs the directory


def save(path, state: dict) -> None:
    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:  # a file object: a full disk's OSError reaches us
            torch.save(state, f)
            f.flush()
            faults.point("ckpt", state.get("progress", {}).get("iter", 0))
            verify(f.name)
            if path.exists():
                _keep_previous(path)
    except BaseException as e:
        full = no_space(e)
        if full is not None and full is not e:
            raise OSError(full.errno, os.strerror(full.errno), str(path)) from None
        raise


def saved_iteration(path):
    """The iteration of the checkpoint at `path` (or the previous one kept beside it), or
    None when neither reads."""
    for candidate in (Path(path), previous(path)):
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)
            return int(state["progress"]["iter"])
        except Exception:
            continue
    return None


def no_space_message(path) -> str:
    """One line for a checkpoint (or another file of its directory) that did not fit."""
    iteration = saved_iteration(path)
    kept = (f"the previous checkpoint (iteration {iteration}) is intact" if iteration is not None
            else "no checkpoint has been written yet")
    return f"no space left on {Path(path).parent}: {kept}; free space and run make again"


def verify(path) -> None:
    """Read a written checkpoint back (memory-mapped: cheap) before it replaces anything."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the checkpoint just written does not read back")


def _reason(e: Exception) -> str:
    # torch's own text for a refused unpickle advises weights_only=False, which
    # would run arbitrary code from the file: never pass that advice on.
    first = (str(e).strip().splitlines() or [""])[0]
    if "weights_only" in str(e) or not first:
        return f"{type(e).__name__}: it is not a checkpoint this trainer wrote"
    return f"{type(e).__name__}: {first[:200]}"


def load(path, map_location="cpu") -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(damaged_message(path, _reason(e))) from None
    if not isinstance(state, dict):
        raise CheckpointError(damaged_message(path, f"it holds a {type(state).__name__}, "
                                                    f"not a checkpoint dict"))
    return state


def damaged_message(path, reason: str) -> str:
    path = Path(path)
    prev = previous(path)
    if prev.exists() and prev != path:
        way_out = (f"the previous checkpoint {prev} is kept: move the damaged file aside "
                   f"(mv {path} {path}.damaged) and run again to resume from it")
    else:
        way_out = (f"no previous checkpoint is kept: move the damaged file aside "
                   f"(mv {path} {path}.damaged) and run again to train from scratch")
    return f"checkpoint {path} is damaged ({reason}); {way_out}"
