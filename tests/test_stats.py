"""scripts/stats.py against values known independently of it: textbook examples, hand-worked
adjustments and combinatorics."""
import math

import pytest

from scripts import stats

# Student's sleep data (Cushny and Peebles 1905, R's `sleep`): extra hours of sleep of the
# same 10 patients under two drugs. R's t.test(extra ~ group, data = sleep, paired = TRUE):
# t = -4.0621, df = 9, p-value = 0.002833, 95% CI -2.4598858 -0.7001142, mean -1.58.
DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def by_seed(values, first=1):
    return {first + i: v for i, v in enumerate(values)}


def test_paired_t_matches_the_sleep_data_textbook_values():
    r = stats.paired(by_seed(DRUG1), by_seed(DRUG2))
    assert r["test"] == "paired t" and r["n"] == 10 and r["df"] == 9
    assert r["mean_diff"] == pytest.approx(-1.58, abs=1e-12)
    assert r["t"] == pytest.approx(-4.0621, abs=5e-5)
    assert r["p"] == pytest.approx(0.002833, abs=5e-7)
    assert r["ci_low"] == pytest.approx(-2.4598858, abs=5e-8)
    assert r["ci_high"] == pytest.approx(-0.7001142, abs=5e-8)
    # d_z = t / sqrt(n) by definition of both
    assert r["d_z"] == pytest.approx(-4.0621 / math.sqrt(10), abs=5e-5)
    assert not math.isnan(r["p_wilcoxon"])  # n >= 6


def test_pairs_are_matched_by_seed_not_by_position():
    a = {1337: 1.020, 1338: 1.018, 1339: 9.0}
    b = {1338: 1.000, 1337: 1.000}  # another order, and no 1339
    r = stats.paired(a, b)
    assert r["n"] == 2 and r["seeds"] == [1337, 1338]
    assert r["mean_diff"] == pytest.approx(0.019)
    # the same sign twice with a small spread: the paired test sees it (Welch's would not)
    sd = math.sqrt(2) * 0.001  # sd of (0.020, 0.018)
    t = 0.019 / (sd / math.sqrt(2))
    assert r["t"] == pytest.approx(t)
    assert r["p"] == pytest.approx(2 * (1 - (0.5 + math.atan(t) / math.pi)))  # t with df 1
    assert math.isnan(r["p_wilcoxon"])  # fewer than 6 pairs


def test_wilcoxon_where_six_pairs_all_point_one_way():
    # six distinct positive differences: the signed-rank statistic's exact two-sided p is
    # 2 / 2**6 (only the all-positive of the 64 sign patterns is as extreme, on each side)
    a = by_seed([1.1, 2.3, 3.6, 4.4, 5.5, 6.9])
    b = by_seed([1.0, 2.1, 3.3, 4.0, 5.0, 6.3])
    assert stats.paired(a, b)["p_wilcoxon"] == pytest.approx(2 / 64)


def test_identical_differences_and_one_seed_make_no_test():
    same = stats.paired(by_seed([1.5, 2.5, 3.5]), by_seed([1.0, 2.0, 3.0]))
    assert same["test"] == stats.NO_TEST_ZERO_VAR and math.isnan(same["p"])
    assert same["mean_diff"] == pytest.approx(0.5) and same["sd_diff"] == 0.0
    assert stats.mark(math.nan, same["test"]) == stats.NO_TEST_ZERO_VAR
    # equal up to rounding (log(a) - log(b) at different magnitudes) is equal too
    rounded = stats.paired(by_seed([math.log(10.0) + 0.1, math.log(11.0) + 0.1]),
                           by_seed([math.log(10.0), math.log(11.0)]))
    assert rounded["test"] == stats.NO_TEST_ZERO_VAR
    one = stats.paired({1: 3.0}, {1: 2.0})
    assert one["test"] == "n=1: no test" and math.isnan(one["p"]) and one["n"] == 1
    assert stats.mark(math.nan, one["test"]) == "n=1: no test"
    assert stats.paired({1: 3.0}, {2: 2.0})["n"] == 0


def test_holm_on_a_hand_worked_family():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = stats.holm([0.5, math.nan, 0.02])  # a family of two: NaN is not a test
    assert adjusted[0] == pytest.approx(0.5) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert [stats.mark(p, "t") for p in (0.009, 0.02, 0.2)] == ["**", "*", "ns"]


def test_time_to_target_is_the_first_evaluation_at_or_below_it():
    evals = [{"iter": 30, "tokens": 300, "elapsed_s": 13.0, "val_loss": 2.0},
             {"iter": 10, "tokens": 100, "elapsed_s": 11.0, "val_loss": 3.0},
             {"iter": 20, "tokens": 200, "elapsed_s": 12.0, "val_loss": 2.5},
             {"iter": 40, "tokens": 400, "elapsed_s": 14.0, "val_loss": 1.5}]
    assert stats.time_to_target(evals, 2.0, compile_s=10.0) == {"iter": 30, "tokens": 300,
                                                                "seconds": 3.0}
    assert stats.time_to_target(evals, 2.7)["iter"] == 20
    assert stats.time_to_target(evals, 1.0) is None
    nan = [{"iter": 10, "tokens": 1, "elapsed_s": 1.0, "val_loss": float("nan")}]
    assert stats.time_to_target(nan, 5.0) is None


def test_ratio_interval_and_decision():
    r = stats.ratio(by_seed([2.0, 2.0, 2.0]), by_seed([1.0, 1.0, 1.0]))
    assert r["ratio"] == pytest.approx(2.0) and r["decision"] == "above 1"
    mixed = stats.ratio(by_seed([1.1, 0.9, 1.0]), by_seed([1.0, 1.0, 1.0]))
    # log ratios +-0.0953, -0.1054, 0: their t interval spans 0, so the ratio's spans 1
    assert mixed["ci_low"] < 1 < mixed["ci_high"] and mixed["decision"] == stats.NO_DIFFERENCE
    assert mixed["low"] == pytest.approx(0.9) and mixed["high"] == pytest.approx(1.1)
    assert mixed["ratio"] == pytest.approx((1.1 * 0.9) ** (1 / 3))
    assert stats.ratio({1: 2.0}, {1: 1.0})["decision"] == stats.NO_INTERVAL_N1


def test_median_and_range():
    m = stats.median_spread([3.0, 1.0, 2.0, 10.0, float("nan")])
    assert (m["n"], m["median"], m["low"], m["high"], m["spread"]) == (4, 2.5, 1.0, 10.0,
                                                                       "range")


def test_performance_profile_on_a_hand_worked_pair_of_workloads():
    times = {"w1": {"A": 10.0, "B": 20.0, "C": math.inf},
             "w2": {"A": 30.0, "B": 15.0, "C": 45.0}}
    profile = stats.performance_profile(times, [1.0, 1.5, 2.0, 3.0])
    assert profile["A"] == [0.5, 0.5, 1.0, 1.0]
    assert profile["B"] == [0.5, 0.5, 1.0, 1.0]
    assert profile["C"] == [0.0, 0.0, 0.0, 0.5]  # never reached on w1; 3x the best on w2
