"""Pairing records: what cells of one seed share, whatever their optimizer or pruning.

init_hash  sha256 of the model's initial weights (before any step), 16 hex characters
data_hash  sha256 of the token ids of the first PAIRING_STEPS optimizer steps'
           micro-batches, replayed from the sampler's seed as one process draws them
Two runs with equal hashes started from the same weights and read the same first
batches; the report pairs cells on them.
"""
import hashlib

import torch

from gpt2 import data

PAIRING_STEPS = 4
HASH_CHARS = 16


def _update(digest, tensor: torch.Tensor) -> None:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def init_hash(model: torch.nn.Module) -> str:
    """Names, shapes, dtypes and bytes of every parameter, in name order."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype};".encode())
        _update(digest, param)
    return digest.hexdigest()[:HASH_CHARS]


def data_hash(prepared, block_size: int, batch_size: int, accumulation: int, seed: int,
              steps: int = PAIRING_STEPS) -> str:
    """The first `steps` optimizer steps' micro-batches (inputs and targets), drawn by a
    fresh sampler of the run's seed on the CPU: the global RNG and the run's own
    sampler are untouched."""
    batches = data.Batches(prepared, block_size, batch_size, "cpu", seed)
    digest = hashlib.sha256()
    for _ in range(steps):
        for x, y in batches.step("train", accumulation):
            _update(digest, x)
            _update(digest, y[:, -1:])
    return digest.hexdigest()[:HASH_CHARS]
