"""The rows of make gpu-check (scripts/gpu_check.py): each a function(workdir) -> Row.

Every row trains through the project's trainer CLI (python -m gpt2.train CONFIG --set ...)
on defconfigs/default plus overrides, and reads the run directory it writes (summary.json,
metrics.jsonl): the same path users run. Add a row: write its function, add it to ROWS.
These rows need CUDA and cannot run on a CPU-only machine; the tests cover the frame.
"""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from lib import config as cfglib
from lib import devices



@dataclasses.dataclass
class Row:
    name: str
    ok: bool
    figure: str  # the measured figure, in words with units


SMALL = ["DEVICE=cuda", "MODEL_SIZE=custom", "N_LAYER=4", "N_HEAD=4", "N_EMBD=128",
         "BLOCK_SIZE=128", "BATCH_SIZE=16", "MAX_ITERS=60", "EVAL_INTERVAL=60", "EVAL_ITERS=2",
         "LOG_INTERVAL=5", "WARMUP_ITERS=5", "SAMPLE_AFTER_TRAINING=n", "CHECKPOINT_INTERVAL=1000"]
GPT2 = ["DEVICE=cuda", "MODEL_SIZE=gpt2", "PRECISION=bf16", "COMPILE=y",
        "ATTENTION_BACKEND=flash", "EVAL_ITERS=1", "SAMPLE_AFTER_TRAINING=n", "LOG_INTERVAL=5",
        "CHECKPOINT_INTERVAL=100000"]
DEVICE = "cuda"  # tests/test_gpu_check.py runs some rows on the CPU with a tiny SMALL
LOSS_TOL = 0.05  # compile on vs off: |loss difference| after the same steps
ATTENTION = ("flash", "memory-efficient", "math")  # ATTENTION_BACKEND choices compared
ATTENTION_TOL = 0.1  # bf16 logits: max |difference| against math
# BATCH_SIZE_AUTO: 1,024 sequences a step (about 5.6 MiB of activations each on SMALL, by
# gpt2/activations.py): all fit an 80 GB card at once, a 1 GiB cap makes the finder back off
AUTO = ["BATCH_SIZE=32", "GRADIENT_ACCUMULATION=32", "BATCH_SIZE_AUTO=y", "MAX_ITERS=2",
        "EVAL_INTERVAL=2"]
AUTO_CAP = "BATCH_SIZE_AUTO_MEMORY_MB=1024"
# pruning within SMALL's iterations: ramp from iteration 5, masks updated every 5
PRUNE = ["TARGET_SPARSITY=0.5", "PRUNING_START=5", "PRUNING_FREQUENCY=5"]


def write_config(workdir: Path, overrides: list) -> Path:
    """defconfigs/default + overrides as a .config in workdir, results under workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    kconf = cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default",
                              [*overrides, f"RESULTS_DIR={workdir / 'results'}"])
    path = workdir / "config"
    cfglib.write_config(kconf, path)
    return path


def train(workdir: Path, overrides: list, launcher=None, env=None) -> dict:
    """One trainer run; its summary plus the train losses of metrics.jsonl."""
    from lib.run import RunDir
    config = write_config(workdir, overrides)
    argv = [*(launcher or [sys.executable]), "-m", "gpt2.train", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cfglib.ROOT,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"trainer exit {done.returncode}: {tail[0]}")
    run = RunDir.for_config(cfglib.load(config))
    summary = json.loads(run.summary.read_text())
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    summary["losses"] = [r["train_loss"] for r in records if r["kind"] == "train"]
    return summary


def falls(summary: dict) -> bool:
    losses = summary["losses"]
    return bool(losses) and all(map(math.isfinite, losses)) and losses[-1] < losses[0]


def precision_row(precision: str):
    def row(workdir: Path) -> Row:
        s = train(workdir, [*SMALL, f"PRECISION={precision}"])
        return Row(f"train-{precision}", falls(s),
                   f"loss {s['losses'][0]:.3f} -> {s['losses'][-1]:.3f}")
    return row


def fp16_overflow(workdir: Path) -> Row:
    """The trainer's own fp16 step (its GradScaler) with a forced inf gradient: skipped, and
    the scale halves."""
    import logging
    from gpt2.train import Trainer
    from lib.run import RunDir
    cfg = cfglib.load(write_config(workdir, [*SMALL, f"DEVICE={DEVICE}", "PRECISION=fp16"]))
    trainer = Trainer(cfg, RunDir(workdir / "run"), logging.getLogger("gpu-check"))
    trainer.train_step()
    before = trainer.scaler.get_scale()
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    first = next(trainer.model.parameters())
    hook = first.register_hook(lambda g: torch.full_like(g, math.inf))
    trainer.train_step()
    hook.remove()
    skipped = all(torch.equal(w, p.detach()) for w, p in zip(weights, trainer.model.parameters()))
    after = trainer.scaler.get_scale()
    return Row("fp16-overflow-skipped", skipped and after == before / 2,
               f"step skipped: {skipped}; scale {before:g} -> {after:g}")


def compile_on_off(workdir: Path) -> Row:
    eager = train(workdir / "eager", [*SMALL, "PRECISION=bf16", "DROPOUT=0"])
    compiled = train(workdir / "compiled", [*SMALL, "PRECISION=bf16", "DROPOUT=0", "COMPILE=y"])
    diff = abs(eager["train_loss"] - compiled["train_loss"])
    return Row("compile-vs-eager", diff <= LOSS_TOL,
               f"|loss diff| {diff:.4f} (tol {LOSS_TOL}) after {compiled['iters']} steps; "
               f"compile {compiled['compile_s']:.1f} s")


def attention_backends(workdir: Path) -> Row:
    """The trainer's forward context (bf16 autocast + ATTENTION_BACKEND's kernel) for each
    backend on the same input: max |logit difference| against math."""
    from gpt2.build import build_model
    from lib import runtime
    cfg = cfglib.load(write_config(workdir, [*SMALL, f"DEVICE={DEVICE}", "DROPOUT=0"]))
    device = torch.device(DEVICE)
    torch.manual_seed(0)
    model = build_model(cfg, 256).to(device).eval()
    x = torch.randint(0, 256, (4, cfg.BLOCK_SIZE), device=device)
    out = {}
    for choice in ATTENTION:
        kernel = runtime.attention_kernel(device, choice, cfg.N_EMBD // cfg.N_HEAD, "bf16")
        with torch.no_grad(), runtime.ForwardContext(runtime.autocast(device, "bf16"), kernel):
            out[choice] = model(x)[0].float()
    worst = max((out[c] - out["math"]).abs().max().item() for c in ATTENTION if c != "math")
    return Row("attention-backends", worst < ATTENTION_TOL,
               f"{', '.join(c for c in ATTENTION if c != 'math')}: max |logit diff| vs math "
               f"{worst:.4f} (tol {ATTENTION_TOL})")


def optimizer_row(name: str, *extra):
    def row(workdir: Path) -> Row:
        s = train(workdir, [*SMALL, "PRECISION=bf16", f"OPTIMIZER={name}", *extra])
        return Row(f"optimizer-{name}{'-' + extra[-1].lower() if extra else ''}", falls(s),
                   f"loss {s['losses'][0]:.3f} -> {s['losses'][-1]:.3f}")
    return row


def prune_row(method: str, *extra):
    def row(workdir: Path) -> Row:
        s = train(workdir, [*SMALL, f"PRUNING={method}", *PRUNE, *extra])
        ok = abs(s.get("sparsity", 0.0) - 0.5) < 0.02
        return Row(f"prune-{method}{'-' + extra[-1].split('=')[-1] if extra else ''}", ok,
                   f"sparsity {s.get('sparsity', 0.0):.3f} (target 0.5)")
    return row


def estimate_json(workdir: Path, overrides: list) -> dict:
    config = write_config(workdir, overrides)
    done = subprocess.run([sys.executable, "-m", "scripts.estimate", str(config), "--json"],
                          capture_output=True, text=True, cwd=cfglib.ROOT, check=True)
    return json.loads(done.stdout)


def largest_batch(workdir: Path, steps: int) -> tuple:
    """(micro-batch, summary) of the largest GPT-2 124M micro-batch that trains."""
    for batch in (64, 32, 16, 8, 4):
        try:
            return batch, train(workdir / f"b{batch}", [*GPT2, f"BATCH_SIZE={batch}",
                                                        f"MAX_ITERS={steps}", f"EVAL_INTERVAL={steps}"])
        except RuntimeError:
            continue
    raise RuntimeError("no micro-batch of 4 or more fits")


def peak_memory(workdir: Path) -> Row:
    overrides = [*GPT2, "BATCH_SIZE=8", "MAX_ITERS=5", "EVAL_INTERVAL=5"]
    s = train(workdir / "run", overrides)
    e = estimate_json(workdir / "estimate", overrides)
    ratio = s["peak_mem_bytes"] / e["peak_bytes"]
    return Row("peak-memory-vs-estimate", 0.5 <= ratio <= 1.5,
               f"measured {s['peak_mem_bytes'] / 2**30:.2f} GiB / estimate "
               f"{e['peak_bytes'] / 2**30:.2f} GiB = {ratio:.2f}")


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE


def mfu(workdir: Path) -> Row:
    batch, s = largest_batch(workdir, 40)
    e = estimate_json(workdir / "estimate", [*GPT2, f"BATCH_SIZE={batch}"])
    peak = devices.peak_flops(device_name(), "bf16", False)
    if not peak or not s.get("tokens_per_s"):
        return Row("mfu-gpt2-124m", False, f"no peak FLOP/s for {device_name()}")
    value = s["tokens_per_s"] * e["flops_per_token"] / peak
    return Row("mfu-gpt2-124m", value > 0.2,
               f"MFU {value:.1%} at micro-batch {batch} ({s['tokens_per_s']:.0f} tok/s, "
               f"peak {peak / 1e12:g} TFLOP/s)")


def ddp(workdir: Path) -> Row:
    """The trainer with DDP_NPROC_PER_NODE = GPUs (it starts torchrun over NCCL) vs one process."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return Row("ddp-nccl", True, "skipped: one GPU")
    same = [*SMALL, "PRECISION=bf16", f"GRADIENT_ACCUMULATION={gpus}"]  # the same batch
    one = train(workdir / "one", same)
    many = train(workdir / "many", [*same, f"DDP_NPROC_PER_NODE={gpus}"])
    diff = abs(one["train_loss"] - many["train_loss"])
    return Row("ddp-nccl", falls(many) and many["processes"] == gpus and diff <= LOSS_TOL,
               f"{gpus} processes; loss {many['train_loss']:.3f} vs one process "
               f"{one['train_loss']:.3f} (diff {diff:.3f})")


def batch_size_auto(workdir: Path) -> Row:
    """BATCH_SIZE_AUTO's CUDA trial uncapped and under a cap: the capped run backs off to a
    smaller micro-batch, and both train the asked 1,024 sequences a step."""
    free = train(workdir / "free", [*SMALL, *AUTO])
    capped = train(workdir / "capped", [*SMALL, *AUTO, AUTO_CAP])
    split = [(s["batch_size_used"], s["gradient_accumulation_used"]) for s in (free, capped)]
    ok = (all(b * a == 1024 for b, a in split) and split[1][0] < split[0][0]
          and all(math.isfinite(s["train_loss"]) for s in (free, capped)))
    return Row("batch-size-auto", ok, f"micro-batch x accumulation: {split[0][0]} x "
               f"{split[0][1]} uncapped, {split[1][0]} x {split[1][1]} under {AUTO_CAP}")


def matrix_overrides(gpus: int) -> list:
    return [*SMALL, "PRECISION=bf16", "MATRIX=y", "MATRIX_SEEDS=4", f"MATRIX_JOBS={gpus}"]


def matrix_pinned(workdir: Path) -> Row:
    """A 4-cell matrix (four seeds) with MATRIX_JOBS = GPUs: every cell done, one per GPU."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return Row("matrix-one-cell-per-gpu", True, "skipped: one GPU")
    config = write_config(workdir, matrix_overrides(gpus))
    done = subprocess.run([sys.executable, "-m", "scripts.matrix", str(config)],
                          capture_output=True, text=True, cwd=cfglib.ROOT)
    states = [json.loads(p.read_text()) for p in (workdir / "results").glob("*/state/*.json")]
    pinned = sorted({str(s.get("gpu")) for s in states})
    ok = (done.returncode == 0 and len(states) == 4 and all(s["status"] == "done" for s in states)
          and len(pinned) == min(gpus, 4))
    return Row("matrix-one-cell-per-gpu", ok,
               f"exit {done.returncode}; {len(states)} cells on GPUs {','.join(pinned)}")


ROWS = {
    "train-fp32": precision_row("fp32"),
    "train-bf16": precision_row("bf16"),
    "train-fp16": precision_row("fp16"),
    "fp16-overflow-skipped": fp16_overflow,
    "compile-vs-eager": compile_on_off,
    "attention-backends": attention_backends,
    **{f"optimizer-{n}": optimizer_row(n) for n in
       ("sgd", "adam", "adamw", "adamw-8bit", "lion", "adafactor")},
    "optimizer-adamw-8bit-paged": optimizer_row("adamw-8bit", "ADAMW_8BIT_PAGED=y"),
    "optimizer-adamwspam-fused": optimizer_row("adamwspam", "OPTIMIZER_IMPL=fused"),
    **{f"prune-{m}": prune_row(m) for m in ("magnitude", "movement")},
    **{f"prune-state-{v}": prune_row("state", f"ADAMWPRUNE_VARIANT={v}")
       for v in ("bitter0", "bitter1", "bitter2")},
    "peak-memory-vs-estimate": peak_memory,
    "mfu-gpt2-124m": mfu,
    "ddp-nccl": ddp,
    "batch-size-auto": batch_size_auto,
    "matrix-one-cell-per-gpu": matrix_pinned,
}

# Every override list a row writes a config from (tests/test_gpu_check.py checks each takes).
OVERRIDE_SETS = [SMALL, GPT2, [*SMALL, "PRECISION=fp16"], [*SMALL, "COMPILE=y"],
                 [*SMALL, "OPTIMIZER=adamw-8bit", "ADAMW_8BIT_PAGED=y"],
                 [*SMALL, "OPTIMIZER=adamwspam", "OPTIMIZER_IMPL=fused"],
                 *([*SMALL, "PRUNING=state", *PRUNE, f"ADAMWPRUNE_VARIANT={v}"]
                   for v in ("bitter0", "bitter1", "bitter2")),
                 [*SMALL, "PRUNING=magnitude", *PRUNE],
                 [*SMALL, "PRUNING=movement", *PRUNE],
                 [*SMALL, "GRADIENT_ACCUMULATION=2", "DDP_NPROC_PER_NODE=2"], matrix_overrides(2),
                 [*SMALL, *AUTO, AUTO_CAP]]
