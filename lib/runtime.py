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


# ATTENTION_BACKEND -> the SDPA kernels allowed (None: torch chooses among all).
ATTENTION_BACKENDS = {"auto": None, "flash": "FLASH_ATTENTION",
                      "memory-efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def attention_kernel(device: torch.device, choice: str, head_dim: int, precision: str,
                     dropout: float = 0.0):
    """A factory of sdpa_kernel contexts for the ATTENTION_BACKEND choice (None for auto),
    after checking on a small causal attention of the run's head size, precision and
    dropout that the kernel runs on this device; a ConfigError naming the knob when not."""
    name = ATTENTION_BACKENDS[choice]
    if name is None:
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, name)
    dtype = AUTOCAST_DTYPES[precision] or torch.float32
    q = torch.zeros(1, 1, 8, head_dim, device=device, dtype=dtype, requires_grad=True)
    try:
        with sdpa_kernel(backend):
            torch.nn.functional.scaled_dot_product_attention(
                q, q, q, dropout_p=dropout, is_causal=True).sum().backward()
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"CONFIG_ATTENTION_BACKEND_{choice.upper().replace('-', '_')}=y: the {choice} "
            f"attention kernel is not available on {device_name(device)} for head size "
            f"{head_dim} in {precision} ({first}); select ATTENTION_BACKEND_AUTO or another "
            f"kernel") from None
    return lambda: sdpa_kernel(backend)


class ForwardContext:
    """The context of every forward pass: autocast for PRECISION and the attention kernel.
    Reusable (a fresh sdpa_kernel context is entered each time)."""

    def __init__(self, autocast_context, kernel=None):
        self.autocast, self.kernel = autocast_context, kernel
        self._stacks = []

    @classmethod
    def for_config(cls, cfg, device) -> "ForwardContext":
        """The trainer's: autocast for PRECISION, the ATTENTION_BACKEND kernel."""
        return cls(autocast(device, cfg.PRECISION),
                   attention_kernel(device, cfg.ATTENTION_BACKEND, cfg.N_EMBD // cfg.N_HEAD,
                                    cfg.PRECISION, cfg.DROPOUT))

    def __enter__(self):
        stack = contextlib.ExitStack()
        stack.enter_context(self.autocast)
        if self.kernel is not None:
            stack.enter_context(self.kernel())
        self._stacks.append(stack)
        return self

    def __exit__(self, *exc):
        return self._stacks.pop().__exit__(*exc)


def set_cuda_options(device: torch.device, cudnn_benchmark: bool,
                     expandable_segments: bool) -> None:
    """CUDNN_BENCHMARK and CUDA_EXPANDABLE_SEGMENTS (nothing to do off CUDA)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if expandable_segments:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")


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


def maybe_compile(model, enabled: bool, mode: str, device: torch.device, log,
                  fullgraph: bool = False):
    """torch.compile the model when asked; where unsupported, warn once and run uncompiled."""
    if not enabled:
        return model
    reason = compile_unsupported_reason(device)
    if reason:
        log.warning(f"CONFIG_COMPILE=y ignored: {reason}; training uncompiled")
        return model
    return torch.compile(model, mode=None if mode == "default" else mode,
                         fullgraph=bool(fullgraph))


def peak_memory(device: torch.device) -> tuple:
    """(bytes, kind): CUDA max allocated on CUDA, the process's peak RSS elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "cpu_peak_rss"
