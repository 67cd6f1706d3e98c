"""Pruning registry: PRUNING choice -> pruner class ("none": NoPruner, no-op hooks).

The trainer's part:

    model = build_model(...); attach_masks(model, cfg)   # before loading a checkpoint
    optimizer = ...; pruner = build(cfg, model, optimizer)  # NoPruner for PRUNING=none
    # resume: model.load_state_dict(...) (masks included); pruner.load_state_dict(state["pruner"])
    # each step:
    #   backward; scaler.unscale_(optimizer)
    #   pruner.before_step()
    #   clip_grad_norm_; scaler.step(optimizer); scaler.update()
    #   record = pruner.after_step(iteration, budget_fraction)  # a dict on mask updates
    # checkpoint: state["pruner"] = pruner.state_dict()

Masks are model buffers (`weight_mask`), so checkpoints carry them and a
sampler that calls attach_masks before load_state_dict gets the pruned model
(its weights are zero already; apply_masks(model) re-applies the masks).
"""
from lib.prune.masks import (apply_masks, attach_masks, mask_bool, pack_bits, prunable,
                             unpack_bits)
from lib.prune.methods import MagnitudePruner, MovementPruner, NoPruner, Pruner, StatePruner
from lib.prune.schedule import sparsity_at

__all__ = ["PRUNERS", "Pruner", "MagnitudePruner", "MovementPruner", "StatePruner", "NoPruner",
           "apply_masks", "attach_masks", "build", "mask_bool", "pack_bits", "prunable",
           "sparsity_at", "unpack_bits"]

PRUNERS = {
    "magnitude": MagnitudePruner,
    "movement": MovementPruner,
    "state": StatePruner,
}


def build(cfg, model, optimizer):
    """The pruner for cfg.PRUNING (NoPruner for "none"). Attaches masks if the model has none."""
    method = cfg.PRUNING
    if method == "none":
        return NoPruner(model)
    if method not in PRUNERS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of none, "
                         f"{', '.join(PRUNERS)}")
    kwargs = dict(target_sparsity=cfg.TARGET_SPARSITY, schedule=cfg.PRUNING_SCHEDULE,
                  start=cfg.PRUNING_START, end=cfg.PRUNING_END, frequency=cfg.PRUNING_FREQUENCY,
                  include_embeddings=bool(cfg.PRUNE_EMBEDDINGS),
                  mask_storage=cfg.MASK_STORAGE)
    if method == "state":
        kwargs["variant"] = cfg.ADAMWPRUNE_VARIANT
    return PRUNERS[method](model, optimizer, **kwargs)
