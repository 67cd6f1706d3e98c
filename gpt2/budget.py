"""The training budget: when training ends, how far the LR decay has got, and whether a
pruning schedule fits in it (checked before training and by the matrix dry run)."""
import math

from gpt2 import data
from lib.config import ConfigError
from lib import prune


def extra_budget(cfg) -> tuple:
    """AdamWPrune bitter2 spends what sparsity saves: (iteration factor, batch factor,
    label for summaries and reports, or None for every other configuration)."""
    if cfg.ADAMWPRUNE_VARIANT != "bitter2":
        return 1.0, 1.0, None
    if cfg.BITTER2_SPEND == "iters":
        ramp = "ramp stretched" if cfg.BITTER2_STRETCH_RAMP else "at full sparsity"
        return (1 + cfg.BITTER2_EXTRA_ITERS_PCT / 100, 1.0,
                f"+{cfg.BITTER2_EXTRA_ITERS_PCT}% iterations {ramp}")
    return 1.0, 1 + cfg.BITTER2_BATCH_PCT / 100, f"+{cfg.BITTER2_BATCH_PCT}% batch"


def batch_size(cfg) -> int:
    return round(cfg.BATCH_SIZE * extra_budget(cfg)[1])


def tokens_per_iter(cfg) -> int:
    return batch_size(cfg) * cfg.GRADIENT_ACCUMULATION * cfg.BLOCK_SIZE


class Budget:
    """When training ends, and how far the LR decay has got."""

    def __init__(self, cfg, tokens_per_iter: int, train_tokens: int):
        self.kind = cfg.BUDGET
        self.warmup = cfg.WARMUP_ITERS
        iter_factor = extra_budget(cfg)[0]
        self.seconds = cfg.MAX_MINUTES * 60 * iter_factor if self.kind == "minutes" else None
        total = {
            "iters": lambda: cfg.MAX_ITERS,
            "epochs": lambda: cfg.NUM_EPOCHS * train_tokens / tokens_per_iter,
            "tokens": lambda: cfg.MAX_TOKENS / tokens_per_iter,
            "minutes": lambda: None,
        }[self.kind]()
        self.total_iters = None if total is None else math.ceil(total * iter_factor)
        self.decay_end = cfg.DECAY_ITERS or self.total_iters

    def done(self, p) -> bool:
        if self.seconds is not None:
            return p.train_time_s >= self.seconds
        return p.iter >= self.total_iters

    def fraction(self, p) -> float:
        """How much of the budget is spent, in [0, 1]."""
        if self.seconds is not None:
            return min(1.0, p.train_time_s / self.seconds)
        return min(1.0, p.iter / self.total_iters)

    def decay_progress(self, p) -> float:
        if self.decay_end is None:
            return p.train_time_s / self.seconds
        return (p.iter - self.warmup) / max(1, self.decay_end - self.warmup)


BUDGET_SYMBOLS = {"iters": "MAX_ITERS", "epochs": "NUM_EPOCHS", "tokens": "MAX_TOKENS",
                  "minutes": "MAX_MINUTES"}


def describe(cfg, total_iters) -> str:
    """The budget in words, naming its symbols: BUDGET=epochs, NUM_EPOCHS=2 (10 iterations
    of 65,536 tokens)."""
    symbol = BUDGET_SYMBOLS[cfg.BUDGET]
    value = cfg.get(symbol)
    text = f"BUDGET={cfg.BUDGET}, {symbol}={value:g}" if isinstance(value, float) else \
        f"BUDGET={cfg.BUDGET}, {symbol}={value}"
    if total_iters is not None:
        text += f" ({total_iters:,} iterations of {tokens_per_iter(cfg):,} tokens)"
    factor = extra_budget(cfg)[0]
    return text + (f", bitter2 x{factor:g}" if factor != 1 else "")


def train_tokens(cfg) -> int:
    """Tokens of the training split (writes nothing; counted once per dataset and split,
    however many matrix cells ask)."""
    return data.split_sizes_config(cfg)["train"]


def check_pruning(cfg, total_iters=None):
    """Stop with a ConfigError when the pruning schedule cannot reach its target within the
    budget, or reaches it too late; returns the prune.Plan (None without pruning or for a
    wall-clock budget). Without `total_iters` (a trainer's Budget knows it) it reads the
    dataset's size, for an epochs budget only."""
    if cfg.PRUNING == "none":
        return None
    if total_iters is None:
        tokens = train_tokens(cfg) if cfg.BUDGET == "epochs" else None
        total_iters = Budget(cfg, tokens_per_iter(cfg), tokens).total_iters
    return prune.check_schedule(cfg, total_iters, describe(cfg, total_iters))


def spam_problems(cfg, total_iters) -> list:
    """Why SPAM's momentum reset (steps SPAM_INTERVAL, 2 x SPAM_INTERVAL, ... counted from 1,
    lib/optim/spam.py), its warm-up or its clipping cannot act within the run, each with the
    fix ([] when they can, or without SPAM's resets): a comparison of such a SPAM would be
    one of AdamW plus clipping."""
    if cfg.OPTIMIZER != "adamwspam" or not cfg.SPAM_PERIODIC_RESET:
        return []
    problems = []
    if total_iters is not None and cfg.SPAM_INTERVAL >= total_iters:
        problems.append(f"SPAM_INTERVAL={cfg.SPAM_INTERVAL} with a run of {total_iters} "
                        f"iterations ({describe(cfg, total_iters)}): SPAM's momentum reset "
                        f"never acts before the end; lower SPAM_INTERVAL so that it acts "
                        f"several times, or unset SPAM_PERIODIC_RESET")
    if cfg.SPAM_ENABLE_CLIP and cfg.SPAM_CLIP_DELAY >= cfg.SPAM_INTERVAL:
        problems.append(f"SPAM_CLIP_DELAY={cfg.SPAM_CLIP_DELAY} >= SPAM_INTERVAL="
                        f"{cfg.SPAM_INTERVAL}: with resets, clipping acts only where step "
                        f"mod SPAM_INTERVAL >= SPAM_CLIP_DELAY, so never; lower "
                        f"SPAM_CLIP_DELAY below SPAM_INTERVAL")
    if cfg.SPAM_WARMUP and cfg.SPAM_WARMUP_STEPS >= cfg.SPAM_INTERVAL:
        problems.append(f"SPAM_WARMUP_STEPS={cfg.SPAM_WARMUP_STEPS} >= SPAM_INTERVAL="
                        f"{cfg.SPAM_INTERVAL}: the warm-up after a reset never ends before "
                        f"the next reset; lower SPAM_WARMUP_STEPS below SPAM_INTERVAL")
    return problems


def check_knobs(cfg, total_iters=None):
    """Stop with a ConfigError unless every compared knob can act within the budget: the
    pruning schedule (check_pruning, whose prune.Plan this returns) and SPAM's reset
    (spam_problems). The matrix refuses its cells so; a single run only warns of SPAM's
    (gpt2.train), as it compares nothing and may be a short smoke test."""
    plan = check_pruning(cfg, total_iters)
    if cfg.OPTIMIZER == "adamwspam" and total_iters is None and cfg.BUDGET != "minutes":
        tokens = train_tokens(cfg) if cfg.BUDGET == "epochs" else None
        total_iters = Budget(cfg, tokens_per_iter(cfg), tokens).total_iters
    problems = spam_problems(cfg, total_iters)
    if problems:
        raise ConfigError("\n".join(problems))
    return plan
