"""Optimizer registry: OPTIMIZER choice -> constructor(param_groups, cfg).

Every optimizer gets the same parameter groups from param_groups(), so a
comparison differs only in the update rule. Each entry names the symbols of its
own learning rate and weight decay. Adding an optimizer is one entry in
OPTIMIZERS plus its block in lib/optim/Kconfig; `make matrix-kconfig` then gives the
matrix its MATRIX_OPTIMIZER_<NAME> switch (scripts/matrix_kconfig.py).
"""
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lib.config import ConfigError, require
from lib.optim.spam import FusedKernelError  # noqa: F401  (the trainer reports it)

# OPTIMIZER_IMPL choice -> keyword arguments of torch's optimizers.
IMPLEMENTATIONS = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True},
                   "for-loop": {"foreach": False}}
# OPTIMIZER_IMPL choice -> AdamWSPAM's implementation.
SPAM_IMPLEMENTATIONS = {"auto": "foreach", "foreach": "foreach", "fused": "fused",
                        "for-loop": "for-loop"}


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool) -> list:
    """Weight decay on matrices (dim >= 2) only: never on biases and norm gains, and on
    embeddings (and so a head tied to one) only when decay_embeddings."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            decays = p.dim() >= 2 and (decay_embeddings or id(p) not in embeddings)
            (decay if decays else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _betas(cfg) -> tuple:
    return (cfg.BETA1, cfg.BETA2)


def _sgd(groups, cfg, lr):
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.SGD_MOMENTUM, nesterov=cfg.SGD_NESTEROV,
                           **IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL])


def _adam(groups, cfg, lr):
    return torch.optim.Adam(groups, lr=lr, betas=_betas(cfg), eps=cfg.EPS, amsgrad=cfg.AMSGRAD,
                            **IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL])


def _adamw(groups, cfg, lr):
    return torch.optim.AdamW(groups, lr=lr, betas=_betas(cfg), eps=cfg.EPS, amsgrad=cfg.AMSGRAD,
                             **IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL])


def _adamw_8bit(groups, cfg, lr):
    bnb = require("bitsandbytes", "OPTIMIZER_ADAMW_8BIT", "bitsandbytes",
                  "select another OPTIMIZER")
    if cfg.ADAMW_8BIT_PAGED:
        if groups[0]["params"][0].device.type != "cuda":
            raise ConfigError("CONFIG_ADAMW_8BIT_PAGED=y: paged optimizer state needs a CUDA "
                              "device; unset ADAMW_8BIT_PAGED or select DEVICE_CUDA")
        return bnb.optim.PagedAdamW8bit(groups, lr=lr, betas=_betas(cfg), eps=cfg.EPS)
    return bnb.optim.AdamW8bit(groups, lr=lr, betas=_betas(cfg), eps=cfg.EPS)


def _lion(groups, cfg, lr):
    lion = require("lion_pytorch", "OPTIMIZER_LION", "lion-pytorch", "select another OPTIMIZER")
    return lion.Lion(groups, lr=lr, betas=(cfg.LION_BETA1, cfg.LION_BETA2))


def _adafactor(groups, cfg, lr):
    return torch.optim.Adafactor(groups, lr=lr, beta2_decay=cfg.ADAFACTOR_BETA2_DECAY,
                                 eps=(None, cfg.ADAFACTOR_EPS), d=cfg.ADAFACTOR_CLIP_THRESHOLD,
                                 **IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL])


def _adamwspam(groups, cfg, lr):
    from lib.optim.spam import AdamWSPAM

    resets = bool(cfg.SPAM_PERIODIC_RESET)
    warmup = bool(cfg.SPAM_WARMUP)
    spam = {"theta": cfg.SPAM_THETA, "enable_clip": cfg.SPAM_ENABLE_CLIP,
            "clip_delay": cfg.SPAM_CLIP_DELAY, "spike_threshold": cfg.SPAM_SPIKE_THRESHOLD,
            "spike_window": cfg.SPAM_SPIKE_WINDOW, "periodic_reset": resets, "warmup": warmup}
    if resets:  # the interval and ramp exist only with resets
        spam["reset_interval"] = cfg.SPAM_INTERVAL
    if warmup:
        spam["warmup_steps"] = cfg.SPAM_WARMUP_STEPS
    return AdamWSPAM(groups, lr=lr, betas=_betas(cfg), eps=cfg.EPS,
                     implementation=SPAM_IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL], **spam)


@dataclass(frozen=True)
class Entry:
    build: Callable  # (param_groups, cfg, lr) -> torch.optim.Optimizer
    lr: str  # the symbol holding its peak learning rate
    weight_decay: str = "WEIGHT_DECAY"  # the symbol holding its weight decay
    tuned: tuple = ()  # further symbols tuning may draw (each has a <SYMBOL>_SEARCH range)
    # a package imported only when it is selected (bitsandbytes prints warnings on import)
    package: str = ""

    @property
    def search(self) -> tuple:
        """The <SYMBOL>_SEARCH symbols of its tuning search space (scripts.tuning):
        its learning rate, its weight decay, then its own knobs."""
        return tuple(f"{s}_SEARCH" for s in (self.lr, self.weight_decay, *self.tuned))


OPTIMIZERS = {
    "sgd": Entry(_sgd, "SGD_LR"),
    "adam": Entry(_adam, "ADAM_LR"),
    "adamw": Entry(_adamw, "ADAMW_LR"),
    "adamw-8bit": Entry(_adamw_8bit, "ADAMW_8BIT_LR", package="bitsandbytes"),
    "lion": Entry(_lion, "LION_LR", "LION_WEIGHT_DECAY"),
    "adafactor": Entry(_adafactor, "ADAFACTOR_LR"),
    "adamwspam": Entry(_adamwspam, "ADAMWSPAM_LR", tuned=("SPAM_THETA",)),
}


def peak_lr(cfg) -> float:
    """The selected optimizer's peak learning rate (its own <OPTIMIZER>_LR symbol)."""
    return cfg[OPTIMIZERS[cfg.OPTIMIZER].lr]


def build(cfg, model: nn.Module) -> torch.optim.Optimizer:
    entry = OPTIMIZERS[cfg.OPTIMIZER]
    groups = param_groups(model, cfg[entry.weight_decay], cfg.DECAY_EMBEDDINGS)
    return entry.build(groups, cfg, cfg[entry.lr])


def prepare_grads(optimizer: torch.optim.Optimizer) -> None:
    """Let an optimizer that acts on raw gradients (SPAM: reset, spike count, element
    clip) do so; the trainer calls this after unscaling and before any global clip."""
    if hasattr(optimizer, "prepare_grads"):
        optimizer.prepare_grads()


def gradient_clips(cfg) -> list:
    """The gradient clips a run applies, in order (for summary.json)."""
    clips = []
    if cfg.OPTIMIZER == "adamwspam" and cfg.SPAM_ENABLE_CLIP:
        clips.append(f"spam-element (theta {cfg.SPAM_THETA:g}, raw gradients)")
    if cfg.GRAD_CLIP:
        clips.append(f"global-norm (max {cfg.GRAD_CLIP:g})")
    return clips


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every storage the optimizer keeps (moments, quantisation maps, counters,
    SPAM's own state), each counted once however many parameters share it."""
    tensors = [t for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t)]
    if hasattr(optimizer, "state_tensors"):
        tensors += optimizer.state_tensors()
    storages = {(t.device, t.untyped_storage().data_ptr()): t.untyped_storage().nbytes()
                for t in tensors}
    return sum(storages.values())


def stats(optimizer: torch.optim.Optimizer) -> dict:
    """Counters an optimizer keeps about itself (SPAM: clips, spikes, resets); may sync."""
    return optimizer.stats() if hasattr(optimizer, "stats") else {}
