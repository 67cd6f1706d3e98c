"""BATCH_SIZE_AUTO: the largest micro-batch that fits the device, with the accumulation
that keeps each optimizer step's sequences what the recipe asks.

The asked step batch P = BATCH_SIZE x GRADIENT_ACCUMULATION (sequences) is split into
micro-batches b with P / b a multiple of the process count. The sampler draws a step's
sequences in one stream whatever the split (gpt2/data/batches.py), so every split trains
on the same sequences in the same order: only how a step is cut changes, which is why
the run keeps the hash of what was asked. `search` is a pure function over a probe
fits(b) -> bool (galloping from BATCH_SIZE over the candidates, then bisection, as
PyTorch Lightning's "binsearch" batch-size finder); the probe comes from PROBES by device
type. `fitted` returns the Config the trainer then trains with.
"""
import gc
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2 import data, losses
from gpt2.activations import activation_bytes
from gpt2.data.batches import SPLITS as SAMPLED_SPLITS
from gpt2.build import build_model, model_config
from lib import checkpoint, optim, runtime
from lib import config as cfglib

MIB = 2**20


@dataclass(frozen=True)
class Choice:
    micro_batch: int
    accumulation: int
    how: str  # "asked" (BATCH_SIZE_AUTO=n), "searched", or "resumed" (the run's record)


def candidates(step_batch: int, processes: int) -> list:
    """The micro-batches b, ascending, that split `step_batch` sequences into a whole
    number of micro-batches per process: the divisors of step_batch / processes."""
    per_process = step_batch // processes
    return [b for b in range(1, per_process + 1) if per_process % b == 0]


def search(sizes: list, fits, start: int):
    """The largest of the ascending `sizes` for which fits(size) is true, assuming that
    fitting is monotone (a smaller size fits when a larger one does); None when even
    sizes[0] does not fit. Probes `start` first, then gallops (steps of 1, 2, 4, ...
    positions) up or down to bracket the answer, then bisects: O(log len(sizes)) probes,
    none repeated."""
    known = {}

    def probe(i):
        if i not in known:
            known[i] = bool(fits(sizes[i]))
        return known[i]

    fit, fail = -1, len(sizes)  # indices known to fit / not to fit
    i = sizes.index(start) if start in sizes else 0
    step, up = 1, probe(i)
    while 0 <= i < len(sizes):
        if probe(i):
            fit = i
            if not up:
                break
        else:
            fail = i
            if up:
                break
        i = i + step if up else i - step
        step *= 2
    while fail - fit > 1:
        mid = (fit + fail) // 2
        fit, fail = (mid, fail) if probe(mid) else (fit, mid)
    return sizes[fit] if fit >= 0 else None


# -- probes ------------------------------------------------------------------------------
class Trial:
    """A throw-away copy of the run's model and optimizer (built under a forked RNG, so the
    run's own initialisation and data order are untouched) that takes one training step at
    a given micro-batch of random tokens; the copy's weights are never the run's."""

    def __init__(self, cfg, vocab_size: int, device: torch.device, reserved_bytes: int = 0):
        self.cfg, self.vocab, self.device = cfg, vocab_size, device
        self.reserved_bytes = reserved_bytes
        self.rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        self.rng.__enter__()
        try:  # on CUDA the held bytes are taken for real while the trial steps
            self.held = torch.empty(reserved_bytes if device.type == "cuda" else 0,
                                    dtype=torch.uint8, device=device)
            self.model = build_model(cfg, vocab_size).to(device)
            self.optimizer = optim.build(cfg, self.model)
            self.loss = losses.training_loss(cfg)  # the run's loss: chunks change its memory
        except BaseException:
            self.rng.__exit__(None, None, None)
            raise
        self.forward = runtime.ForwardContext.for_config(cfg, device)

    def step(self, micro_batch: int) -> None:
        """One forward, backward and optimizer step; gradients dropped after it."""
        x = torch.randint(self.vocab, (micro_batch, self.cfg.BLOCK_SIZE + 1), device=self.device)
        self.scaler = runtime.grad_scaler(self.device, self.cfg.PRECISION)  # fresh per try
        try:
            with self.forward:
                _, loss = self.model(x[:, :-1], x[:, 1:], self.loss)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            optim.prepare_grads(self.optimizer)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        finally:
            loss = x = None
            self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.model = self.optimizer = self.scaler = self.held = None
        self.rng.__exit__(None, None, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def cuda_probe(cfg, trial: Trial, budget_bytes):
    """fits(b): a trial step at b does not run out of memory (a cap, when set, is the
    process's memory fraction for the trial and the run)."""
    if budget_bytes is not None:
        total = torch.cuda.get_device_properties(trial.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), trial.device)

    def fits(micro_batch: int) -> bool:
        try:
            trial.step(micro_batch)
            return True
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(e):
                raise
        gc.collect()  # out of the except block: its traceback held the trial's tensors
        torch.cuda.empty_cache()
        return False
    return fits


# What CUDA libraries raise when an allocation of theirs fails (as Lightning's finder reads).
OUT_OF_MEMORY_MESSAGES = ("CUDA out of memory", "CUDA error: out of memory",
                          "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and any(m in str(e) for m in OUT_OF_MEMORY_MESSAGES))


def cpu_probe(cfg, trial: Trial, budget_bytes):
    """fits(b): the weights, gradients and optimizer state measured on the trial after one
    step at b = 1, plus `make estimate`'s activation formula for b (gpt2/activations.py),
    within the memory available (MemAvailable, the cgroup limit; a share of it for each
    of the node's processes) and the cap (per process)."""
    trial.step(1)
    fixed = sum(2 * p.numel() * p.element_size() for p in trial.model.parameters()
                if p.requires_grad) + optim.state_bytes(trial.optimizer)
    fixed += sum(p.numel() * p.element_size() for p in trial.model.parameters()
                 if not p.requires_grad) + trial.reserved_bytes
    shape = model_config(cfg, trial.vocab)
    free = available_bytes()  # shared by the node's DDP processes, each planning alike
    known = [x for x in (free and free // cfg.DDP_NPROC_PER_NODE, budget_bytes) if x is not None]
    if not known:
        raise cfglib.ConfigError("BATCH_SIZE_AUTO=y: the free memory cannot be read here "
                                 "(/proc/meminfo); set BATCH_SIZE_AUTO_MEMORY_MB")
    limit = min(known)

    def fits(micro_batch: int) -> bool:
        acts = activation_bytes(with_batch(cfg, micro_batch, 1), shape)
        need = fixed + acts["head"] + acts[
            "checkpointed" if cfg.ACTIVATION_CHECKPOINTING else "blocks"]
        return need <= limit
    return fits


PROBES = {"cuda": cuda_probe, "cpu": cpu_probe}


def available_bytes():
    """Memory this process may still take: MemAvailable, and the cgroup's limit less its
    usage when one is set (cgroup v2, then v1); None when neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage in (("memory.max", "memory.current"),
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            used = int(Path("/sys/fs/cgroup", usage).read_text())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 2**60:
            found.append(int(cap) - used)
        break
    return min(found) if found else None


def resident_data_bytes(cfg, prepared) -> int:
    """The sampled splits that DATA_LOADER=preloaded will hold on the device (int32), which
    the trial must leave room for; 0 for memory-mapped batches."""
    if cfg.DATA_LOADER != "preloaded":
        return 0
    return 4 * sum(len(data.SplitTokens(prepared, s)) for s in SAMPLED_SPLITS)


# -- the choice --------------------------------------------------------------------------
def with_batch(cfg, micro_batch: int, accumulation: int):
    """cfg training with this micro-batch and accumulation; its text and hash stay those
    of what was asked (the run directory and its checkpoints are the asked run's)."""
    return cfglib.Config({**cfg, "BATCH_SIZE": micro_batch,
                          "GRADIENT_ACCUMULATION": accumulation}, cfg.text, cfg.hash, cfg.path)


def recorded(run, step_batch: int, processes: int):
    """The Choice the run's summary.json records, when the run has a checkpoint to resume
    and the record still splits the step for this process count; else None."""
    if not any(p.exists() for p in (run.ckpt, checkpoint.previous(run.ckpt))):
        return None
    summary = run.read_summary()
    micro, accum = summary.get("batch_size_used"), summary.get("gradient_accumulation_used")
    if not (isinstance(micro, int) and isinstance(accum, int)) or micro * accum != step_batch:
        return None
    return Choice(micro, accum, "resumed") if accum % processes == 0 else None


def choose(cfg, prepared, device: torch.device, ranks, run) -> Choice:
    """The micro-batch and accumulation to train with (see the module's docstring). A
    resume keeps the split its run recorded while that still fits (on another device or
    under a lower cap it searches again: the sequences per step stay the same). With
    several processes a size fits only where it fits on every one of them."""
    if not cfg.BATCH_SIZE_AUTO:
        return Choice(cfg.BATCH_SIZE, cfg.GRADIENT_ACCUMULATION, "asked")
    step_batch = cfg.BATCH_SIZE * cfg.GRADIENT_ACCUMULATION
    earlier = recorded(run, step_batch, ranks.world_size)
    if device.type not in PROBES:
        raise cfglib.ConfigError(f"BATCH_SIZE_AUTO=y: no way to probe {device.type} memory "
                                 f"(only {', '.join(PROBES)}); set BATCH_SIZE_AUTO=n and "
                                 f"BATCH_SIZE yourself")
    cap = cfg.BATCH_SIZE_AUTO_MEMORY_MB * MIB or None
    trial = Trial(cfg, data.vocab_size(prepared), device, resident_data_bytes(cfg, prepared))
    try:
        probe = PROBES[device.type](cfg, trial, cap)
        fits = lambda b: not ranks.any(not probe(b))  # noqa: E731
        if earlier is not None and fits(earlier.micro_batch):
            return earlier  # exactly the split the checkpoint was trained with
        best = search(candidates(step_batch, ranks.world_size), fits, cfg.BATCH_SIZE)
    finally:
        trial.close()
    if best is None:
        where = f"{cap // MIB:,} MiB (BATCH_SIZE_AUTO_MEMORY_MB)" if cap else "the memory available"
        raise cfglib.ConfigError(
            f"BATCH_SIZE_AUTO=y: not even a micro-batch of 1 sequence of BLOCK_SIZE="
            f"{cfg.BLOCK_SIZE} fits {runtime.device_name(device)} within {where}; set "
            f"ACTIVATION_CHECKPOINTING=y, lower BLOCK_SIZE or the model size"
            + (", or raise BATCH_SIZE_AUTO_MEMORY_MB" if cap else ""))
    return Choice(best, step_batch // best, "searched")


def fitted(cfg, prepared, device: torch.device, ranks, run):
    """(the Config to train with, the Choice it was made with)."""
    choice = choose(cfg, prepared, device, ranks, run)
    if choice.how == "asked":
        return cfg, choice
    return with_batch(cfg, choice.micro_batch, choice.accumulation), choice


def describe(choice: Choice) -> str:
    """The choice for the run's log line."""
    text = f"micro-batch {choice.micro_batch} x {choice.accumulation} accumulation"
    return text if choice.how == "asked" else f"{text} (BATCH_SIZE_AUTO, {choice.how})"


def out_of_memory_hint(choice: Choice) -> str:
    """What to change when training ran out of memory all the same."""
    if choice.how == "asked":
        return ("lower BATCH_SIZE (raise GRADIENT_ACCUMULATION to keep tokens per step) or "
                "BLOCK_SIZE, or set BATCH_SIZE_AUTO=y")
    return (f"BATCH_SIZE_AUTO chose micro-batch {choice.micro_batch}; set "
            f"BATCH_SIZE_AUTO_MEMORY_MB below the device's memory to leave more headroom")
