"""Optimizer registry: OPTIMIZER choice -> constructor(param_groups, cfg).

Every optimizer gets the same parameter groups from param_groups(), so a
comparison differs only in the update rule. Adding an optimizer is one entry
in OPTIMIZERS plus its block in lib/optim/Kconfig.
"""
import importlib

import torch
from torch import nn

from lib.config import ConfigError

# OPTIMIZER_IMPL choice -> keyword arguments of torch's optimizers.
IMPLEMENTATIONS = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True},
                   "for-loop": {"foreach": False}}


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


def _require(module: str, symbol: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"CONFIG_{symbol}=y needs the {package} package, which is not "
                          f"installed ({e}): pip install {package}, or select another "
                          f"OPTIMIZER") from None


def _betas(cfg) -> tuple:
    return (cfg.BETA1, cfg.BETA2)


def _sgd(groups, cfg):
    return torch.optim.SGD(groups, lr=cfg.LEARNING_RATE, momentum=cfg.SGD_MOMENTUM,
                           nesterov=cfg.SGD_NESTEROV, **IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL])


def _adam(groups, cfg):
    return torch.optim.Adam(groups, lr=cfg.LEARNING_RATE, betas=_betas(cfg), eps=cfg.EPS,
                            amsgrad=cfg.AMSGRAD, **IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL])


def _adamw(groups, cfg):
    return torch.optim.AdamW(groups, lr=cfg.LEARNING_RATE, betas=_betas(cfg), eps=cfg.EPS,
                             amsgrad=cfg.AMSGRAD, **IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL])


def _adamw_8bit(groups, cfg):
    bnb = _require("bitsandbytes", "OPTIMIZER_ADAMW_8BIT", "bitsandbytes")
    if cfg.ADAMW_8BIT_PAGED:
        if groups[0]["params"][0].device.type != "cuda":
            raise ConfigError("CONFIG_ADAMW_8BIT_PAGED=y: paged optimizer state needs a CUDA "
                              "device; unset ADAMW_8BIT_PAGED or select DEVICE_CUDA")
        return bnb.optim.PagedAdamW8bit(groups, lr=cfg.LEARNING_RATE, betas=_betas(cfg),
                                        eps=cfg.EPS)
    return bnb.optim.AdamW8bit(groups, lr=cfg.LEARNING_RATE, betas=_betas(cfg), eps=cfg.EPS)


def _lion(groups, cfg):
    lion = _require("lion_pytorch", "OPTIMIZER_LION", "lion-pytorch")
    return lion.Lion(groups, lr=cfg.LEARNING_RATE, betas=_betas(cfg))


def _adafactor(groups, cfg):
    return torch.optim.Adafactor(groups, lr=cfg.LEARNING_RATE,
                                 beta2_decay=cfg.ADAFACTOR_BETA2_DECAY,
                                 eps=(None, cfg.ADAFACTOR_EPS), d=cfg.ADAFACTOR_CLIP_THRESHOLD,
                                 **IMPLEMENTATIONS[cfg.OPTIMIZER_IMPL])


def _adamwspam(groups, cfg):
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
    return AdamWSPAM(groups, lr=cfg.LEARNING_RATE, betas=_betas(cfg), eps=cfg.EPS, **spam)


OPTIMIZERS = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "adamw-8bit": _adamw_8bit,
    "lion": _lion,
    "adafactor": _adafactor,
    "adamwspam": _adamwspam,
}


def build(cfg, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.WEIGHT_DECAY, cfg.DECAY_EMBEDDINGS)
    return OPTIMIZERS[cfg.OPTIMIZER](groups, cfg)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in optimizer state tensors (moments, quantisation maps, counters)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))


def stats(optimizer: torch.optim.Optimizer) -> dict:
    """Counters an optimizer keeps about itself (SPAM: clips, spikes, resets); may sync."""
    return optimizer.stats() if hasattr(optimizer, "stats") else {}
