"""Say once, at the start, when a recipe sized for a GPU runs on the CPU: what it was
sized for, what the CPU makes of it, and roughly how long it will take."""
import time

import torch

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


def gpu_recipe_on_cpu(cfg, device, params: int, tokens_per_iter: int, total_iters,
                      flops_per_s=None):
    """The warning for a GPU recipe on the CPU, or None when there is nothing to say."""
    if device.type != "cpu":
        return None
    gpu_knobs = ([f"PRECISION={cfg.PRECISION}"] if cfg.PRECISION != "fp32" else []) + (
        ["COMPILE=y"] if cfg.COMPILE else [])
    if not gpu_knobs:
        return None
    described = recipe_description(cfg.RECIPE)
    sized = f"recipe {cfg.RECIPE}" + (f" ({described})" if described else "")
    rate = flops_per_s or cpu_matmul_flops()
    # 6 FLOPs per parameter per token (forward and backward), at the matmul peak: a floor.
    step_s = 6 * params * tokens_per_iter / rate
    cost = f"at least {step_s:,.1f} s per iteration at this CPU's {rate / 1e9:,.0f} GFLOP/s"
    if total_iters:
        cost += f", {step_s * total_iters / 3600:,.1f} h for its {total_iters:,} iterations"
    return (f"device cpu: {sized} sets {', '.join(gpu_knobs)} for a GPU; on the CPU "
            f"{'reduced precision is emulated and ' if cfg.PRECISION != 'fp32' else ''}"
            f"{'compiling takes minutes; ' if cfg.COMPILE else ''}expect {cost}. "
            f"Carrying on; select PRECISION_FP32 and no COMPILE, or a CPU recipe "
            f"(make defconfig), for a quicker CPU run")
