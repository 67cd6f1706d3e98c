"""One checkpoint format: a dict of tensors and plain values, written atomically,
read back with torch.load(weights_only=True)."""
import os
import tempfile
from pathlib import Path

import torch


def save(path, state: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
