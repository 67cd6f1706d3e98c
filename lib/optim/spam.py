"""SPAM: Spike-Aware Adam with Momentum reset (Huang et al., ICLR 2025).

The update follows the authors' public optimizer (github.com/TianjinYellow/
SPAM-Optimizer, the class exported as ``SPAM``) step for step; the parity
test in tests/test_spam.py replays a reference written from that description.
Steps ``n`` are counted from 1, globally (one per ``step()`` call), and
``DeltaT`` is ``reset_interval``:

1. **Momentum reset** (``periodic_reset``): on every step with
   ``n % DeltaT == 0`` (steps DeltaT, 2 DeltaT, ...) both moments of every
   parameter are zeroed before this step's gradient is folded in. Each
   parameter's own step count ``t`` (bias correction) is never reset.

2. **Spike-aware clipping** (``enable_clip``, the authors' ``threshold != 0``):
   only where ``n >= clip_delay`` and, with resets, ``n % DeltaT >=
   clip_delay`` (the authors' ``grad_accu_steps``: ``clip_delay - 1``
   unclipped steps at the start, ``clip_delay`` after each reset). Every
   gradient element with ``g**2 > theta * v`` (``v`` the second moment before
   this step) becomes ``sign(g) * sqrt(theta * v)``, in place in ``p.grad``.

3. **Adam update**, per parameter with its own ``t``::

       m <- beta1 m + (1 - beta1) g
       v <- beta2 v + (1 - beta2) g**2
       p <- p - scale * lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)
       p <- p - lr * weight_decay * p          # after the update, never scaled

4. **Warm-up after a reset** (``warmup``): ``j = n - (step of the last
   reset)`` (0 on the reset step itself) gives
   ``scale = 1 - 0.99 * (1 + cos(pi * j / (W + 1))) / 2`` for ``j < W``
   (``W = warmup_steps``; 0.01 on the reset step), else 1: the authors'
   ``1 - CosineDecay(0.99, W)``. No ramp before the first reset.

Beyond the authors' optimizer, and never changing the update:

- **Spike counting** (``spike_window > 0``): the global L2 norm of the raw
  gradients is compared with a window of the last ``spike_window`` norms;
  ``(norm - mean) / std > spike_threshold`` (sample std, at least
  ``min(SPIKE_MIN_SAMPLES, spike_window)`` norms held) counts a spike.
- ``clip_count`` counts clipped elements, ``reset_count`` resets.
- A step a GradScaler skips (fp16: inf or NaN gradients, so ``step()`` is never
  called) changes neither: the norm and the clipped elements ``prepare_grads()``
  measured count only once ``step()`` takes the step.

The per-element work comes in three implementations (``implementation``, the
OPTIMIZER_IMPL knob): ``"foreach"`` runs torch's multi-tensor (``_foreach``)
operations over all parameters of a group sharing a device, dtype and step
count, in the authors' order of operations, so results agree with theirs to the
last bit (the element clip is a clamp, which equals their masked replacement
but for ties at the bound); ``"fused"`` compiles the per-tensor functions
``clip_each`` and ``update_each`` with torch.compile into one kernel per
tensor and pass; ``"for-loop"`` runs those functions eagerly. The per-tensor
code rounds the update twice where torch's ``add(alpha=)`` rounds one fused
multiply-add: float rounding, no more. None of them syncs with the host.
A trainer that clips the global gradient norm calls ``prepare_grads()``
first (reset, spike count and element clip on the raw gradients), then its
own clip, then ``step()``; ``step()`` calls ``prepare_grads()`` itself when
nobody did.

Counters and checkpoints: the global state (step, last reset, counters, norm
window) lives in ``self.spam_state`` and is saved under ``"spam"`` by
``state_dict()``; per-parameter state is torch's (``step``, ``exp_avg``,
``exp_avg_sq``).
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

__all__ = ["AdamWSPAM", "warmup_scale"]

# The authors' cosine decays the ramp's complement from this value.
WARMUP_DEPTH = 0.99


def warmup_scale(j: int, warmup_steps: int) -> float:
    """The update scale ``j`` steps after a reset (``j = 0`` on the reset step):
    ``1 - 0.99 * (1 + cos(pi * j / (W + 1))) / 2`` for ``j < W``, else 1."""
    if j >= warmup_steps:
        return 1.0
    return 1.0 - WARMUP_DEPTH * (1.0 + math.cos(math.pi * j / (warmup_steps + 1))) / 2


# ---------------------------------------------------------------- kernels
# Three implementations of the two per-element passes (OPTIMIZER_IMPL): "foreach" runs
# torch's multi-tensor operations over buckets of parameters sharing a step count;
# "for-loop" runs the per-tensor functions below eagerly; "fused" compiles those same
# functions with torch.compile, which turns each tensor's pass into one kernel (C++ on
# the CPU, Triton on CUDA) reading and writing every element once. The per-tensor
# functions take their changing scalars (step size, decay) as 0-d CPU tensors, so that a
# new learning rate never recompiles, in the precision torch's own kernels use for the
# parameter (float32 for float32 and below, float64 for float64: a float64 scalar would
# turn a float32 kernel into a float64 one, twice as slow).


def clip_each(grads: list, exp_avg_sqs: list, thetas: list, clip_count: torch.Tensor) -> None:
    """g <- clamp(g, -sqrt(theta v), sqrt(theta v)) in place, counting clipped elements."""
    for g, v, theta in zip(grads, exp_avg_sqs, thetas):
        bound = (v * theta).sqrt()
        clipped = torch.maximum(torch.minimum(g, bound), -bound)
        clip_count += (clipped != g).sum()
        g.copy_(clipped)


def update_each(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list,
                step_sizes: list, decays: list, betas: list, epss: list) -> None:
    """The Adam update and decoupled decay of each tensor, in the authors' order of
    operations (``decay`` None: no weight decay). Written as whole expressions copied
    into place, which inductor fuses into one loop; in-place chains compile to slower
    code on the CPU."""
    for p, g, m, v, step_size, decay, (beta1, beta2), eps in zip(
            params, grads, exp_avgs, exp_avg_sqs, step_sizes, decays, betas, epss):
        m.copy_(m * beta1 + g * (1 - beta1))
        v.copy_(v * beta2 + g * g * (1 - beta2))
        updated = p - m / (v.sqrt() + eps) * step_size
        p.copy_(updated if decay is None else updated - updated * decay)


def clip_foreach(grads: list, exp_avg_sqs: list, theta: float,
                 clip_count: torch.Tensor) -> list:
    """clip_each over a bucket with multi-tensor operations; returns the clipped gradients
    (new tensors)."""
    bounds = torch._foreach_mul(exp_avg_sqs, theta)
    torch._foreach_sqrt_(bounds)
    clipped = torch._foreach_minimum(grads, bounds)
    torch._foreach_neg_(bounds)
    torch._foreach_maximum_(clipped, bounds)
    # The clipped-off part, reduced to 1 where an element was clipped: its squared
    # L2 norm (the fast multi-tensor norm) is the count.
    off = torch._foreach_sub(grads, clipped)
    torch._foreach_sign_(off)
    counts = torch.stack(torch._foreach_norm(off)).square().sum().round()
    clip_count.add_(counts.to(clip_count.device, torch.int64))
    return clipped


def update_foreach(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list,
                   step_size: float, decay: float, beta1: float, beta2: float,
                   eps: float) -> None:
    """update_each over a bucket sharing one step size, with multi-tensor operations."""
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    torch._foreach_add_(params, torch._foreach_div(exp_avgs, denom), alpha=-step_size)
    if decay > 0.0:
        torch._foreach_add_(params, params, alpha=-decay)


IMPLEMENTATIONS = ("foreach", "for-loop", "fused")


class FusedKernelError(RuntimeError):
    """torch.compile could not build the fused kernels on this machine."""


def _compiled(fn: Callable) -> Callable:
    # torch.compile keeps its compiled graphs per code object, and stops recompiling after
    # a few (8); a copy of the function per optimizer gives each its own graphs, so a
    # process may hold any number of optimizers over different parameter shapes.
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                             fn.__defaults__, fn.__closure__)
    compiled = torch.compile(own, fullgraph=True, dynamic=False)

    def call(*args):
        try:
            return compiled(*args)
        except Exception as e:  # inductor's errors have no common base class
            raise FusedKernelError(
                f"the fused SPAM kernels (torch.compile of {fn.__name__}) failed to build: "
                f"{type(e).__name__}: {str(e)[:500]}. torch.compile needs a C++ compiler on "
                "the CPU and Triton on CUDA; install them, or choose the foreach "
                "implementation (OPTIMIZER_IMPL=foreach)") from e
    return call


class AdamWSPAM(Optimizer):
    """The authors' SPAM optimizer plus spike counting; see the module docstring.

    The keyword defaults are the authors' (threshold 5000, DeltaT 500,
    warm-up 150, grad_accu_steps 20, eps 1e-6). ``lr``, ``betas``, ``eps``,
    ``weight_decay`` and ``theta`` may be set per parameter group; the
    schedule arguments are optimizer-wide.
    """

    # Spike counting needs at least this many norms in the window (or the
    # whole window when spike_window is smaller).
    SPIKE_MIN_SAMPLES = 10

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        theta: float = 5000.0,
        enable_clip: bool = True,
        clip_delay: int = 20,
        periodic_reset: bool = True,
        reset_interval: int = 500,
        warmup: bool = True,
        warmup_steps: int = 150,
        spike_threshold: float = 2.0,
        spike_window: int = 100,
        implementation: str = "foreach",
    ) -> None:
        checks = {
            "lr": (lr, not isinstance(lr, torch.Tensor) and lr >= 0.0),
            "eps": (eps, eps >= 0.0),
            "betas": (betas, 0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0),
            "weight_decay": (weight_decay, weight_decay >= 0.0),
            "theta": (theta, theta > 0.0),
            "clip_delay": (clip_delay, int(clip_delay) == clip_delay >= 0),
            "reset_interval": (reset_interval, int(reset_interval) == reset_interval >= 1),
            "warmup_steps": (warmup_steps, int(warmup_steps) == warmup_steps >= 0),
            "spike_window (0 disables, else >= 2)": (
                spike_window, int(spike_window) == spike_window >= 0 and spike_window != 1),
            "spike_threshold": (spike_threshold, spike_threshold >= 0.0),
            f"implementation (one of {', '.join(IMPLEMENTATIONS)})": (
                implementation, implementation in IMPLEMENTATIONS),
        }
        for name, (value, ok) in checks.items():
            if not ok:
                raise ValueError(f"AdamWSPAM: invalid {name}: {value}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay, theta=theta))
        self.enable_clip = bool(enable_clip)
        self.clip_delay = int(clip_delay)
        self.periodic_reset = bool(periodic_reset)
        self.reset_interval = int(reset_interval)
        self.warmup = bool(warmup)
        self.warmup_steps = int(warmup_steps)
        self.spike_threshold = float(spike_threshold)
        self.spike_window = int(spike_window)
        self.implementation = implementation
        # The per-tensor (clip, update) kernels of the "for-loop" and "fused" implementations.
        self._kernels = ((_compiled(clip_each), _compiled(update_each))
                         if implementation == "fused" else (clip_each, update_each))
        self.spam_state: dict[str, Any] = self._fresh_spam_state()
        self._prepared_step = 0  # the step whose gradients prepare_grads() has handled
        # What prepare_grads() measured (the gradient norm, the elements it clipped), kept
        # until step() takes the step: a step a GradScaler skips (inf/NaN gradients) never
        # reaches the window or the counters.
        self._pending = None

    # ------------------------------------------------------------------ state

    @staticmethod
    def _fresh_spam_state() -> dict[str, Any]:
        return {
            "step": 0,  # steps taken (host int: known without a sync)
            "last_reset": 0,  # step of the last reset, 0 before the first
            "reset_count": 0,
            "window_len": 0,  # norms held in norm_window
            "window_pos": 0,  # next slot to write in norm_window
            # Device tensors, created on the gradients' device at the first step.
            "clip_count": None,  # int64 scalar
            "spike_count": None,  # int64 scalar
            "norm_window": None,  # float32 [spike_window]
        }

    def _ensure_device_state(self, device: torch.device) -> None:
        st = self.spam_state
        for key in ("clip_count", "spike_count"):
            if st[key] is None:
                st[key] = torch.zeros((), dtype=torch.int64, device=device)
        if st["norm_window"] is None:
            st["norm_window"] = torch.zeros(self.spike_window, dtype=torch.float32,
                                            device=device)
            st["window_len"] = st["window_pos"] = 0

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["spam"] = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
                      for k, v in self.spam_state.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        spam = state_dict.pop("spam", None) or {}
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # groups saved by torch's AdamW lack theta
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        for pstate in self.state.values():  # torch keeps steps as tensors; ours are ints
            if isinstance(pstate.get("step"), torch.Tensor):
                pstate["step"] = int(pstate["step"].item())
        fresh = self._fresh_spam_state()
        device = next((p.device for g in self.param_groups for p in g["params"]),
                      torch.device("cpu"))
        for key, value in spam.items():
            if key in fresh:
                fresh[key] = value.detach().clone().to(device) if isinstance(
                    value, torch.Tensor) else value
        window = fresh["norm_window"]
        if window is not None and window.numel() != self.spike_window:
            fresh["norm_window"] = None  # the window size changed: start a new one
        self.spam_state = fresh
        self._prepared_step = 0
        self._pending = None

    def stats(self) -> dict[str, int]:
        """Counters as Python ints (this syncs with the device)."""
        st = self.spam_state
        return {key: 0 if st[key] is None else int(st[key])
                for key in ("clip_count", "spike_count", "reset_count")}

    def state_tensors(self) -> list:
        """SPAM's own tensors (counters, norm window), for memory accounting."""
        return [v for v in self.spam_state.values() if isinstance(v, torch.Tensor)]

    # ------------------------------------------------------------- internals

    def _with_grads(self) -> list:
        """[(group, param, state)] for every parameter with a gradient, its state created
        on first use."""
        found = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse or torch.is_complex(p):
                    raise RuntimeError("AdamWSPAM supports neither sparse gradients nor "
                                       "complex parameters")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                found.append((group, p, state))
        return found

    @staticmethod
    def _buckets(found: list) -> list:
        """found as lists per (group, device, dtype, step count), for the foreach kernels:
        [(group, params, grads, exp_avgs, exp_avg_sqs, states)]. One step count per list
        gives one bias correction, so the update is one scaled add, exactly the authors'
        ``p.add_(m / denom, alpha=...)``."""
        buckets = {}
        for group, p, state in found:
            key = (id(group), p.device, p.dtype, state["step"])
            lists = buckets.setdefault(key, (group, [], [], [], [], []))
            for lst, item in zip(lists[1:], (p, p.grad, state["exp_avg"],
                                             state["exp_avg_sq"], state)):
                lst.append(item)
        return list(buckets.values())

    def _grad_norm(self, grads: list) -> torch.Tensor:
        window = self.spam_state["norm_window"]
        norms = [n.to(device=window.device, dtype=torch.float32)
                 for n in torch._foreach_norm(grads)]
        return torch.linalg.vector_norm(torch.stack(norms))

    def _count_spike(self, norm: torch.Tensor) -> None:
        st = self.spam_state
        window = st["norm_window"]
        n = st["window_len"]
        if n >= max(2, min(self.SPIKE_MIN_SAMPLES, self.spike_window)):
            std, mean = torch.std_mean(window[:n], correction=1)
            is_spike = (std > 0) & ((norm - mean) > self.spike_threshold * std)
            st["spike_count"].add_(is_spike.to(torch.int64))
        window[st["window_pos"]] = norm
        st["window_pos"] = (st["window_pos"] + 1) % window.numel()
        st["window_len"] = min(n + 1, window.numel())

    def _clip_active(self, n: int) -> bool:
        if not self.enable_clip or n < self.clip_delay:
            return False
        return not self.periodic_reset or n % self.reset_interval >= self.clip_delay

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def prepare_grads(self) -> None:
        """Reset, spike count and element clip for the coming step, on the raw gradients.

        Once per set of gradients: when a GradScaler skips the step, the next gradients
        are prepared for the same step again (without a second reset). The norm and the
        clipped elements are counted when step() takes the step, so a skipped step's
        counts are dropped."""
        st = self.spam_state
        n = st["step"] + 1
        found = self._with_grads()
        if not found:
            return
        self._ensure_device_state(found[0][1].device)
        if self.periodic_reset and n % self.reset_interval == 0 and st["last_reset"] != n:
            torch._foreach_zero_([s[key] for _, _, s in found
                                  for key in ("exp_avg", "exp_avg_sq")])
            st["last_reset"] = n
            st["reset_count"] += 1
        norm = self._grad_norm([p.grad for _, p, _ in found]) if self.spike_window > 0 else None
        clips = torch.zeros_like(st["clip_count"])
        self._pending = (norm, clips)
        if self._clip_active(n):
            if self.implementation == "foreach":
                for group, params, grads, _, exp_avg_sqs, _ in self._buckets(found):
                    clipped = clip_foreach(grads, exp_avg_sqs, group["theta"], clips)
                    for p, g in zip(params, clipped):
                        p.grad = g
            else:
                self._kernels[0]([p.grad for _, p, _ in found],
                                 [s["exp_avg_sq"] for _, _, s in found],
                                 [group["theta"] for group, _, _ in found], clips)
        self._prepared_step = n

    def _scale(self, n: int) -> float:
        last_reset = self.spam_state["last_reset"]
        if not self.warmup or not last_reset:
            return 1.0
        return warmup_scale(n - last_reset, self.warmup_steps)

    @staticmethod
    def _step_size(group: dict, t: int, scale: float) -> float:
        """The authors' lr * sqrt(1 - beta2^t) / (1 - beta1^t), times the warm-up scale."""
        beta1, beta2 = group["betas"]
        return group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t) * scale

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        st = self.spam_state
        n = st["step"] + 1
        if self._prepared_step != n:
            self.prepare_grads()
        if self._pending is not None:  # the step is taken: what was measured counts
            norm, clips = self._pending
            if norm is not None:
                self._count_spike(norm)
            st["clip_count"].add_(clips)
            self._pending = None
        scale = self._scale(n)
        found = self._with_grads()
        for _, _, state in found:
            state["step"] += 1
        if self.implementation == "foreach":
            for group, params, grads, exp_avgs, exp_avg_sqs, states in self._buckets(found):
                update_foreach(params, grads, exp_avgs, exp_avg_sqs,
                               self._step_size(group, states[0]["step"], scale),
                               group["lr"] * group["weight_decay"], *group["betas"],
                               group["eps"])
        elif found:
            # Changing scalars as 0-d CPU tensors (no recompilation, no device copy), one
            # per distinct value and precision.
            @functools.cache
            def scalar(value, dtype):
                return torch.tensor(value, dtype=torch.promote_types(dtype, torch.float32))
            self._kernels[1](
                [p for _, p, _ in found], [p.grad for _, p, _ in found],
                [s["exp_avg"] for _, _, s in found], [s["exp_avg_sq"] for _, _, s in found],
                [scalar(self._step_size(g, s["step"], scale), p.dtype) for g, p, s in found],
                [scalar(g["lr"] * g["weight_decay"], p.dtype) if g["weight_decay"] > 0.0
                 else None for g, p, _ in found],
                [tuple(g["betas"]) for g, _, _ in found], [g["eps"] for g, _, _ in found])
        st["step"] = n
        return loss
