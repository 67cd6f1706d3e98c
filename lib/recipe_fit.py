"""Say once, at the start, when a configuration with GPU knobs runs on the CPU: who set
them (the recipe's defconfig, or an edit of .config), what the recipe was sized for, and
roughly how long it will take."""
import time

import torch

from lib import config as cfglib
from lib.config import ROOT, config_description


def cpu_matmul_flops(seconds: float = 0.2) -> float:
    """This CPU's fp32 matmul rate in FLOP/s, measured for about `seconds`."""
    a = torch.randn(512, 512)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        count += 1
    return count * 2 * 512**3 / (time.perf_counter() - start)


def recipe_description(recipe: str) -> str:
    path = ROOT / "defconfigs" / recipe
    return config_description(path) if path.is_file() else ""


def recipe_values(recipe: str) -> dict:
    """The typed values of defconfigs/<recipe>, or {} when there is no such defconfig."""
    path = ROOT / "defconfigs" / recipe
    if not path.is_file():
        return {}
    return cfglib.typed_values(cfglib.load_kconf(path, strict=False))


def duration(seconds: float):
    """A duration in the unit that shows it (ms, s, min, h), or None below 1 ms."""
    for unit, size, digits in (("h", 3600, 1), ("min", 60, 1), ("s", 1, 1), ("ms", 1e-3, 0)):
        if seconds >= size:
            return f"{seconds / size:,.{digits}f} {unit}"
    return None


def _gpu_knobs(cfg) -> dict:
    """{symbol: value shown} of the knobs set for a GPU."""
    return {**({"PRECISION": cfg.PRECISION} if cfg.PRECISION != "fp32" else {}),
            **({"COMPILE": "y"} if cfg.COMPILE else {})}


def who_set(cfg, knobs: dict) -> str:
    """'recipe R (description) sets A=x' for the knobs the recipe's defconfig sets, and
    'an edit of <config> sets B=y (not recipe R; defconfigs/R has B=n)' for the others."""
    recipe = recipe_values(cfg.RECIPE)
    described = recipe_description(cfg.RECIPE)
    if not recipe:
        return (f"{cfg.path or '.config'} sets {', '.join(f'{k}={v}' for k, v in knobs.items())}"
                f" (RECIPE {cfg.RECIPE} has no defconfigs/{cfg.RECIPE} to compare with)")
    ours = [k for k in knobs if recipe.get(k) == cfg[k]]
    edits = [k for k in knobs if k not in ours]
    parts = []
    if ours:
        parts.append(f"recipe {cfg.RECIPE}" + (f" ({described})" if described else "")
                     + f" sets {', '.join(f'{k}={knobs[k]}' for k in ours)}")
    if edits:
        was = ", ".join(f"{k}={_shown(recipe.get(k))}" for k in edits)
        parts.append(f"an edit of {cfg.path or '.config'} sets "
                     f"{', '.join(f'{k}={knobs[k]}' for k in edits)} (not recipe "
                     f"{cfg.RECIPE}; defconfigs/{cfg.RECIPE} has {was})")
    return " and ".join(parts)


def _shown(value) -> str:
    return {True: "y", False: "n", None: "unset"}.get(value, str(value))


def gpu_recipe_on_cpu(cfg, device, params: int, tokens_per_iter: int, total_iters,
                      flops_per_s=None):
    """The warning for GPU knobs on the CPU, or None when there is nothing to say."""
    if device.type != "cpu":
        return None
    knobs = _gpu_knobs(cfg)
    if not knobs:
        return None
    rate = flops_per_s or cpu_matmul_flops()
    # 6 FLOPs per parameter per token (forward and backward), at the matmul peak: a floor.
    step_s = 6 * params * tokens_per_iter / rate
    notes = (["reduced precision is emulated"] if cfg.PRECISION != "fp32" else []) + (
        ["compiling takes minutes"] if cfg.COMPILE else [])
    if duration(step_s):
        cost = (f"expect at least {duration(step_s)} per iteration at this CPU's "
                f"{rate / 1e9:,.0f} GFLOP/s")
        if total_iters:
            cost += f", {duration(step_s * total_iters)} for its {total_iters:,} iterations"
        notes.append(cost)
    return (f"device cpu: {who_set(cfg, knobs)}, for a GPU; on the CPU {'; '.join(notes)}. "
            f"Carrying on; select PRECISION_FP32 and no COMPILE, or a CPU recipe "
            f"(make defconfig), for a quicker CPU run")
