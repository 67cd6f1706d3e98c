"""Pruners: the schedule and mask bookkeeping (Pruner) and the importance each method uses.

Call order in a training step (see Pruner):

    loss.backward(); scaler.unscale_(optimizer)
    pruner.before_step()             # movement score += -W * grad; zero pruned grads
    clip_grad_norm_(...); scaler.step(optimizer); scaler.update()
    record = pruner.after_step(iteration, budget_fraction)   # re-zero; maybe update masks
"""
import math
import warnings

import torch

from lib.prune.masks import (attach_to, mask_bool, mask_buffer, mask_storage_of, prunable,
                             set_mask, unpack_bits)
from lib.prune.schedule import SCHEDULES, ramp_progress, sparsity_at

# Optimizer state tensors zeroed at pruned positions by state pruning.
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class Pruner:
    """Gradual pruning of the prunable weights of `model` to `target_sparsity` with one
    global threshold on the method's importance score.

    Schedule (after_step): nothing before iteration `start`; the first mask
    update at the first iteration >= start (its budget fraction is the
    schedule's start_fraction, so its progress is 0), then one every
    `frequency` iterations after the previous one, plus one at the first
    iteration whose progress p = (budget_fraction - start_fraction) /
    (end - start_fraction) reaches 1 (p = 1 at once when end <=
    start_fraction), which prunes to exactly the target; none after it.
    """

    method = "base"

    def __init__(self, model, optimizer, *, target_sparsity: float, schedule: str = "cubic",
                 start: int = 0, end: float = 1.0, frequency: int = 1,
                 weights: str = "blocks", mask_storage: str = "bool"):
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown pruning schedule {schedule!r}; choose one of "
                             f"{', '.join(SCHEDULES)}")
        if not 0.0 < end <= 1.0:
            raise ValueError(f"pruning end must be a budget fraction in (0, 1], got {end}")
        if int(frequency) != frequency or frequency < 1:
            raise ValueError(f"pruning frequency must be an integer >= 1, got {frequency}")
        if int(start) != start or start < 0:
            raise ValueError(f"pruning start must be an integer >= 0, got {start}")
        self.model, self.optimizer = model, optimizer
        self.target = float(target_sparsity)
        self.schedule = schedule
        self.start, self.end, self.frequency = int(start), float(end), int(frequency)
        self.entries = prunable(model, weights)
        if not self.entries:
            raise ValueError("the model has no prunable weights")
        attach_to(self.entries, mask_storage)
        storages = {mask_storage_of(mask_buffer(m, a)) for _, m, a in self.entries}
        if len(storages) != 1:
            raise ValueError(f"prunable weights have masks of mixed storage {sorted(storages)}")
        self.storage = storages.pop()
        # Schedule state (saved in state_dict()).
        self.start_fraction = None
        self.last_update_iter = None
        self.updates = 0
        self.done = False
        # Host-side: whether any mask prunes anything (masking is skipped while none
        # does), valid while the mask buffers' (id, version) match _mask_sig.
        self._pruned_any = False
        self._mask_sig = None
        self._refresh()

    # -- tensors -----------------------------------------------------------
    def _weights(self) -> list:
        return [getattr(m, a) for _, m, a in self.entries]

    def masks(self) -> dict:
        """{name: bool keep-mask} (copies)."""
        return {name: mask_bool(m, a).clone() for name, m, a in self.entries}

    def _pruned_count(self) -> int:
        return int(sum((~mask_bool(m, a)).sum() for _, m, a in self.entries))

    def _signature(self) -> tuple:
        return tuple((id(b), b._version) for b in (mask_buffer(m, a) for _, m, a in self.entries))

    def _refresh(self) -> None:
        """Recount pruned weights (a sync) only if a mask buffer was replaced or written
        since the last count, e.g. by model.load_state_dict() or model.to()."""
        sig = self._signature()
        if sig != self._mask_sig:
            self._pruned_any = self._pruned_count() > 0
            self._mask_sig = sig

    def _zero_pruned(self, targets_of) -> None:
        """Multiply the tensors targets_of(weight) of every prunable weight by its mask."""
        if self.storage == "bool":
            tensors, masks = [], []
            for _, module, attr in self.entries:
                mask = mask_buffer(module, attr)
                for t in targets_of(getattr(module, attr)):
                    tensors.append(t)
                    masks.append(mask)
            if tensors:
                torch._foreach_mul_(tensors, masks)
        else:
            # One layer at a time: an unpacked mask lives only while it is applied.
            for _, module, attr in self.entries:
                weight = getattr(module, attr)
                targets = targets_of(weight)
                if targets:
                    mask = unpack_bits(mask_buffer(module, attr), weight.shape)
                    for t in targets:
                        t.mul_(mask)

    def _after_step_targets(self, weight) -> list:
        return [weight]

    # -- the hooks ---------------------------------------------------------
    @torch.no_grad()
    def before_step(self) -> None:
        """After backward (and GradScaler.unscale_), before clipping and optimizer.step():
        zero the gradients of pruned weights (movement first accumulates its score)."""
        self._accumulate()
        self._refresh()
        if self._pruned_any:
            self._zero_pruned(lambda w: [] if w.grad is None else [w.grad])

    def _accumulate(self) -> None:
        pass

    @torch.no_grad()
    def after_step(self, iteration: int, budget_fraction: float):
        """After optimizer.step(), with the iteration just completed (1-based) and the
        fraction of the budget done. Re-zeroes pruned weights (and, for state pruning,
        their moments); returns a record dict when the masks were updated, else None."""
        self._refresh()
        if self._pruned_any:
            self._zero_pruned(self._after_step_targets)
        if self.done or iteration < self.start:
            return None
        first = self.start_fraction is None
        if first:
            self.start_fraction = float(budget_fraction)
        p = self.progress(budget_fraction)
        if not (first or p >= 1.0 or iteration - self.last_update_iter >= self.frequency):
            return None
        target_now = sparsity_at(self.schedule, self.target, p)
        self._update_masks(target_now)
        self._after_update()
        self.last_update_iter = int(iteration)
        self.updates += 1
        self.done = p >= 1.0
        per_layer, sparsity = self._sparsities()
        self._pruned_any = sparsity > 0
        self._mask_sig = self._signature()
        if self._pruned_any:
            self._zero_pruned(self._after_step_targets)
        return {"iter": int(iteration), "target_sparsity_now": target_now,
                "sparsity": sparsity, "per_layer": per_layer}

    def progress(self, budget_fraction: float) -> float:
        """Schedule progress in [0, 1] at this budget fraction (0 before the first update)."""
        return ramp_progress(budget_fraction, self.start_fraction, self.end)

    # -- mask update -------------------------------------------------------
    def importance(self) -> dict:
        """{name: float32 importance of each weight} (higher is kept)."""
        score = self._scorer()
        return {name: score(name, m, a) for name, m, a in self.entries}

    def _scorer(self):
        """The function (name, module, attr) -> importance used for this update."""
        return self._importance

    def _importance(self, name, module, attr) -> torch.Tensor:
        raise NotImplementedError

    def _after_update(self) -> None:
        pass

    @torch.no_grad()
    def _update_masks(self, target_now: float) -> None:
        """Prune the lowest-importance weights, one global threshold, so that exactly
        round(target_now * N) of the N prunable weights are pruned (never fewer than
        are pruned already: masks only lose entries). Ties at the threshold are pruned
        in layer order, then element order."""
        sizes = [getattr(m, a).numel() for _, m, a in self.entries]
        total = sum(sizes)
        device = getattr(self.entries[0][1], self.entries[0][2]).device
        flat = torch.empty(total, dtype=torch.float32, device=device)
        score = self._scorer()  # one layer's scores at a time
        masks, offset = [], 0
        for (name, module, attr), n in zip(self.entries, sizes):
            mask = mask_bool(module, attr)
            masks.append(mask)
            seg = flat[offset:offset + n]
            seg.copy_(score(name, module, attr).reshape(-1))
            seg.nan_to_num_(nan=0.0)  # finite: only pruned weights score -inf
            seg.masked_fill_(~mask.reshape(-1), -math.inf)
            offset += n
        already = int(sum((~m).sum() for m in masks))
        k = min(total, max(already, int(round(target_now * total))))
        if k == already:
            return
        threshold = torch.kthvalue(flat, k).values
        segs, offset = [], 0
        for n in sizes:
            segs.append(flat[offset:offset + n])
            offset += n
        need = k - int(sum((seg < threshold).sum() for seg in segs))
        for (name, module, attr), seg, mask in zip(self.entries, segs, masks):
            prune = seg < threshold
            if need > 0:
                ties = seg == threshold
                count = int(ties.sum())
                take = min(count, need)
                if take == count:
                    prune |= ties
                elif take > 0:
                    prune[ties.nonzero().squeeze(1)[:take]] = True
                need -= take
            set_mask(module, attr, mask & ~prune.view(mask.shape))

    # -- reporting ---------------------------------------------------------
    def _sparsities(self):
        pruned = torch.stack([(~mask_bool(m, a)).sum() for _, m, a in self.entries]).tolist()
        sizes = [getattr(m, a).numel() for _, m, a in self.entries]
        per_layer = {name: c / n for (name, _, _), c, n in zip(self.entries, pruned, sizes)}
        return per_layer, sum(pruned) / sum(sizes)

    @torch.no_grad()
    def stats(self) -> dict:
        """Sparsity from the masks (global and per layer), mask bytes, and nonzero
        elements over all model parameters (this syncs with the device)."""
        per_layer, sparsity = self._sparsities()
        mask_bytes = sum(mask_buffer(m, a).numel() * mask_buffer(m, a).element_size()
                         for _, m, a in self.entries)
        return {"sparsity": sparsity, "per_layer": per_layer, "mask_bytes": mask_bytes,
                "pruning_incomplete": not self.done,
                "nonzero_params": int(sum(torch.count_nonzero(p) for p in self.model.parameters())),
                "prunable_params": sum(w.numel() for w in self._weights())}

    # -- checkpoints -------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain values and tensors (torch.load(weights_only=True) reads them back).
        Movement scores are the live buffers, as in Module.state_dict()."""
        return {"method": self.method, "start_fraction": self.start_fraction,
                "last_update_iter": self.last_update_iter, "updates": self.updates,
                "done": self.done, "scores": self._scores_state()}

    def _scores_state(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"pruner state is for {state.get('method')!r} pruning, "
                             f"this pruner is {self.method!r}")
        self._load_scores(state["scores"])
        sf = state["start_fraction"]
        self.start_fraction = None if sf is None else float(sf)
        last = state["last_update_iter"]
        self.last_update_iter = None if last is None else int(last)
        self.updates = int(state["updates"])
        self.done = bool(state["done"])
        self._refresh()

    def _load_scores(self, scores: dict) -> None:
        if scores:
            raise ValueError(f"{self.method} pruning keeps no scores; the state has "
                             f"{len(scores)}")


def _magnitude(name, module, attr) -> torch.Tensor:
    return getattr(module, attr).detach().abs().float()


class MagnitudePruner(Pruner):
    """Importance |W|."""

    method = "magnitude"

    def _importance(self, name, module, attr):
        return _magnitude(name, module, attr)


class MovementPruner(Pruner):
    """Movement pruning (Sanh et al. 2020): S accumulates -W * dL/dW (the unmasked
    gradient) over the steps since the last mask update; the lowest S is pruned and
    S restarts from zero after each update. One float32 score per prunable weight,
    kept here (state_dict()["scores"]), not in the model."""

    method = "movement"

    def __init__(self, model, optimizer, **kwargs):
        super().__init__(model, optimizer, **kwargs)
        self.scores = {name: torch.zeros(getattr(m, a).shape, dtype=torch.float32,
                                         device=getattr(m, a).device)
                       for name, m, a in self.entries}

    def _accumulate(self) -> None:
        if self.done:  # no mask update is coming
            return
        fast, slow = ([], [], []), []
        for name, module, attr in self.entries:
            weight = getattr(module, attr)
            grad = weight.grad
            if grad is None:
                continue
            score = self.scores[name]
            if weight.dtype == grad.dtype == torch.float32 and weight.device == score.device:
                for lst, t in zip(fast, (score, weight, grad)):
                    lst.append(t)
            else:
                slow.append((score, weight, grad))
        if fast[0]:
            torch._foreach_addcmul_(fast[0], fast[1], fast[2], value=-1.0)
        for score, weight, grad in slow:
            score.addcmul_(weight.float(), grad.float(), value=-1.0)

    def _importance(self, name, module, attr):
        return self.scores[name]

    def _after_update(self) -> None:
        torch._foreach_zero_(list(self.scores.values()))

    def _scores_state(self) -> dict:
        return dict(self.scores)

    def _load_scores(self, scores: dict) -> None:
        if scores.keys() != self.scores.keys():
            raise ValueError(f"movement scores for {sorted(scores)} do not match the prunable "
                             f"weights {sorted(self.scores)}")
        for name, tensor in scores.items():
            self.scores[name].copy_(tensor)


def _adam_family():
    from lib.optim.spam import AdamWSPAM
    return (torch.optim.Adam, torch.optim.AdamW, AdamWSPAM)


class StatePruner(Pruner):
    """AdamWPrune: importance from the Adam-family optimizer's state, no buffer but the mask.

    bitter0: |W * m| * |W| / (sqrt(v) + eps), m = exp_avg, v = exp_avg_sq of the
    weight, eps of its param group (1e-8 if the group has none). If any prunable
    weight has no exp_avg/exp_avg_sq yet (no optimizer step happened, e.g. the
    GradScaler skipped it), or every exp_avg is zero (all scores would tie at 0,
    e.g. just after a SPAM moment reset whose first step clipped every gradient),
    that update scores every weight by |W| instead (one scale for all) and warns.
    bitter1, bitter2: |W|.
    After every step the optimizer moments (exp_avg, exp_avg_sq, max_exp_avg_sq)
    are zeroed at pruned positions, as the weights are.
    """

    method = "state"
    VARIANTS = ("bitter0", "bitter1", "bitter2")

    def __init__(self, model, optimizer, *, variant: str = "bitter0", **kwargs):
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown AdamWPrune variant {variant!r}; choose one of "
                             f"{', '.join(self.VARIANTS)}")
        if not isinstance(optimizer, _adam_family()):
            raise ValueError(f"state pruning (AdamWPrune) needs an Adam-family optimizer that "
                             f"keeps exp_avg and exp_avg_sq (Adam, AdamW, AdamW + SPAM); got "
                             f"{type(optimizer).__name__}")
        super().__init__(model, optimizer, **kwargs)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [name for name, m, a in self.entries if id(getattr(m, a)) not in in_optimizer]
        if missing:
            raise ValueError(f"state pruning: prunable weights {missing} are not in the optimizer")
        self.variant = variant

    def _moments(self, weight) -> list:
        state = self.optimizer.state.get(weight)
        if not state:
            return []
        return [state[k] for k in MOMENT_KEYS
                if torch.is_tensor(state.get(k)) and state[k].shape == weight.shape]

    def _after_step_targets(self, weight) -> list:
        return [weight] + self._moments(weight)

    def _eps(self, weight) -> float:
        for group in self.optimizer.param_groups:
            if any(p is weight for p in group["params"]):
                return float(group.get("eps", 1e-8))
        return 1e-8

    def _has_moments(self, weight) -> bool:
        state = self.optimizer.state.get(weight) or {}
        return torch.is_tensor(state.get("exp_avg")) and torch.is_tensor(state.get("exp_avg_sq"))

    def _scorer(self):
        if self.variant != "bitter0":
            return _magnitude
        weights = self._weights()
        if not all(self._has_moments(w) for w in weights):
            warnings.warn("state pruning (bitter0): no optimizer moments yet for some prunable "
                          "weights; scoring this mask update by |W|", RuntimeWarning)
            return _magnitude
        if not bool(torch.stack([self.optimizer.state[w]["exp_avg"].any() for w in weights]).any()):
            warnings.warn("state pruning (bitter0): every exp_avg is zero (moments just reset, "
                          "no gradient since); scoring this mask update by |W|", RuntimeWarning)
            return _magnitude
        return self._importance

    def _importance(self, name, module, attr):
        param = getattr(module, attr)
        state = self.optimizer.state[param]
        w = param.detach().float()
        m = state["exp_avg"].float()
        v = state["exp_avg_sq"].float()
        return (w * m).abs_().mul_(w.abs()).div_(v.sqrt().add_(self._eps(param)))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "variant": self.variant}

    def load_state_dict(self, state: dict) -> None:
        if state.get("variant", self.variant) != self.variant:
            raise ValueError(f"pruner state is for AdamWPrune {state['variant']}, this pruner "
                             f"is {self.variant}")
        super().load_state_dict(state)


class NoPruner:
    """Dense training (PRUNING=none): the Pruner interface with no-op hooks, so the
    training step needs no `if pruner` checks; build() returns it for "none"."""

    method = "none"

    def __init__(self, model, optimizer=None):
        self.model = model

    def before_step(self) -> None:
        pass

    def after_step(self, iteration: int, budget_fraction: float):
        return None

    @torch.no_grad()
    def stats(self) -> dict:
        return {"sparsity": 0.0, "per_layer": {}, "mask_bytes": 0,
                "nonzero_params": int(sum(torch.count_nonzero(p) for p in self.model.parameters())),
                "prunable_params": sum(getattr(m, a).numel()
                                       for _, m, a in prunable(self.model))}

    def state_dict(self) -> dict:
        return {"method": self.method}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"pruner state is for {state.get('method')!r} pruning, this run "
                             f"prunes nothing")
