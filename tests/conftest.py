import pytest

from lib import config as cfglib

# A GPT small enough to train in seconds on 2 CPU cores.
TINY = ["MODEL_SIZE=custom", "N_LAYER=2", "N_HEAD=2", "N_EMBD=32", "BLOCK_SIZE=32",
        "BATCH_SIZE=8", "EVAL_ITERS=2", "LOG_INTERVAL=5", "WARMUP_ITERS=5",
        "LEARNING_RATE=3e-3", "MIN_LR=3e-4", "SAMPLE_LENGTH=20", "DEVICE=cpu"]


@pytest.fixture
def tiny_config(tmp_path):
    """Write a tiny .config (defaults + TINY + extra) into tmp_path; results go there too."""
    def make(*extra, name="config"):
        kconf = cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default",
                                  TINY + [f"RESULTS_DIR={tmp_path / 'results'}", *extra])
        path = tmp_path / name
        cfglib.write_config(kconf, path)
        return path
    return make
