"""Device, precision, compile and memory: the runtime knobs turned into torch objects."""
import contextlib
import resource
import shutil
import sys

import torch

from lib.config import ConfigError

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(choice: str) -> torch.device:
    """DEVICE choice -> torch.device; auto tries cuda, then mps, then cpu."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if choice == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[choice]:
        raise ConfigError(f"CONFIG_DEVICE_{choice.upper()}=y: no {choice} device is available "
                          f"here; select DEVICE_AUTO or DEVICE_CPU (make menuconfig)")
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def autocast(device: torch.device, precision: str):
    """Context manager for the forward pass in the PRECISION choice (fp32: nothing)."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("CONFIG_PRECISION_BF16=y: this GPU has no bf16 support; "
                          "select PRECISION_FP16 or PRECISION_FP32")
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16; a disabled scaler (a pass-through) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def compile_unsupported_reason(device: torch.device):
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile is not supported on Python {sys.version.split()[0]} with torch {torch.__version__}"
    if device.type == "mps":
        return "torch.compile does not support the mps backend well enough for training"
    if device.type == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        return "torch.compile on the CPU needs a C compiler and none was found"
    return None


def maybe_compile(model, enabled: bool, mode: str, device: torch.device, log):
    """torch.compile the model when asked; where unsupported, warn once and run uncompiled."""
    if not enabled:
        return model
    reason = compile_unsupported_reason(device)
    if reason:
        log.warning(f"CONFIG_COMPILE=y ignored: {reason}; training uncompiled")
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)


def peak_memory(device: torch.device) -> tuple:
    """(bytes, kind): CUDA max allocated on CUDA, the process's peak RSS elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "cpu_peak_rss"
