"""AdamW with SPAM: spike-aware clipping, periodic momentum reset, warm-up.

SPAM is described in Huang et al., "SPAM: Spike-Aware Adam with Momentum
Reset for Stable LLM Training" (ICLR 2025). This is an independent
implementation of the behaviour described there, on top of AdamW (decoupled
weight decay, bias correction). Every SPAM feature can be switched off; with
``enable_clip=False`` and ``periodic_reset=False`` the optimizer performs
exactly the arithmetic of ``torch.optim.AdamW(foreach=False)``.

Step ``t`` (1-based, global: one per ``step()`` call) goes like this:

1. **Periodic reset** (``periodic_reset``): if ``t > 1`` and
   ``(t - 1) % reset_interval == 0`` -- i.e. after every ``reset_interval``
   completed steps -- both moment estimates of every parameter are set to
   zero before this step's gradient is folded in. The step counters used for
   bias correction are *not* reset, so bias correction keeps using the
   global step count. ``k`` (steps since the last reset, or since the start
   of training when there has been no reset) is 1 on this step.

2. **Spike detection** (``spike_window > 0``): the global L2 norm of all
   gradients (before clipping) is compared with a window holding the last
   ``spike_window`` norms (the current norm excluded). When the window holds
   at least ``min(SPIKE_MIN_SAMPLES, spike_window)`` norms, its sample
   standard deviation ``std`` (Bessel-corrected) is positive and
   ``(norm - mean) / std > spike_threshold``, the step counts as a spike
   (``spike_count``). The norm is then added to the window (the oldest one
   falls out). Detection only counts; it does not change the update. All of
   this stays on the gradients' device: no host sync.

3. **Spike-aware clipping** (``enable_clip``, only while ``k > clip_delay``):
   with ``v`` the second-moment estimate before this step's update, every
   gradient element with ``g**2 > theta * v`` is replaced by
   ``sign(g) * sqrt(theta * v)``. ``clip_count`` counts the replaced
   elements. Clipping is suspended for the first ``clip_delay`` steps of
   training and after every reset, where ``v`` is not yet meaningful.

4. **AdamW update** with the (clipped) gradient, per parameter::

       p <- p * (1 - lr * weight_decay)              # decoupled, never scaled
       m <- beta1 * m + (1 - beta1) * g
       v <- beta2 * v + (1 - beta2) * g**2
       p <- p - scale * lr / (1 - beta1**s) * m / (sqrt(v) / sqrt(1 - beta2**s) + eps)

   where ``s`` is the parameter's own step count (the number of steps in
   which it had a gradient; the same as ``t`` for parameters that always
   have one) and ``scale`` is the warm-up factor below.

5. **Warm-up after reset** (``warmup``): after a reset (never at the very
   start of training) the Adam part of the update is scaled by a cosine
   ramp, with ``k`` as above (``k = 1`` on the first step after a reset)::

       scale(k) = 0.01 + (1 - 0.01) * 0.5 * (1 - cos(pi * min(k, warmup_steps) / warmup_steps))

   ``scale(1)`` is just above 0.01 (0.010244 for ``warmup_steps=100``) and
   ``scale(k) == 1.0`` exactly for ``k >= warmup_steps``; ``warmup_steps=0``
   means no ramp. Before the first reset, or with ``warmup=False``,
   ``scale = 1``.

Counters and checkpoints: the global SPAM state (step, steps since reset,
``reset_count``, ``clip_count``, ``spike_count`` and the norm window) lives in
``self.spam_state``, not in the per-parameter ``self.state``. ``state_dict()``
adds it under the top-level key ``"spam"`` and ``load_state_dict()`` restores
it (a state dict without that key, e.g. one from torch's AdamW, loads as a
fresh SPAM state). Per-parameter state (``step``, ``exp_avg``, ``exp_avg_sq``)
is torch's usual per-parameter state.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

__all__ = ["AdamWSPAM", "warmup_scale"]

# Smallest warm-up scale, at the instant of a reset.
WARMUP_START = 0.01


def warmup_scale(k: int, warmup_steps: int) -> float:
    """Cosine ramp factor ``k`` steps after a reset (``k = 1`` right after it).

    ``0.01 + 0.99 * 0.5 * (1 - cos(pi * min(k, warmup_steps) / warmup_steps))``;
    exactly 1.0 for ``k >= warmup_steps`` (and for ``warmup_steps <= 0``).
    """
    if warmup_steps <= 0 or k >= warmup_steps:
        return 1.0
    frac = max(k, 0) / warmup_steps
    return WARMUP_START + (1.0 - WARMUP_START) * 0.5 * (1.0 - math.cos(math.pi * frac))


class AdamWSPAM(Optimizer):
    """AdamW plus SPAM (spike clipping, momentum reset, post-reset warm-up).

    See the module docstring for the exact algorithm. ``lr``, ``betas``,
    ``eps``, ``weight_decay`` and ``theta`` may be set per parameter group;
    the schedule arguments (clip delay, reset, warm-up, spike detection) are
    optimizer-wide.
    """

    # Spike detection needs at least this many norms in the window (or the
    # whole window when spike_window is smaller).
    SPIKE_MIN_SAMPLES = 10

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        theta: float = 50.0,
        enable_clip: bool = True,
        clip_delay: int = 20,
        periodic_reset: bool = True,
        reset_interval: int = 1000,
        warmup: bool = True,
        warmup_steps: int = 100,
        spike_threshold: float = 2.0,
        spike_window: int = 100,
    ) -> None:
        if isinstance(lr, torch.Tensor):
            raise TypeError("AdamWSPAM: lr must be a float")
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not theta > 0.0:
            raise ValueError(f"Invalid theta: {theta}")
        if int(clip_delay) != clip_delay or clip_delay < 0:
            raise ValueError(f"Invalid clip_delay: {clip_delay}")
        if int(reset_interval) != reset_interval or reset_interval < 1:
            raise ValueError(f"Invalid reset_interval: {reset_interval}")
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"Invalid warmup_steps: {warmup_steps}")
        if int(spike_window) != spike_window or spike_window < 0 or spike_window == 1:
            raise ValueError(f"Invalid spike_window (0 disables, else >= 2): {spike_window}")
        if not spike_threshold >= 0.0:
            raise ValueError(f"Invalid spike_threshold: {spike_threshold}")

        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, theta=theta
        )
        super().__init__(params, defaults)

        self.enable_clip = bool(enable_clip)
        self.clip_delay = int(clip_delay)
        self.periodic_reset = bool(periodic_reset)
        self.reset_interval = int(reset_interval)
        self.warmup = bool(warmup)
        self.warmup_steps = int(warmup_steps)
        self.spike_threshold = float(spike_threshold)
        self.spike_window = int(spike_window)
        self.spam_state: dict[str, Any] = self._fresh_spam_state()

    # ------------------------------------------------------------------ state

    @staticmethod
    def _fresh_spam_state() -> dict[str, Any]:
        return {
            "step": 0,  # global step count (host int: known without a sync)
            "since_reset": 0,  # k: steps since last reset (or since start)
            "reset_count": 0,
            "window_len": 0,  # norms held in norm_window
            "window_pos": 0,  # next slot to write in norm_window
            # Device tensors, created lazily on the gradients' device.
            "clip_count": None,  # int64 scalar
            "spike_count": None,  # int64 scalar
            "norm_window": None,  # float32 [spike_window]
        }

    def _ensure_device_state(self, device: torch.device) -> None:
        st = self.spam_state
        if st["clip_count"] is None:
            st["clip_count"] = torch.zeros((), dtype=torch.int64, device=device)
        if st["spike_count"] is None:
            st["spike_count"] = torch.zeros((), dtype=torch.int64, device=device)
        if st["norm_window"] is None or st["norm_window"].numel() != self.spike_window:
            st["norm_window"] = torch.zeros(
                self.spike_window, dtype=torch.float32, device=device
            )
            st["window_len"] = 0
            st["window_pos"] = 0

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["spam"] = {
            k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
            for k, v in self.spam_state.items()
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        spam = state_dict.pop("spam", None)
        super().load_state_dict(state_dict)
        # Groups saved by another optimizer (e.g. AdamW) lack SPAM keys.
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        # torch's AdamW keeps per-parameter steps as tensors; ours are ints.
        for pstate in self.state.values():
            if isinstance(pstate.get("step"), torch.Tensor):
                pstate["step"] = int(pstate["step"].item())
        fresh = self._fresh_spam_state()
        if spam is not None:
            device = self._first_param_device()
            for k in fresh:
                if k not in spam:
                    continue
                v = spam[k]
                if isinstance(v, torch.Tensor):
                    v = v.detach().clone().to(device)
                fresh[k] = v
            win = fresh["norm_window"]
            if win is not None and win.numel() != self.spike_window:
                # Window size changed since the checkpoint: start a new window.
                fresh["norm_window"] = None
                fresh["window_len"] = 0
                fresh["window_pos"] = 0
        self.spam_state = fresh

    def _first_param_device(self) -> torch.device:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")

    def stats(self) -> dict[str, int]:
        """Counters as Python ints (this syncs with the device)."""
        st = self.spam_state

        def as_int(v: Any) -> int:
            return 0 if v is None else int(v.item() if isinstance(v, torch.Tensor) else v)

        return {
            "clip_count": as_int(st["clip_count"]),
            "spike_count": as_int(st["spike_count"]),
            "reset_count": as_int(st["reset_count"]),
        }

    # ------------------------------------------------------------- internals

    def _reset_moments(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                state["exp_avg"].zero_()
                state["exp_avg_sq"].zero_()

    def _detect_spike(self, grads: list[torch.Tensor], device: torch.device) -> None:
        st = self.spam_state
        # Accumulate in at least float32 (no copy of low-precision grads).
        norms = [
            torch.linalg.vector_norm(
                g, dtype=torch.float64 if g.dtype == torch.float64 else torch.float32
            ).to(device=device, dtype=torch.float32)
            for g in grads
        ]
        norm = torch.linalg.vector_norm(torch.stack(norms))
        window = st["norm_window"]
        n = st["window_len"]
        if n >= max(2, min(self.SPIKE_MIN_SAMPLES, self.spike_window)):
            valid = window if n == window.numel() else window[:n]
            std, mean = torch.std_mean(valid, correction=1)
            is_spike = (std > 0) & ((norm - mean) > self.spike_threshold * std)
            st["spike_count"].add_(is_spike.to(torch.int64))
        window[st["window_pos"]] = norm
        st["window_pos"] = (st["window_pos"] + 1) % window.numel()
        st["window_len"] = min(n + 1, window.numel())

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grads_all: list[torch.Tensor] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamWSPAM does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("AdamWSPAM does not support complex parameters")
                grads_all.append(p.grad)
        if not grads_all:
            return loss

        st = self.spam_state
        device = grads_all[0].device
        self._ensure_device_state(device)

        # 1. periodic reset, at the start of the step after every
        #    reset_interval completed steps.
        t = st["step"] + 1
        if self.periodic_reset and t > 1 and (t - 1) % self.reset_interval == 0:
            self._reset_moments()
            st["reset_count"] += 1
            st["since_reset"] = 0
        st["step"] = t
        st["since_reset"] += 1
        k = st["since_reset"]

        # 2. spike detection on the raw global gradient norm.
        if self.spike_window > 0:
            self._detect_spike(grads_all, device)

        clip_active = self.enable_clip and k > self.clip_delay
        scale = (
            warmup_scale(k, self.warmup_steps)
            if self.warmup and st["reset_count"] > 0
            else 1.0
        )
        clip_count = st["clip_count"]

        for group in self.param_groups:
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            eps = group["eps"]
            weight_decay = group["weight_decay"]
            theta = group["theta"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg = state["exp_avg"]
                exp_avg_sq = state["exp_avg_sq"]
                state["step"] += 1
                s = state["step"]

                # 3. spike-aware clipping against the previous v.
                if clip_active:
                    bound_sq = exp_avg_sq * theta
                    mask = grad * grad > bound_sq
                    grad = torch.where(mask, torch.sign(grad) * bound_sq.sqrt(), grad)
                    clip_count.add_(mask.sum().to(device))

                # 4. AdamW (same op order as torch's single-tensor AdamW).
                if weight_decay != 0:
                    p.mul_(1 - lr * weight_decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

                bias_correction1 = 1 - beta1**s
                bias_correction2 = 1 - beta2**s
                step_size = lr / bias_correction1
                if scale != 1.0:
                    step_size = step_size * scale
                bias_correction2_sqrt = bias_correction2**0.5
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)

        return loss
