"""One run over several processes: torchrun's environment, the process group, the DDP
wrap, and the rule that only rank 0 writes. The trainer asks a Distributed object and
never reads RANK itself; with one process every method is the identity.

`make` with DDP_NPROC_PER_NODE x DDP_NNODES above 1 starts the trainer through
launch(), which runs torchrun with an argv list built from the configuration.
"""
import contextlib
import inspect
import os
import re
import signal
import subprocess
import sys

import torch
import torch.distributed as dist

from lib.config import ConfigError
from lib.stop import STOP_SIGNALS

# The environment torchrun gives each worker.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
BACKENDS = {
    "auto": lambda device: "nccl" if device.type == "cuda" else "gloo",
    "nccl": lambda device: "nccl",
    "gloo": lambda device: "gloo",
}
ENDPOINT = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:[0-9]{1,5}$")
# torchrun passes SIGINT and SIGTERM on to its workers but dies of SIGUSR1 (a scheduler's
# warning ahead of its time limit), leaving them running: that one reaches it as SIGTERM.
TO_TORCHRUN = {signal.SIGUSR1: signal.SIGTERM}
# Seconds torchrun waits for stopped workers (rank 0 writes its checkpoint) before SIGKILL.
SHUTDOWN_TIMEOUT_S = "300"
# No buffer broadcast before each forward pass (torch 2.13 renamed the argument).
NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                  inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


# The one rule for splitting a step over processes, as the help texts and README state it.
RULE = "GRADIENT_ACCUMULATION must be a multiple of the number of processes"


def world_size(cfg) -> int:
    """Processes the configuration asks for."""
    return cfg.DDP_NPROC_PER_NODE * cfg.DDP_NNODES


def check(cfg, processes: int = None) -> None:
    """Raise ConfigError unless the global batch splits evenly over the processes."""
    processes = processes or world_size(cfg)
    accum = cfg.GRADIENT_ACCUMULATION
    if accum % processes:
        raise ConfigError(
            f"GRADIENT_ACCUMULATION={accum}: {RULE} ({processes}: DDP_NPROC_PER_NODE="
            f"{cfg.DDP_NPROC_PER_NODE} x DDP_NNODES={cfg.DDP_NNODES}), so that every process "
            f"trains the same whole micro-batches of each step; set GRADIENT_ACCUMULATION to a "
            f"multiple of {processes} (lower BATCH_SIZE to keep the tokens per step)")
    if cfg.DDP_NNODES > 1 and not cfg.DDP_RDZV_ENDPOINT:
        raise ConfigError(f"DDP_NNODES={cfg.DDP_NNODES} needs DDP_RDZV_ENDPOINT, the host:port "
                          f"where the nodes meet (e.g. node001:29500)")
    if cfg.DDP_RDZV_ENDPOINT and not ENDPOINT.match(cfg.DDP_RDZV_ENDPOINT):
        raise ConfigError(f"DDP_RDZV_ENDPOINT={cfg.DDP_RDZV_ENDPOINT!r} is not host:port "
                          f"(e.g. node001:29500)")


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def needs_launch(cfg) -> bool:
    """True when the configuration asks for several processes and this is not one of them."""
    return world_size(cfg) > 1 and not under_torchrun()


def torchrun_argv(cfg, module: str, args) -> list:
    """The torchrun command that runs `python -m module args` on this node's processes."""
    check(cfg)
    argv = [sys.executable, "-m", "torch.distributed.run",
            f"--nproc-per-node={cfg.DDP_NPROC_PER_NODE}", f"--nnodes={cfg.DDP_NNODES}"]
    if cfg.DDP_RDZV_ENDPOINT:
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.DDP_RDZV_ENDPOINT}",
                 f"--rdzv-id=kmatrix-{cfg.hash}"]
    else:
        argv.append("--standalone")
    return argv + ["-m", module, *args]


def launch(cfg, module: str, args, run_status) -> int:
    """Run torchrun in its own session and wait; stop signals are passed on to it (torchrun
    passes them to every worker, which agree on a step, checkpoint and exit). torchrun's own exit status
    says only "a worker failed", so the run's summary gives the trainer's: 130 interrupted,
    3 failed; `run_status()` returns that summary's status."""
    argv = torchrun_argv(cfg, module, args)
    env = dict(os.environ)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)
    proc = subprocess.Popen(argv, env=env, start_new_session=True)

    def forward(signum, frame):
        if proc.poll() is None:
            proc.send_signal(TO_TORCHRUN.get(signum, signum))

    old = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if code == 0:
        return 0
    return {"interrupted": 130, "failed": 3}.get(run_status(), code)


class Distributed:
    """This process's place in the run. Distributed() is the single process."""

    def __init__(self, rank: int = 0, local_rank: int = 0, world_size: int = 1):
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self._flags = None  # the CPU process group that agrees on stop decisions

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes the run directory."""
        return self.rank == 0

    @classmethod
    def start(cls, cfg, device: torch.device) -> "Distributed":
        """The single process outside torchrun; inside it, join the process group."""
        if not under_torchrun():
            return cls()
        env = {name: int(os.environ[name]) for name in TORCHRUN_ENV}
        if env["WORLD_SIZE"] != world_size(cfg):
            raise ConfigError(
                f"torchrun started {env['WORLD_SIZE']} processes but the configuration asks "
                f"for DDP_NPROC_PER_NODE={cfg.DDP_NPROC_PER_NODE} x DDP_NNODES="
                f"{cfg.DDP_NNODES}; set them to match, or run `make` and let it start torchrun")
        check(cfg, env["WORLD_SIZE"])
        self = cls(env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"])
        backend = BACKENDS[cfg.DDP_BACKEND](self.device(device))
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError(f"DDP_BACKEND_NCCL=y needs CUDA devices, and this run trains on "
                              f"{device.type}: select DDP_BACKEND_GLOO or DDP_BACKEND_AUTO")
        dist.init_process_group(backend)
        self._flags = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        return self

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def device(self, device: torch.device) -> torch.device:
        """This process's device: its own GPU on CUDA."""
        if device.type == "cuda" and self.world_size > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def wrap(self, model, device: torch.device):
        """The module the training step calls: DDP over the model on several processes.
        Buffers are constants here (no batch norm), so forward passes need no broadcast
        and ranks may evaluate on their own."""
        if self.world_size == 1:
            return model
        ids = [device] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, **NO_BUFFER_SYNC)

    def micro_batches(self, accum: int) -> int:
        """This process's share of the GRADIENT_ACCUMULATION micro-batches of a step."""
        return accum // self.world_size

    def gradient_sync(self, module, last: bool):
        """Context of one micro-batch's forward and backward: gradients are all-reduced
        only on a step's last micro-batch."""
        if self.world_size == 1 or last:
            return contextlib.nullcontext()
        return module.no_sync()

    def any(self, *flags) -> tuple:
        """Each flag OR-ed over the processes (a stop signal or the time budget one rank
        saw), so every rank takes the same branch. A CPU all-reduce: no device sync."""
        if self.world_size == 1:
            return flags if len(flags) != 1 else flags[0]
        t = torch.tensor([bool(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._flags)
        out = tuple(bool(v) for v in t.tolist())
        return out if len(out) != 1 else out[0]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over the processes (on its device)."""
        if self.world_size > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.sum(tensor) / self.world_size if self.world_size > 1 else tensor

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the body (preparing shared files) before the others do."""
        if not self.is_main:
            dist.barrier(group=self._flags)
        yield
        if self.is_main and self.world_size > 1:
            dist.barrier(group=self._flags)
