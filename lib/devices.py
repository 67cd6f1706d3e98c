"""Known accelerators: dense peak FLOP/s per precision and memory, from the vendors'
datasheets (dense figures: the "with sparsity" ones halved). MFU divides by these;
an unknown device (the CPU included) has no peak, and MFU is then "n/a", never a guess.
"""
import re
from dataclasses import dataclass

TFLOPS = 1e12


@dataclass(frozen=True)
class Device:
    name: str
    peak_tflops: dict  # precision key ("bf16", "fp16", "tf32", "fp32") -> dense TFLOP/s
    memory_gib: float


# First match wins: specific names before general ones (H100 PCIe before H100).
DEVICES = [
    (r"H100.*PCIe", Device("H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0,
                                         "fp32": 51.2}, 80)),
    (r"H100.*NVL", Device("H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5,
                                       "fp32": 60.0}, 94)),
    (r"H100", Device("H100 SXM", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5,
                                  "fp32": 66.9}, 80)),
    (r"H200", Device("H200", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 66.9}, 141)),
    (r"A100.*40GB", Device("A100 40GB", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0,
                                         "fp32": 19.5}, 40)),
    (r"A100", Device("A100 80GB", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0,
                                   "fp32": 19.5}, 80)),
    (r"L40S", Device("L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}, 48)),
    (r"\bL4\b", Device("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}, 24)),
    (r"\bA10\b", Device("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}, 24)),
    (r"RTX 4090", Device("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6,
                                      "fp32": 82.6}, 24)),
    (r"V100", Device("V100", {"fp16": 125.0, "fp32": 15.7}, 32)),
    (r"\bT4\b", Device("T4", {"fp16": 65.0, "fp32": 8.1}, 16)),
    # Memory only: recipes are sized for it, its peak is not in the table (MFU n/a).
    (r"RTX 4060", Device("RTX 4060", {}, 8)),
    (r"MI300X", Device("MI300X", {"bf16": 1307.4, "fp16": 1307.4, "tf32": 653.7,
                                  "fp32": 163.4}, 192)),
    # RDNA3 has no TF32: fp32 matmuls run at the fp32 rate.
    (r"W7900", Device("W7900", {"bf16": 122.6, "fp16": 122.6, "fp32": 61.3}, 48)),
]


def lookup(name: str):
    """The Device whose pattern matches a device name (torch.cuda.get_device_name, or a
    table name such as "H100 SXM"), else None."""
    for pattern, device in DEVICES:
        if re.search(pattern, name or "", re.IGNORECASE):
            return device
    return None


def precision_key(precision: str, tf32: bool) -> str:
    """The peak a run's matmuls reach: PRECISION, with fp32 at the TF32 rate when allowed."""
    return "tf32" if precision == "fp32" and tf32 else precision


def peak_flops(name: str, precision: str, tf32: bool):
    """Dense peak FLOP/s of a device for PRECISION (and TF32), or None when unknown."""
    device = lookup(name)
    if device is None:
        return None
    key = precision_key(precision, tf32)
    value = device.peak_tflops.get(key)
    if value is None and key == "tf32":  # no TF32 units: fp32 matmuls at the fp32 rate
        value = device.peak_tflops.get("fp32")
    return value * TFLOPS if value is not None else None


def slug(name: str) -> str:
    """A device name as a directory-name piece: "NVIDIA H100 80GB HBM3" -> nvidia-h100-80gb-hbm3."""
    return re.sub(r"[^a-z0-9]+", "-", (name or "unknown").lower()).strip("-")
