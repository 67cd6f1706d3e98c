"""Run by tests/test_distributed.py under torchrun: train STEPS steps of CONFIG on every
rank, then check that every rank holds rank 0's parameters, pruning masks, optimizer
state and data position, byte for byte. Exit 0 when they do, 1 naming what differs.

  torchrun --standalone --nproc-per-node=2 tests/ddp_worker.py CONFIG STEPS
"""
import hashlib
import sys

import torch
import torch.distributed as dist

from gpt2.train import Trainer
from lib import config as cfglib
from lib import runtime
from lib.distributed import Distributed
from lib.run import RunDir, RunReader


def fingerprints(value, prefix="") -> dict:
    """{path: sha256 of the tensor's bytes} for every tensor in a nested state dict."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return {prefix: hashlib.sha256(data).hexdigest()}
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in fingerprints(item, f"{prefix}/{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value)
                for k, v in fingerprints(item, f"{prefix}/{i}").items()}
    return {}


def main(config, steps) -> int:
    cfg = cfglib.load(config)
    ranks = Distributed.start(cfg, runtime.pick_device(cfg.DEVICE))
    run = RunDir.for_config(cfg) if ranks.is_main else RunReader(RunDir.for_config(cfg).path)
    trainer = Trainer(cfg, run, ranks=ranks)
    run.claim(cfg)
    trainer.fit(stop_after=steps)
    state = trainer.state_dict()
    mine = fingerprints({k: state[k] for k in ("model", "optimizer", "pruner", "data")})
    everyone = [None] * ranks.world_size
    dist.all_gather_object(everyone, mine)
    sparsity = trainer.pruner.stats().get("sparsity", 0.0)
    ranks.close()
    if ranks.is_main:
        differ = sorted(k for other in everyone[1:] for k in mine if other.get(k) != mine[k])
        masks = [k for k in mine if k.endswith("_mask")]
        print(f"{len(mine)} tensors, {len(masks)} masks, sparsity {sparsity:.3f}, "
              f"iteration {trainer.progress.iter}, differ: {differ}")
        return 1 if differ or not masks else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
