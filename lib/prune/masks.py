"""Which weights are prunable, and their masks.

A mask is a buffer `<param>_mask` (e.g. `weight_mask`) on the module that owns
the weight, so it is part of `model.state_dict()` and of every checkpoint.
True (or a 1 bit) keeps a weight, False (a 0 bit) prunes it. Two storages:

- "bool": a torch.bool tensor of the weight's shape (1 byte per weight);
- "packed": uint8, ceil(numel / 8) bytes, 1 bit per weight, most significant
  bit first (numpy.packbits' default order); pad bits of the last byte are 0.
"""
import math

import torch
import torch.nn as nn

STORAGES = ("bool", "packed")
MASK_SUFFIX = "_mask"
BLOCKS_PREFIX = "transformer.h."

_shifts_cache = {}


def _shifts(device) -> torch.Tensor:
    key = str(device)
    if key not in _shifts_cache:
        _shifts_cache[key] = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)
    return _shifts_cache[key]


def pack_bits(mask_bool: torch.Tensor) -> torch.Tensor:
    """Pack a mask (any shape; nonzero = 1) into uint8, 8 elements a byte, MSB first."""
    flat = mask_bool.reshape(-1)
    bits = (flat if flat.dtype == torch.bool else flat != 0).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    bits = bits.view(-1, 8) << _shifts(bits.device)
    return bits.sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """The bool tensor of `shape` that pack_bits packed into `packed`."""
    shape = torch.Size(shape)
    n = shape.numel()
    if packed.dtype != torch.uint8 or packed.numel() != math.ceil(n / 8):
        raise ValueError(f"packed mask of {packed.numel()} {packed.dtype} elements does not hold "
                         f"a mask of shape {tuple(shape)} (needs {math.ceil(n / 8)} uint8)")
    bits = (packed.reshape(-1, 1) >> _shifts(packed.device)) & 1
    return bits.reshape(-1)[:n].to(torch.bool).view(shape)


# Which weights a pruner may remove: (module name, module, inside the blocks?) -> bool.
WEIGHT_SETS = {
    "blocks": lambda name, module, in_blocks: in_blocks and isinstance(module, nn.Linear),
    "blocks-embeddings": lambda name, module, in_blocks: (
        isinstance(module, nn.Linear) if in_blocks
        else isinstance(module, (nn.Embedding, nn.Linear))),
    # The AdamWPrune code: every Linear, the output head (tied to wte by default) included.
    "all-linear": lambda name, module, in_blocks: isinstance(module, nn.Linear),
}


def prunable(model: nn.Module, weights: str = "blocks") -> list:
    """[(qualified parameter name, owning module, parameter attribute name)] of prunable weights.

    weights (PRUNE_WEIGHTS): "blocks", the weights of the nn.Linear layers inside the
    transformer blocks (`transformer.h.N....`); "blocks-embeddings", also every
    nn.Embedding (wte, wpe) and the Linear layers outside the blocks (the output head);
    "all-linear", every nn.Linear weight, the output head included. A parameter shared by
    several modules (the head tied to wte) appears once, under the first module that
    holds it (transformer.wte, or lm_head for all-linear).
    """
    if weights not in WEIGHT_SETS:
        raise ValueError(f"unknown prunable weight set {weights!r}; choose one of "
                         f"{', '.join(WEIGHT_SETS)}")
    takes = WEIGHT_SETS[weights]
    out, seen = [], set()
    for mname, module in model.named_modules():
        if not takes(mname, module, mname.startswith(BLOCKS_PREFIX)):
            continue
        weight = module.weight
        if weight is None or id(weight) in seen:
            continue
        seen.add(id(weight))
        out.append((f"{mname}.weight" if mname else "weight", module, "weight"))
    return out


def mask_storage_of(buffer: torch.Tensor) -> str:
    return "bool" if buffer.dtype == torch.bool else "packed"


def _new_mask(weight: torch.Tensor, storage: str) -> torch.Tensor:
    ones = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    return ones if storage == "bool" else pack_bits(ones)


def attach_to(entries, storage: str) -> None:
    """Register an all-keep mask buffer for each (name, module, attr) that has none yet.

    An existing mask of the right storage and size is kept (attaching twice
    does not undo pruning); one of another storage or size is an error.
    """
    if storage not in STORAGES:
        raise ValueError(f"unknown mask storage {storage!r}; choose one of {', '.join(STORAGES)}")
    for name, module, attr in entries:
        weight = getattr(module, attr)
        buf_name = attr + MASK_SUFFIX
        existing = module._buffers.get(buf_name)
        want = _new_mask(weight, storage)
        if existing is not None:
            if existing.dtype != want.dtype or existing.shape != want.shape:
                raise ValueError(f"{name}: a {mask_storage_of(existing)} mask of shape "
                                 f"{tuple(existing.shape)} is attached already; expected "
                                 f"{storage} of shape {tuple(want.shape)}")
            continue
        module.register_buffer(buf_name, want, persistent=True)


def attach_masks(model: nn.Module, cfg) -> None:
    """Give every prunable weight an all-keep mask buffer (`weight_mask`), unless PRUNING is none.

    Call when building the model, after loading pretrained weights and before
    loading a checkpoint, so that checkpoints (which hold the masks) load.
    """
    if cfg.PRUNING in (None, "none"):
        return
    attach_to(prunable(model, cfg.PRUNE_WEIGHTS or "blocks"), cfg.MASK_STORAGE or "bool")


def mask_buffer(module: nn.Module, attr: str) -> torch.Tensor:
    buf = module._buffers.get(attr + MASK_SUFFIX)
    if buf is None:
        raise RuntimeError(f"no {attr}{MASK_SUFFIX} buffer on {type(module).__name__}; "
                           f"call lib.prune.attach_masks(model, cfg) when building the model")
    return buf


def mask_bool(module: nn.Module, attr: str) -> torch.Tensor:
    """The mask as a bool tensor of the weight's shape (the buffer itself for bool storage)."""
    buf = mask_buffer(module, attr)
    if buf.dtype == torch.bool:
        return buf
    return unpack_bits(buf, getattr(module, attr).shape)


def set_mask(module: nn.Module, attr: str, keep: torch.Tensor) -> None:
    """Write a bool keep-mask into the existing buffer, in place, in its storage."""
    buf = mask_buffer(module, attr)
    buf.copy_(keep if buf.dtype == torch.bool else pack_bits(keep))


def masked_modules(model: nn.Module) -> list:
    """[(module, attr)] for every `<attr>_mask` buffer next to a parameter `<attr>`."""
    out = []
    for module in model.modules():
        for buf_name in module._buffers:
            attr = buf_name[: -len(MASK_SUFFIX)]
            if buf_name.endswith(MASK_SUFFIX) and module._parameters.get(attr) is not None:
                out.append((module, attr))
    return out


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Zero every masked weight where its mask prunes it (e.g. after loading a checkpoint
    from elsewhere; a pruned run's checkpoints hold zeros there already)."""
    for module, attr in masked_modules(model):
        getattr(module, attr).mul_(mask_bool(module, attr))
