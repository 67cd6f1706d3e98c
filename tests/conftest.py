import math
import os
import time

import pytest

from lib import config as cfglib
from lib import optim

# A GPT small enough to train in seconds on 2 CPU cores.
TINY = ["MODEL_SIZE=custom", "N_LAYER=2", "N_HEAD=2", "N_EMBD=32", "BLOCK_SIZE=32",
        "BATCH_SIZE=8", "EVAL_ITERS=2", "LOG_INTERVAL=5", "WARMUP_ITERS=5",
        "SAMPLE_LENGTH=20", "DEVICE=cpu",
        # a test split of 2,231 characters: its one evaluation reads 69 windows, not 1,742
        "TEST_FRACTION=0.002"]
# The tiny model's learning rate for the Adam family, unless a test sets its own.
TINY_ADAM_LR = "3e-3"
# SPAM's default (fused) implementation compiles its kernels in every new process, seconds
# that tiny runs would spend many times over: they take foreach unless a test says otherwise.
# tests/test_spam.py and test_optim.py's fused run cover the fused kernels.
TINY_SPAM_IMPL = "OPTIMIZER_IMPL=foreach"


def tiny_overrides(*extra) -> list:
    """TINY + extra, plus the Adam-family optimizer's LR at TINY_ADAM_LR when extra sets none."""
    overrides = [*TINY, *extra]
    kconf = cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default", overrides)
    name = cfglib.typed_values(kconf)["OPTIMIZER"]
    symbol = optim.OPTIMIZERS[name].lr
    if name in ("adam", "adamw", "adamw-8bit", "adamwspam") and not any(
            o.startswith(f"{symbol}=") for o in extra):
        overrides.append(f"{symbol}={TINY_ADAM_LR}")
    if name == "adamwspam" and not any(o.startswith("OPTIMIZER_IMPL=") for o in extra):
        overrides.append(TINY_SPAM_IMPL)
    return overrides


def write_tiny_config(path, *extra):
    """A tiny .config (defaults + TINY + extra) at `path`, its results beside it."""
    kconf = cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default",
                              tiny_overrides(f"RESULTS_DIR={path.parent / 'results'}", *extra))
    cfglib.write_config(kconf, path)
    return path


@pytest.fixture
def tiny_config(tmp_path):
    """Write a tiny .config (defaults + TINY + extra) into tmp_path; results go there too."""
    def make(*extra, name="config"):
        return write_tiny_config(tmp_path / name, *extra)
    return make


# One generous limit for every wait on an event (a file, a log line, a process exit) in
# the tests that run real processes: reaching it means stuck, not slow, even on a machine
# running several suites at once. No test asserts on wall-clock time. KMATRIX_TEST_TIMEOUT_S
# (seconds) overrides it, e.g. on a machine slower still.
EVENT_LIMIT_ENV = "KMATRIX_TEST_TIMEOUT_S"


def _event_limit_s(default: float = 900.0) -> float:
    value = os.environ.get(EVENT_LIMIT_ENV, "").strip()
    if not value:
        return default
    try:
        limit = float(value)
    except ValueError:
        limit = math.nan
    if not limit > 0:
        raise pytest.UsageError(f"{EVENT_LIMIT_ENV}={value!r} is not a positive number of "
                                f"seconds; set it to one (e.g. 1800) or unset it")
    return limit


EVENT_LIMIT_S = _event_limit_s()


def wait_for(ready, what: str, every_s: float = 0.05):
    """Poll ready() until it returns something true, and return that; fail naming `what`
    after EVENT_LIMIT_S (stuck, not slow)."""
    end = time.monotonic() + EVENT_LIMIT_S
    while True:
        got = ready()
        if got:
            return got
        assert time.monotonic() < end, f"gave up waiting {EVENT_LIMIT_S:g} s for {what}"
        time.sleep(every_s)
