"""LR_SCHEDULE shapes at their key iterations."""
import math

import pytest

from lib.schedule import learning_rate

PEAK, MIN = 1.0, 0.1


def lr(it, total, schedule, warmup=10, **options):
    progress = (it - warmup) / (total - warmup)
    return learning_rate(it, progress, schedule=schedule, lr=PEAK, min_lr=MIN,
                         warmup_iters=warmup, **options)


@pytest.mark.parametrize("schedule", ["cosine", "constant", "wsd"])
def test_warmup_is_linear_to_the_peak(schedule):
    assert lr(0, 110, schedule) == pytest.approx(PEAK / 11)
    assert lr(4, 110, schedule) == pytest.approx(PEAK * 5 / 11)
    assert lr(10, 110, schedule) == pytest.approx(PEAK)


def test_cosine_key_points():
    assert lr(60, 110, "cosine") == pytest.approx(MIN + 0.5 * (PEAK - MIN))
    assert lr(110, 110, "cosine") == pytest.approx(MIN)
    assert lr(500, 110, "cosine") == pytest.approx(MIN)  # after the decay


def test_constant_stays_at_the_peak():
    assert lr(60, 110, "constant") == lr(110, 110, "constant") == PEAK


@pytest.mark.parametrize("shape, at_half", [
    ("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))])
def test_wsd_is_stable_then_decays_in_its_shape(shape, at_half):
    options = {"decay_fraction": 0.2, "decay_shape": shape}
    # 100 iterations after warm-up: stable to progress 0.8 (iteration 90), decay to 110
    assert lr(50, 110, "wsd", **options) == PEAK
    assert lr(90, 110, "wsd", **options) == PEAK
    assert lr(100, 110, "wsd", **options) == pytest.approx(MIN + at_half * (PEAK - MIN))
    assert lr(110, 110, "wsd", **options) == pytest.approx(MIN)
    assert lr(200, 110, "wsd", **options) == pytest.approx(MIN)
    assert lr(95, 110, "wsd", **options) > lr(100, 110, "wsd", **options) > lr(105, 110, "wsd",
                                                                                **options)
