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
from lib.config import ConfigError
from lib.prune.schedule import Plan, plan, sparsity_at

__all__ = ["PRUNERS", "Plan", "Pruner", "check_schedule", "plan", "ramp_end", "MagnitudePruner", "MovementPruner", "StatePruner", "NoPruner",
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
                  start=cfg.PRUNING_START, end=ramp_end(cfg), frequency=cfg.PRUNING_FREQUENCY,
                  weights=cfg.PRUNE_WEIGHTS,
                  mask_storage=cfg.MASK_STORAGE)
    if method == "state":
        kwargs["variant"] = cfg.ADAMWPRUNE_VARIANT
    return PRUNERS[method](model, optimizer, **kwargs)


def ramp_end(cfg) -> float:
    """The budget fraction at which sparsity reaches the target: PRUNING_END, or for
    bitter2's extra iterations without BITTER2_STRETCH_RAMP, where PRUNING_END of the base
    budget falls in the longer one."""
    if getattr(cfg, "BITTER2_SPEND", None) == "iters" and not cfg.BITTER2_STRETCH_RAMP:
        return cfg.PRUNING_END / (1 + cfg.BITTER2_EXTRA_ITERS_PCT / 100)
    return cfg.PRUNING_END


def check_schedule(cfg, total_iters, budget: str):
    """The Plan of cfg's pruning in a budget of total_iters iterations (None: a wall-clock
    budget, where only the share after PRUNING_END is known); a ConfigError naming the
    knobs when the target is out of reach or reached with less than PRUNING_MIN_FULL_SHARE
    of training left."""
    end, least = ramp_end(cfg), cfg.PRUNING_MIN_FULL_SHARE
    knobs = (f"PRUNING_START={cfg.PRUNING_START}, PRUNING_END={cfg.PRUNING_END}, "
             f"PRUNING_FREQUENCY={cfg.PRUNING_FREQUENCY}")
    fix = (f"lower PRUNING_START or PRUNING_END (at most {1 - least:g} for "
           f"PRUNING_MIN_FULL_SHARE={least:g}), or lengthen the budget")
    if total_iters is None:
        if 1 - end < least - 1e-9:
            raise ConfigError(f"pruning to TARGET_SPARSITY={cfg.TARGET_SPARSITY:g} ends at "
                              f"{end:.0%} of the budget ({knobs}; {budget}), leaving less than "
                              f"PRUNING_MIN_FULL_SHARE={least:g} at full sparsity; {fix}")
        return None
    schedule = plan(cfg.PRUNING_START, end, total_iters)
    if schedule.target_reached is None:
        raise ConfigError(f"pruning cannot reach TARGET_SPARSITY={cfg.TARGET_SPARSITY:g}: "
                          f"{budget} ends before the schedule of {knobs} gets there "
                          f"(the first mask update would be at iteration {max(cfg.PRUNING_START, 1)}); "
                          f"{fix}")
    if schedule.full_share < least - 1e-9:
        raise ConfigError(f"pruning reaches TARGET_SPARSITY={cfg.TARGET_SPARSITY:g} at iteration "
                          f"{schedule.target_reached} of {total_iters} ({knobs}; {budget}), leaving "
                          f"{schedule.full_share:.1%} of training at full sparsity, less than "
                          f"PRUNING_MIN_FULL_SHARE={least:g}; {fix}")
    return schedule
