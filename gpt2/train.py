"""Train GPT-2 as a .config describes: python -m gpt2.train [.config] [--set NAME=VALUE ...]

Resumes from the run directory's checkpoint when there is one, and says so
when the run is already complete. Exit status: 0 done (or stopped by
--stop-after), 2 bad configuration or input, 3 training failed (non-finite
loss, out of memory), 130 interrupted (checkpoint saved; run again to resume).
"""
import time

PROCESS_START = time.time()  # before the heavy imports: start-up cost is part of a run's cost

import argparse
import logging
import math
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from gpt2 import batch_fit, data, losses, pairing
from gpt2.data import loaders
from gpt2.budget import Budget, batch_size, check_pruning, spam_problems
from gpt2.build import build_model
from gpt2.loop import TrainingFailed
from gpt2.loop import summary as summary_figures
from gpt2.loop.bar import ProgressBar
from gpt2.loop.checkpointer import Checkpointer
from gpt2.loop.evaluation import eval_windows, evaluate
from gpt2.loop.log_window import LogWindow, saved_state
from gpt2.loop.logs import quiet_logging, setup_logging
from gpt2.loop.progress import Progress
from gpt2.sample import generate_text
from lib import checkpoint, distributed, faults, memory_snapshot, optim, prune, recipe_fit
from lib import provenance, runtime, trackers
from lib import config as cfglib
from lib.distributed import Distributed
from lib.metrics import Discard, MetricsLog, env_info
from lib.run import RunDir, RunReader
from lib.stop import STOP_SIGNALS, StopRequest
from lib.stop_at import StopAt
from lib.fsutil import atomic_write_json, atomic_write_text, no_space
from lib.schedule import learning_rate, schedule_options
from lib.steptime import StepClock

# The AdamWPrune trainer's flags, kept as aliases of the symbols they set.
FLAG_ALIASES = {
    "--batch-size": "BATCH_SIZE",
    "--gradient-accumulation": "GRADIENT_ACCUMULATION",
    "--num-epochs": "NUM_EPOCHS",
    "--device": "DEVICE",
}


def set_up_device(cfg, ranks: Distributed) -> torch.device:
    """This process's device, with the precision and kernel knobs set, and the seed."""
    device = ranks.device(runtime.pick_device(cfg.DEVICE))
    runtime.set_tf32(cfg.TF32)
    runtime.set_cuda_options(device, cfg.CUDNN_BENCHMARK, cfg.CUDA_EXPANDABLE_SEGMENTS)
    torch.set_flush_denormal(cfg.FLUSH_DENORMAL)
    torch.manual_seed(cfg.SEED)
    return device


class Trainer:
    """Everything a run needs, built without writing to its run directory."""

    def __init__(self, cfg, run: RunDir, log: logging.Logger = None, stop=None,
                 ranks: Distributed = Distributed()):
        self.cfg, self.run, self.log = cfg, run, log or logging.getLogger("kmatrix.train")
        self.stop = stop if stop is not None else StopRequest()
        self.ranks = ranks
        self.startup_s = None  # this session: process start to the first training step
        self.device = set_up_device(cfg, ranks)
        with ranks.main_first():
            self.prepared = data.prepare_config(cfg)
        data.check_split_sizes_config(cfg, self.prepared)
        self.asked = cfg  # BATCH_SIZE_AUTO trains with a fitted copy (gpt2/batch_fit.py)
        cfg, self.batch_choice = batch_fit.fitted(cfg, self.prepared, self.device, ranks, run)
        self.cfg = cfg
        self.batch_size = batch_size(cfg)
        self.batches = loaders.LOADERS[cfg.DATA_LOADER](self.prepared, cfg.BLOCK_SIZE,
                                                        self.batch_size, self.device, cfg.SEED)
        self.eval_windows = eval_windows(self.prepared, self.asked, self.device, cfg.BATCH_SIZE)
        self.test_windows = data.EvalWindows(self.prepared, "test", cfg.BLOCK_SIZE,
                                             cfg.BATCH_SIZE, None, self.device)
        self.model = build_model(cfg, data.vocab_size(self.prepared)).to(self.device)
        self.training_loss = losses.training_loss(cfg)  # evaluate() reports the plain loss
        # the asked split: BATCH_SIZE_AUTO reads the same sequences in the same order
        self.pairing = {"init_hash": pairing.init_hash(self.model), "data_hash": pairing.data_hash(
            self.prepared, cfg.BLOCK_SIZE, batch_size(self.asked),
            self.asked.GRADIENT_ACCUMULATION, cfg.SEED)}
        self.ddp = ranks.wrap(self.model, self.device)  # the model, or DDP around it
        self.optimizer = optim.build(cfg, self.model)
        self.scaler = runtime.grad_scaler(self.device, cfg.PRECISION)
        self.autocast = runtime.ForwardContext.for_config(cfg, self.device)
        self.memory_snapshot = memory_snapshot.MemorySnapshot(cfg.MEMORY_SNAPSHOT_ITERS,
                                                              self.device, run.path)
        self.pruner = prune.build(cfg, self.model, self.optimizer)
        self.tokens_per_iter = self.batch_size * cfg.GRADIENT_ACCUMULATION * cfg.BLOCK_SIZE
        self.budget = Budget(cfg, self.tokens_per_iter, self.batches.train_tokens)
        self.metrics = MetricsLog(run.metrics) if ranks.is_main else Discard()
        self.progress = Progress(**self.pairing)
        self.forward = self.ddp  # replaced by the compiled module in fit()
        self.window, self.checkpointer = self.loop_parts()

    def loop_parts(self) -> tuple:
        """The loop's parts that outlive a session: (LogWindow, saved with each checkpoint,
        Checkpointer)."""
        cfg = self.cfg
        window = LogWindow(cfg.LOG_INTERVAL, self.ranks, self.device, self.tokens_per_iter,
                           optim.OPTIMIZERS[cfg.OPTIMIZER].lr)
        return window, Checkpointer(self.run.ckpt, cfg.CHECKPOINT_INTERVAL, self.ranks.is_main,
                                    self.state_dict, window)

    # -- checkpoints -------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": self.batches.state_dict(),
            "pruner": self.pruner.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "progress": asdict(self.progress),
            "config_hash": self.cfg.hash,
        }

    def resume(self):
        """Load ckpt.pt (or, when it was moved aside, the previous one it kept);
        the path resumed from, or None for a fresh start."""
        path = next((p for p in (self.run.ckpt, checkpoint.previous(self.run.ckpt))
                     if p.exists()), None)
        if path is None:  # drop what an attempt killed before its first checkpoint wrote
            self.metrics.truncate_after(0, 0)
            return None
        state = checkpoint.load(path, map_location=self.device)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.batches.load_state_dict(state["data"])
            self.pruner.load_state_dict(state["pruner"])
            torch.set_rng_state(state["rng_cpu"].cpu())
            if state["rng_cuda"]:
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
            progress, window = saved_state(state)
            self.progress = Progress(**{**self.pairing, **progress})
            self.window.load_state_dict(window)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise checkpoint.CheckpointError(checkpoint.damaged_message(
                path, f"its contents do not fit this configuration: {type(e).__name__}: "
                      f"{(str(e).splitlines() or [''])[0][:200]}")) from None
        self.checkpointer.saved_iter = self.progress.iter
        torn = self.metrics.truncate_after(self.progress.iter, self.progress.eval_iter or 0)
        if torn:
            self.log.warning(torn)
        return path

    # -- the step ----------------------------------------------------------
    def set_lr(self) -> float:
        cfg = self.cfg
        peak = optim.peak_lr(cfg)
        lr = learning_rate(self.progress.iter, self.budget.decay_progress(self.progress),
                           schedule=cfg.LR_SCHEDULE, lr=peak, min_lr=peak * cfg.MIN_LR_FRACTION,
                           warmup_iters=cfg.WARMUP_ITERS, **schedule_options(cfg))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self):
        """One optimizer step over GRADIENT_ACCUMULATION micro-batches (this process's share
        of them); no host sync. Returns the step's mean micro-batch loss and the gradient
        norm."""
        ranks = self.ranks
        share = ranks.micro_batches(self.cfg.GRADIENT_ACCUMULATION)
        batches = self.batches.step("train", self.cfg.GRADIENT_ACCUMULATION, ranks.rank,
                                    ranks.world_size)
        loss_sum = 0
        for i, (x, y) in enumerate(batches):
            with ranks.gradient_sync(self.ddp, last=i == share - 1):
                with self.autocast:
                    _, loss = self.forward(x, y, self.training_loss)
                self.scaler.scale(loss / share).backward()
            loss_sum = loss_sum + loss.detach()
        self.scaler.unscale_(self.optimizer)
        self.pruner.before_step()
        optim.prepare_grads(self.optimizer)  # SPAM sees raw gradients, before any global clip
        max_norm = self.cfg.GRAD_CLIP or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / share, grad_norm.detach()

    # -- the loop ----------------------------------------------------------
    def fit(self, stop_after=None) -> str:
        """Train until the budget is spent ("complete"), a stop signal ("interrupted") or
        `stop_after` steps of this session ("stopped"); the checkpoint holds where it ended."""
        p, window = self.progress, self.window
        clock, bar = self.start_session()
        status, steps = "complete", 0
        # Every rank takes the same branch: a stop signal or the time budget of one is all's.
        last, stopping = self.ranks.any(self.budget.done(p), self.stop)
        while not last:
            status = self.stop_status(stopping, stop_after, steps)
            if status != "complete":
                break
            lr, grad_norm = self.step(clock)
            steps += 1
            last, stopping = self.ranks.any(self.budget.done(p), self.stop)
            if window.due(p.iter, last):
                bar.show(*window.close(p, clock, self.metrics, lr, grad_norm, self.step_stats()))
            bar.update(p)
            if p.iter % self.cfg.EVAL_INTERVAL == 0 or last:
                self.eval_and_log()
            if self.checkpointer.due(p.iter, last or stopping):
                self.checkpointer.save(p.iter)
        bar.close()
        p.compile_s, p.steady_step_s = clock.compile_s(), clock.steady_step_s()
        if status != "complete":
            self.checkpointer.save(p.iter)
        return status

    def start_session(self) -> tuple:
        """Compile, start the memory snapshot and the log window's clock; returns this
        session's (StepClock, ProgressBar)."""
        cfg, p = self.cfg, self.progress
        self.forward = runtime.maybe_compile(self.ddp, cfg.COMPILE, cfg.COMPILE_MODE,
                                             self.device, self.log, cfg.COMPILE_FULLGRAPH)
        self.memory_snapshot.start(p.iter, self.log)
        self.window.begin(p.train_time_s)
        return (StepClock(self.device, p.compile_s, p.steady_step_s),
                ProgressBar(self.budget, p, self.run.path.name, self.ranks.is_main))

    @staticmethod
    def stop_status(stopping: bool, stop_after, steps: int) -> str:
        """Why the loop ends before the budget does, else "complete"."""
        if stopping:
            return "interrupted"
        if stop_after is not None and steps >= stop_after:
            return "stopped"
        return "complete"

    def step(self, clock: StepClock) -> tuple:
        """One timed optimizer step and what follows it (the memory snapshot, pruning); its
        loss goes into the log window. Returns the step's (lr, grad_norm)."""
        p = self.progress
        lr = self.set_lr()
        if self.startup_s is None:
            self.startup_s = time.time() - PROCESS_START
        t0 = time.perf_counter()
        loss, grad_norm = self.train_step()
        self.window.add(loss)
        seconds = time.perf_counter() - t0
        p.train_time_s += seconds + clock.step(seconds)
        p.iter += 1
        p.tokens_seen += self.tokens_per_iter
        self.memory_snapshot.after_step(p.iter)
        pruned = self.pruner.after_step(p.iter, self.budget.fraction(p))
        if pruned:
            self.metrics.write({"kind": "prune", "tokens": p.tokens_seen, **pruned})
        faults.point("step", p.iter)
        return lr, grad_norm

    def step_stats(self) -> dict:
        """The optimizer's and the model's figures for a train record."""
        return {**optim.stats(self.optimizer), **self.model.stats()}

    def finish(self) -> str:
        """After the last step: the final evaluation, its checkpoint and the samples,
        each only if it is missing (a resume finishes what an interruption left).
        Returns "complete", or "interrupted" when a stop signal came first."""
        p = self.progress
        if p.eval_iter != p.iter:
            if self.ranks.any(self.stop):
                return "interrupted"
            self.eval_and_log()
            self.checkpointer.save(p.iter, again=True)
        if p.test is None:
            if self.ranks.any(self.stop):
                return "interrupted"
            self.test_and_log()
            self.checkpointer.save(p.iter, again=True)
        if not self.ranks.is_main:
            return "complete"
        if self.cfg.SAMPLE_AFTER_TRAINING and not self.run.samples.exists():
            if self.stop:
                return "interrupted"
            faults.point("sample", p.iter)
            text = "\n---\n".join(self.samples())
            atomic_write_text(self.run.samples, text + "\n")
            self.log.info("sample:\n" + text)
        return "complete"

    def eval_and_log(self) -> None:
        p = self.progress
        faults.point("eval", p.iter)
        result = evaluate(self.forward, self.eval_windows, self.autocast, self.ranks)
        if not math.isfinite(result["val_loss"]):
            raise TrainingFailed(f"non-finite validation loss at iteration {p.iter}")
        p.best_val_loss = min(p.best_val_loss, result["val_loss"])
        p.last_eval, p.eval_iter = result, p.iter
        peak, peak_kind = runtime.peak_memory(self.device)
        self.metrics.write({"kind": "eval", "iter": p.iter, "tokens": p.tokens_seen, **result,
                            "elapsed_s": p.train_time_s, "peak_mem_bytes": peak,
                            "peak_mem_kind": peak_kind})
        self.log.info(f"iter {p.iter}: train loss {result['train_loss']:.4f}, val loss "
                      f"{result['val_loss']:.4f}, val ppl {result['val_ppl']:.2f}, val acc "
                      f"{result['val_acc']:.3f}")
        if self.cfg.SAMPLE_AT_EVAL and self.ranks.is_main:
            self.log.info("sample:\n" + "\n---\n".join(self.samples(count=1)))

    def test_and_log(self) -> None:
        """The held-out test split, once, over every window (token-weighted means)."""
        p = self.progress
        faults.point("test", p.iter)
        result = evaluate(self.forward, {"test": self.test_windows}, self.autocast, self.ranks)
        p.test = {**result, "test_tokens": self.test_windows.tokens}
        record = {"kind": "test", "iter": p.iter, "tokens": p.tokens_seen, **p.test}
        if self.ranks.is_main and record not in self.metrics.read():  # a resume's repeat
            self.metrics.write(record)
        self.log.info(f"iter {p.iter}: test loss {result['test_loss']:.4f}, test ppl "
                      f"{result['test_ppl']:.2f}, test acc {result['test_acc']:.3f} "
                      f"({self.test_windows.tokens:,} tokens)")

    def samples(self, count=None) -> list:
        return generate_text(self.model, self.prepared, self.cfg, self.device,
                             count=count or self.cfg.SAMPLE_COUNT)

    def summary(self, status: str, error: str = None) -> dict:
        """summary.json: the run's results, then what it ran on and with."""
        return {**summary_figures.results(self.progress, status, error),
                **summary_figures.resources(self)}


def train(cfg, stop_after=None, stop=None, stop_at=StopAt()) -> int:
    """Train (or resume, or finish) the run of cfg. Everything that can reject the
    configuration or its input runs before the run directory is touched."""
    if cfg.MATRIX:
        raise cfglib.ConfigError("CONFIG_MATRIX=y: this configuration describes a test matrix, "
                                 "not one run; run it with `make` or `make test-matrix`")
    stop = stop if stop is not None else StopRequest()
    run = RunDir.for_config(cfg)
    run.check_owner(cfg)
    if run.is_complete():
        print(f"{run.path}: already complete (see summary.json); nothing to do")
        return 0
    faults.point("start")
    trackers.check(cfg)
    ranks = Distributed.start(cfg, runtime.pick_device(cfg.DEVICE))
    try:
        if not ranks.is_main:
            run = RunReader(run.path)
        trainer = Trainer(cfg, run, stop=stop, ranks=ranks)
        check_pruning(cfg, trainer.budget.total_iters)  # the prepared data's size, not a recount
        if ranks.any(stop):
            print(f"{stop.name} before training started; nothing written", file=sys.stderr)
            return 130
        run.claim(cfg, provenance.collect(cfglib.ROOT, **provenance.torch_facts(
            runtime.device_name(trainer.device))) if ranks.is_main else None)
        try:
            return _train_claimed(trainer, run, stop_after, stop_at)
        finally:
            run.unlock()
    finally:
        ranks.close()


def _train_claimed(trainer, run, stop_after, stop_at=StopAt()) -> int:
    cfg = trainer.cfg
    if not trainer.ranks.is_main:
        trainer.log = quiet_logging(trainer.ranks.rank)
        return _train_logged(trainer, run, stop_after, stop_at)
    log = trainer.log = setup_logging(run)
    for name in checkpoint.remove_orphans(run.path):
        log.info(f"removed {name}, left by an interrupted write")
    atomic_write_json(run.env, env_info(trainer.device, runtime.device_name(trainer.device)))
    mismatch = recipe_fit.gpu_recipe_on_cpu(cfg, trainer.device, trainer.model.num_params(),
                                            trainer.tokens_per_iter, trainer.budget.total_iters)
    if mismatch:
        log.warning(mismatch)
    for problem in spam_problems(cfg, trainer.budget.total_iters):  # a matrix refuses them
        log.warning(problem)
    trainer.metrics.tracker = trackers.start(cfg, run.path, run.path.name, log)
    try:
        return _train_logged(trainer, run, stop_after, stop_at)
    finally:
        trainer.metrics.close()


def _train_logged(trainer, run, stop_after, stop_at=StopAt()) -> int:
    stop, log = trainer.stop, trainer.log
    _resume(trainer, run)
    run.write_summary(trainer.summary("running"))
    started = time.perf_counter()
    try:
        status = trainer.fit(stop_at.steps(trainer.progress.iter, stop_after))
        if status == "complete":
            status = trainer.finish()
    except (TrainingFailed, optim.FusedKernelError, torch.OutOfMemoryError,
            data.DataError) as e:  # a DataError here: a shard found damaged mid-run
        return _failed(trainer, run, e)
    except OSError as e:
        if no_space(e):  # nothing is lost: the run resumes from its last checkpoint
            return _out_of_space(trainer, run)
        try:  # the summary may not fit either; the error line says why
            run.write_summary(trainer.summary("failed", _write_error(e)))
        except OSError:
            pass
        raise
    summary = {**trainer.summary(status), **stop_at.summary(status, trainer.progress.iter)}
    if status == "interrupted":
        run.write_summary(summary)
        log.warning(f"{stop.name}: stopped at iteration {trainer.progress.iter}; checkpoint "
                    f"saved, run the same command again to resume")
        return 130
    log.info(f"{status} at iteration {summary['iters']}: val loss {summary['val_loss']}, "
             f"{summary['tokens_per_s'] or 0:,.0f} tokens/s, peak memory "
             f"{summary['peak_mem_bytes'] / 2**20:,.0f} MiB ({summary['peak_mem_kind']}), "
             f"{time.perf_counter() - started:.1f} s this session")
    run.write_summary(summary)
    return 0


def _resume(trainer, run) -> None:
    """Resume from the run's checkpoint, if any, and say where training starts."""
    processes = trainer.ranks.world_size
    resumed = trainer.resume()
    if resumed:
        trainer.log.info(f"resuming {run.path} at iteration {trainer.progress.iter}"
                         + (f" from {resumed.name}" if resumed != run.ckpt else "")
                         + f", {batch_fit.describe(trainer.batch_choice)}")
    else:
        trainer.log.info(f"training {run.path} on {trainer.device}"
                         + (f" x {processes} processes" if processes > 1 else "") + ": "
                         f"{trainer.model.num_params():,} parameters, "
                         f"{trainer.tokens_per_iter:,} tokens per iteration, "
                         f"{batch_fit.describe(trainer.batch_choice)}")


def _failed(trainer, run, e: Exception) -> int:
    """Training cannot go on: the summary says failed and why, and so does the log."""
    reason = str(e) if not isinstance(e, torch.OutOfMemoryError) else (
        f"out of memory at iteration {trainer.progress.iter}: "
        + batch_fit.out_of_memory_hint(trainer.batch_choice))
    run.write_summary(trainer.summary("failed", reason))
    trainer.log.error(f"training failed: {reason}")
    return 3


def _out_of_space(trainer, run) -> int:
    """A write did not fit (checkpoint, metrics record or summary): say so in one line,
    leave the summary interrupted with that reason, exit 130 (run again to resume)."""
    reason = checkpoint.no_space_message(run.ckpt)
    try:
        run.write_summary(trainer.summary("interrupted", reason))
    except OSError:
        reason += " (summary.json could not be updated either)"
    trainer.log.error(reason)
    return 130


def _write_error(e: OSError) -> str:
    where = Path(e.filename).parent if e.filename else None
    what = f"cannot write in {where}" if where else "cannot write the run's files"
    return (f"{what}: {e.strerror or e} (check that RESULTS_DIR is writable and has free "
            f"space, or set RESULTS_DIR to another directory)")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m gpt2.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="config file (default: .config or $KCONFIG_CONFIG)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a symbol for this run, validated like .config")
    for flag, symbol in FLAG_ALIASES.items():
        parser.add_argument(flag, dest=symbol, help=f"alias of --set {symbol}=VALUE")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="train at most N iterations in this invocation, checkpoint and exit")
    parser.add_argument("--stop-at", type=int, metavar="N",
                        help="stop at iteration N (a tuning rung), checkpoint and exit")
    parser.add_argument("--early-stop-rung", type=int, metavar="K",
                        help="with --stop-at: early stopping ends the run there, at rung K")
    args = parser.parse_args(argv)
    args.overrides = args.set + [f"{symbol}={getattr(args, symbol)}"
                                 for symbol in FLAG_ALIASES.values()
                                 if getattr(args, symbol) is not None]
    if any(o.startswith("NUM_EPOCHS=") for o in args.overrides):
        args.overrides.insert(0, "BUDGET=epochs")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with StopRequest() as stop:
        try:
            cfg = cfglib.load(args.config, args.overrides)
            if distributed.needs_launch(cfg):
                if stop:
                    return 130
                run = RunDir.for_config(cfg)
                return distributed.launch(cfg, "gpt2.train",
                                          sys.argv[1:] if argv is None else argv,
                                          lambda: run.read_summary().get("status"))
            return train(cfg, args.stop_after, stop, StopAt(args.stop_at, args.early_stop_rung))
        except (cfglib.ConfigError, data.DataError, checkpoint.CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"error: {_write_error(e)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    # A late stop signal (a matrix runner passes on the SIGINT a terminal already sent the
    # whole group) must not turn the exit status into death by signal: around main()'s own
    # StopRequest it is dropped, and from its return on it is ignored, since the
    # interpreter's shutdown resets Python handlers to the default action.
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: None)
    status = main()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(status)
