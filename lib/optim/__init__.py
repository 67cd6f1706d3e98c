"""Optimizer registry: OPTIMIZER choice -> constructor(param_groups, cfg).

Every optimizer gets the same parameter groups, from param_groups(), so a
comparison differs only in the update rule.
"""
import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    """Weight decay on matrices (dim >= 2) only; none on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def _adamw(groups, cfg):
    return torch.optim.AdamW(groups, lr=cfg.LEARNING_RATE, betas=(cfg.BETA1, cfg.BETA2),
                             eps=cfg.EPS)


OPTIMIZERS = {
    "adamw": _adamw,
}


def build(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.OPTIMIZER](param_groups(model, cfg.WEIGHT_DECAY), cfg)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in optimizer state tensors (moments, quantisation maps, counters)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))
