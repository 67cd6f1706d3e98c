"""What a .config will cost before it runs: python -m scripts.estimate [.config] [--set NAME=VALUE]

Parameters; parameter, gradient, optimizer-state (every optimizer of the registry, the
selected one marked) and mask bytes; activation memory per micro-batch with and without
activation checkpointing; tokens per iteration and in total; FLOPs; and the expected
training time from the last `make bench` of this configuration on this device, else from
the device's peak at ESTIMATE_MFU, else from a few training passes timed here
(scripts/estimate_measure.py). On the CPU the peak is the process's resident set: what
this process holds once the model and optimizer exist (interpreter, torch, libraries),
the memory-mapped data, and what training adds.

The model is the trainer's (gpt2.build.model_config, built on the meta device: no
memory), the optimizers are the registry's (lib.optim.OPTIMIZERS), each stepped once on
a real tensor of every distinct parameter shape, so their state is measured, not
assumed. Activation memory is a formula of the tensors autograd keeps
(gpt2/activations.py, shared with BATCH_SIZE_AUTO's finder); its accuracy is checked
against a measured CPU run in tests/test_estimate.py.

FLOPs per token are 6N + 12 L H Q T (PaLM, appendix B; nanoGPT's estimate_mfu), N the
parameters without the position embedding: the model's FLOPs, without the recomputation
of activation checkpointing, as MFU counts them.
"""
import argparse
import csv
import functools
import json
import math
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

from gpt2 import data
from gpt2.activations import FP32, activation_bytes
from gpt2.budget import Budget, batch_size, tokens_per_iter
from gpt2.build import model_config
from gpt2.model import GPT
from lib import config as cfglib
from lib import devices, distributed, optim, prune, runtime
from lib.run import results_dir
from scripts import estimate_measure


def facts_of(cfg) -> dict:
    """{"vocab_size", "train_tokens", "val_tokens"} of the config's dataset, writing nothing
    under the results: its meta.json when prepared, else `unprepared_facts`."""
    spec = data.spec_from_config(cfg)
    try:
        meta = data.read_meta(data.prepared_dir(spec, results_dir(cfg) / "_data"))
    except data.DataError:
        return unprepared_facts(spec)
    return {k: int(meta[k]) for k in ("vocab_size", "train_tokens", "val_tokens")}


@functools.lru_cache(maxsize=16)
def unprepared_facts(spec) -> dict:
    """Shakespeare prepared in a temporary directory (seconds); a document corpus not
    prepared yet: the GPT-2 vocabulary, and token counts unknown (None) until `make data`."""
    if spec.dataset in ("shakespeare", "shakespeare-char"):
        with tempfile.TemporaryDirectory() as tmp:
            meta = data.read_meta(data.prepare_spec(spec, tmp))
        return {k: int(meta[k]) for k in ("vocab_size", "train_tokens", "val_tokens")}
    if spec.tokenizer != "gpt2":
        raise data.DataError(f"The character vocabulary of DATASET={spec.dataset} is known once "
                             f"it is prepared: run `make data` first, then `make estimate`")
    return {"vocab_size": data.GPT2_VOCAB_SIZE, "train_tokens": None, "val_tokens": None}


def needs_prepared(facts: dict, what: str) -> None:
    if facts["train_tokens"] is None:
        raise data.DataError(f"{what} needs the dataset's size, known once it is prepared: "
                             f"run `make data` first, then `make estimate`")


def meta_model(cfg, vocab_size: int) -> GPT:
    """The trainer's model, masks attached, on the meta device (shapes only)."""
    with torch.device("meta"):
        model = GPT(model_config(cfg, vocab_size))
        prune.attach_masks(model, cfg)
    return model


def parameter_shapes(model) -> tuple:
    """((shape, count), ...) of the distinct trainable parameters (a tied one once)."""
    return tuple(sorted(Counter(tuple(p.shape) for p in model.parameters()
                                if p.requires_grad).items()))


_STATE_CACHE = {}


def _state_bytes(cfg, shapes: tuple) -> int:
    # The state's size does not depend on the seed or the rates (matrix cells share it).
    key = (shapes, tuple(sorted((k, v) for k, v in cfg.items()
                                if k not in ("SEED", "RUN_NAME") and not k.endswith("_LR"))))
    if key not in _STATE_CACHE:
        _STATE_CACHE[key] = _measure_state_bytes(cfg, shapes)
    return _STATE_CACHE[key]


def _measure_state_bytes(cfg, shapes: tuple) -> int:
    entry = optim.OPTIMIZERS[cfg.OPTIMIZER]
    # The state is the same whatever the implementation; the eager one measures it in
    # milliseconds, where the fused one would compile a kernel for every shape.
    cfg = cfglib.Config({**cfg, "OPTIMIZER_IMPL": "for-loop"}, cfg.text, cfg.hash, cfg.path)
    total = 0
    for shape, count in shapes:
        param = torch.nn.Parameter(torch.zeros(shape))
        param.grad = torch.zeros(shape)
        optimizer = entry.build([{"params": [param], "weight_decay": 0.0}], cfg, cfg[entry.lr])
        optim.prepare_grads(optimizer)
        optimizer.step()
        total += optim.state_bytes(optimizer) * count
    return total


def optimizer_state_bytes(optimizer_cfgs: dict, shapes: tuple) -> dict:
    """{optimizer: bytes, or the reason it cannot be measured here}."""
    out = {}
    for name, cfg in optimizer_cfgs.items():
        if isinstance(cfg, str):
            out[name] = cfg
            continue
        try:
            out[name] = _state_bytes(cfg, shapes)
        except (cfglib.ConfigError, RuntimeError) as e:
            out[name] = f"n/a ({(str(e).splitlines() or [''])[0][:120]})"
    return out


def registry_configs(config_path, overrides) -> dict:
    """{optimizer: its Config} for every optimizer of the registry: the same config with
    OPTIMIZER=<name> (and PRUNING=none where the pruning method does not allow it), or
    the reason it cannot be configured or is not measured (an optimizer whose package
    is imported only when it is the selected one)."""
    out = {}
    selected = cfglib.load(config_path, overrides).OPTIMIZER
    for name, entry in optim.OPTIMIZERS.items():
        if entry.package and name != selected:
            out[name] = f"n/a (select it to measure; {entry.package} loads only then)"
            continue
        for extra in ([f"OPTIMIZER={name}"], [f"OPTIMIZER={name}", "PRUNING=none"]):
            try:
                out[name] = cfglib.load(config_path, [*overrides, *extra])
                break
            except cfglib.ConfigError as e:
                out[name] = f"n/a ({(str(e).splitlines() or [''])[0][:120]})"
    return out


def target_device(cfg) -> dict:
    """{"name", "peak_flops", "memory_bytes", "kind"} of ESTIMATE_DEVICE, or this machine's."""
    if cfg.ESTIMATE_DEVICE:
        device = devices.lookup(cfg.ESTIMATE_DEVICE)
        if device is None:
            names = ", ".join(d.name for _, d in devices.DEVICES)
            raise cfglib.ConfigError(f"CONFIG_ESTIMATE_DEVICE=\"{cfg.ESTIMATE_DEVICE}\" is not in "
                                     f"the device table (lib/devices.py): {names}")
        return {"name": device.name, "kind": "cuda", "memory_bytes": device.memory_gib * 2**30,
                "peak_flops": devices.peak_flops(device.name, cfg.PRECISION, cfg.TF32)}
    device = runtime.pick_device(cfg.DEVICE)
    name = runtime.device_name(device)
    memory = (torch.cuda.get_device_properties(device).total_memory
              if device.type == "cuda" else None)
    return {"name": name, "kind": device.type, "memory_bytes": memory,
            "peak_flops": devices.peak_flops(name, cfg.PRECISION, cfg.TF32)
            if device.type == "cuda" else None}


def bench_tokens_per_s(cfg, device_name: str):
    """tokens/s of this configuration in the newest `make bench` on this device, or None."""
    root = results_dir(cfg) / "bench"
    for run in sorted(root.glob(f"*-{devices.slug(device_name)}"), reverse=True):
        try:
            with open(run / "bench.csv", newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("config_hash") == cfg.hash and row.get("tokens_per_s"):
                        return float(row["tokens_per_s"]), run
        except OSError:
            continue
    return None, None


_MEASURE_CACHE = {}


def measure_here(cfg, device: dict, vocab_size: int, per_iter: int) -> dict:
    """estimate_measure.measure when the estimate is for this machine and its CPU (the
    process's memory) or a device of unknown peak; {} otherwise. Matrix cells that
    differ only in seed, rates or pruning share one measurement (the masks' bytes are
    counted apart)."""
    if cfg.ESTIMATE_DEVICE or (device["kind"] != "cpu" and device["peak_flops"]):
        return {}
    shared = ("SEED", "RUN_NAME", "RESULTS_DIR", "TARGET_SPARSITY")
    pruning = ("PRUNING", "PRUNE_", "ADAMWPRUNE_", "BITTER2_", "MASK_STORAGE")
    key = (vocab_size, per_iter, tuple(sorted(
        (k, v) for k, v in cfg.items()
        if k not in shared and not k.endswith("_LR") and not k.startswith(pruning))))
    if key not in _MEASURE_CACHE:
        _MEASURE_CACHE[key] = estimate_measure.measure(cfg, vocab_size, per_iter)
    return _MEASURE_CACHE[key]


def _speed(cfg, device: dict, flops_per_token: int, per_iter: int, measured: dict) -> tuple:
    """(tokens/s, where the figure comes from): make bench, the device's peak at
    ESTIMATE_MFU, or passes timed here; times the DDP processes."""
    bench, bench_dir = bench_tokens_per_s(cfg, device["name"])
    if bench:
        tokens_per_s, source = bench, f"measured by make bench ({bench_dir})"
    elif device["peak_flops"]:
        tokens_per_s = device["peak_flops"] * cfg.ESTIMATE_MFU / flops_per_token
        source = (f"{cfg.ESTIMATE_MFU:.0%} MFU (ESTIMATE_MFU) of {device['name']}'s "
                  f"{device['peak_flops'] / 1e12:g} TFLOP/s "
                  f"{devices.precision_key(cfg.PRECISION, cfg.TF32)}")
    elif measured.get("step_seconds"):
        tokens_per_s = per_iter / measured["step_seconds"]
        source = measured["timed"] + " (make bench BENCH=current measures a compiled run)"
    else:
        return None, (f"unknown: no peak FLOP/s for {device['name']} and no make bench of "
                      f"this configuration here")
    processes = distributed.world_size(cfg)
    if processes > 1:
        tokens_per_s *= processes
        source += f", times {processes} DDP processes (ideal scaling; memory is per process)"
    return tokens_per_s, source


def _data_bytes(cfg, facts: dict, device: dict) -> int:
    """The data the training process holds: a preloaded split on the device; on the CPU
    the memory-mapped shards, every page of which the sampler touches over a run."""
    if cfg.DATA_LOADER == "preloaded":
        needs_prepared(facts, "DATA_LOADER=preloaded")
        return 4 * (facts["train_tokens"] + facts["val_tokens"])
    if device["kind"] == "cpu" and facts["train_tokens"]:
        token_bytes = 2 if facts["vocab_size"] <= 2**16 else 4
        return token_bytes * (facts["train_tokens"] + facts["val_tokens"])
    return 0


def estimate(cfg, optimizer_cfgs=None) -> dict:
    """Every figure of the estimate for a Config (optimizer_cfgs: {name: Config} whose
    state to measure; default the selected optimizer only)."""
    facts = facts_of(cfg)
    per_iter = tokens_per_iter(cfg)
    device = target_device(cfg)
    # first, before the registry's optimizers load their packages into this process
    measured = measure_here(cfg, device, facts["vocab_size"], per_iter)
    shape = model_config(cfg, facts["vocab_size"])
    model = meta_model(cfg, facts["vocab_size"])
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    masks = sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                if n.endswith("_mask"))
    states = optimizer_state_bytes(optimizer_cfgs or {cfg.OPTIMIZER: cfg},
                                   parameter_shapes(model))
    acts = activation_bytes(cfg, shape)
    data_bytes = _data_bytes(cfg, facts, device)
    state = states.get(cfg.OPTIMIZER)
    activations = (acts["checkpointed"] if cfg.ACTIVATION_CHECKPOINTING else acts["blocks"])
    if cfg.BUDGET == "epochs":
        needs_prepared(facts, "BUDGET=epochs")
    total_iters = Budget(cfg, per_iter, facts["train_tokens"]).total_iters
    total_tokens = total_iters * per_iter if total_iters is not None else None
    flops_per_token = model.flops_per_token()
    process_bytes = measured.get("process_bytes") or 0
    peak = (process_bytes + params * FP32 + trainable * FP32 + masks + data_bytes
            + activations + acts["head"] + (state if isinstance(state, int) else 0))
    tokens_per_s, time_source = _speed(cfg, device, flops_per_token, per_iter, measured)
    if cfg.BUDGET == "minutes":
        seconds = cfg.MAX_MINUTES * 60
    else:
        seconds = total_tokens / tokens_per_s if tokens_per_s and total_tokens else None
    return {"params": params, "param_bytes": params * FP32, "grad_bytes": trainable * FP32,
            "optimizer_state_bytes": states, "mask_bytes": masks, "data_bytes": data_bytes,
            "process_bytes": process_bytes,
            "activation_bytes": acts["blocks"], "activation_checkpointed_bytes":
            acts["checkpointed"], "head_bytes": acts["head"], "peak_bytes": peak,
            "micro_batch": batch_size(cfg), "batch_size_auto": bool(cfg.BATCH_SIZE_AUTO),
            "tokens_per_iter": per_iter,
            "total_iters": total_iters, "total_tokens": total_tokens,
            "flops_per_token": flops_per_token,
            "total_flops": flops_per_token * total_tokens if total_tokens else None,
            "device": device["name"], "device_memory_bytes": device["memory_bytes"],
            "tokens_per_s": tokens_per_s, "seconds": seconds, "time_source": time_source,
            "optimizer": cfg.OPTIMIZER}


def _mib(n) -> str:
    return f"{n / 2**20:,.1f} MiB" if isinstance(n, (int, float)) else str(n)


def _duration(seconds) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_estimate(e: dict) -> str:
    lines = [f"parameters          {e['params']:,}",
             f"parameter bytes     {_mib(e['param_bytes'])} (fp32)",
             f"gradient bytes      {_mib(e['grad_bytes'])} (fp32)",
             "optimizer state"]
    for name, value in e["optimizer_state_bytes"].items():
        mark = "  <- OPTIMIZER" if name == e["optimizer"] else ""
        lines.append(f"  {name:<18}{_mib(value)}{mark}")
    lines += [f"mask bytes          {_mib(e['mask_bytes'])}",
              f"activations         {_mib(e['activation_bytes'])} per micro-batch of "
              f"{e['micro_batch']} sequences; {_mib(e['activation_checkpointed_bytes'])} "
              f"with activation checkpointing; plus {_mib(e['head_bytes'])} for the loss"]
    if e["batch_size_auto"]:
        lines.append("                    BATCH_SIZE_AUTO: the trainer picks the largest "
                     "micro-batch that fits at start (gpt2/batch_fit.py); figures here are "
                     "for BATCH_SIZE")
    if e["data_bytes"]:
        lines.append(f"data in memory      {_mib(e['data_bytes'])}")
    if e["process_bytes"]:
        lines.append(f"process             {_mib(e['process_bytes'])} (interpreter, torch and "
                     f"libraries, measured in this process)")
    fits = ""
    if e["device_memory_bytes"]:
        share = e["peak_bytes"] / e["device_memory_bytes"]
        fits = f" = {share:.0%} of {e['device']}'s {e['device_memory_bytes'] / 2**30:.0f} GiB"
    lines += [f"peak memory (est.)  {_mib(e['peak_bytes'])}{fits}",
              f"tokens              {e['tokens_per_iter']:,} per iteration"
              + (f", {e['total_tokens']:,} in {e['total_iters']:,} iterations"
                 if e["total_tokens"] else ", total set by the wall-clock budget"),
              f"FLOPs               {e['flops_per_token'] / 1e9:.3f} GFLOP per token"
              + (f", {e['total_flops']:.3g} in total" if e["total_flops"] else ""),
              f"expected time       {_duration(e['seconds'])} of training on {e['device']}"
              + (f" at {e['tokens_per_s']:,.0f} tokens/s" if e["tokens_per_s"] else "")
              + f"; from {e['time_source']}"]
    return "\n".join(lines)


def one_line(e: dict) -> str:
    """The estimate in one line, for the matrix dry run."""
    state = e["optimizer_state_bytes"].get(e["optimizer"])
    return (f"{e['params'] / 1e6:.1f}M params, state {_mib(state)}, peak {_mib(e['peak_bytes'])}, "
            + (f"{e['total_flops']:.2g} FLOP, " if e["total_flops"] else "")
            + f"~{_duration(e['seconds'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.estimate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    path = args.config or cfglib.default_config_path()
    try:
        cfg = cfglib.load(path, args.set)
        result = estimate(cfg, registry_configs(path, args.set))
    except (cfglib.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_estimate(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
