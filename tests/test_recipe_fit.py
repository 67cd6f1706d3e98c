"""The note for GPU knobs on the CPU: who set them, and figures that carry information."""
import re

import torch

from lib import config as cfglib
from lib import recipe_fit

CPU = torch.device("cpu")


def note(*overrides, recipe="default", **kw):
    cfg = cfglib.load(cfglib.ROOT / "defconfigs" / recipe, overrides)
    return recipe_fit.gpu_recipe_on_cpu(cfg, CPU, **kw)


def test_a_knob_the_user_set_is_not_blamed_on_the_recipe():
    text = note("COMPILE=y", params=800_000, tokens_per_iter=768, total_iters=600,
                flops_per_s=100e9)
    assert "recipe default (" not in text and "sets COMPILE=y" in text
    assert "an edit of" in text and "defconfigs/default has COMPILE=n" in text
    recipe = note(recipe="gpt2-shakespeare-l4", params=1, tokens_per_iter=1, total_iters=1,
                  flops_per_s=1e9)
    assert "recipe gpt2-shakespeare-l4 (" in recipe and "sets PRECISION=bf16, COMPILE=y" in recipe
    assert "an edit of" not in recipe
    mixed = note("PRECISION=fp16", recipe="gpt2-shakespeare-l4", params=1, tokens_per_iter=1,
                 total_iters=1, flops_per_s=1e9)
    assert "sets COMPILE=y and an edit of" in mixed and "PRECISION=fp16" in mixed
    assert "defconfigs/gpt2-shakespeare-l4 has PRECISION=bf16" in mixed


def test_figures_carry_information_or_are_left_out():
    # 6 N T / rate: 6 * 800e3 * 768 / 100e9 = 36.9 ms a step, 22.1 s for 600
    text = note("COMPILE=y", params=800_000, tokens_per_iter=768, total_iters=600,
                flops_per_s=100e9)
    assert "37 ms per iteration" in text and "22.1 s for its 600 iterations" in text
    assert not re.search(r"\b0\.0 ", text)
    # under a millisecond a step: no figure at all, rather than "0.0 s"
    tiny = note("COMPILE=y", params=1_000, tokens_per_iter=10, total_iters=600,
                flops_per_s=100e9)
    assert "per iteration" not in tiny and "compiling takes minutes" in tiny
    assert recipe_fit.duration(5400) == "1.5 h" and recipe_fit.duration(90) == "1.5 min"


def test_a_recipe_without_a_defconfig_is_not_guessed_at():
    text = note("COMPILE=y", "RECIPE=mine", params=1, tokens_per_iter=1, total_iters=1,
                flops_per_s=1e9)
    assert "sets COMPILE=y (RECIPE mine has no defconfigs/mine to compare with)" in text
    assert "an edit of" not in text
