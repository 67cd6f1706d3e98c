"""make bench: the interleaved rounds, the warm-up kept apart, the verdicts on synthetic
times with known answers (nothing here asserts on a real timing), and the real trainer
behind each figure."""
import csv
import itertools
import statistics

import pytest
import scipy.stats

from scripts import bench, bench_stats
from tests import md_cells


class FakeClock:
    """time.perf_counter for code under test: advanced by the fake work, never by the host."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


# ------------------------------------------------------------------ bench_stats

def test_rounds_run_interleaved_and_a_failed_configuration_is_not_retried():
    calls = []

    def run(name):
        calls.append(name)
        return {"error": "no kernel"} if name == "B" else {"ms_per_iter": 1.0}

    results = bench_stats.run_interleaved(["A", "B", "C"], 3, run)
    assert calls == ["A", "B", "C", "A", "C", "A", "C"]
    assert [len(results[n]) for n in "ABC"] == [3, 1, 3]
    assert bench_stats.interleaved(["A", "B"], 2) == [(0, "A"), (0, "B"), (1, "A"), (1, "B")]


def test_median_and_spread_of_known_values():
    got = bench_stats.spread([4.0, 1.0, 3.0, 2.0])
    assert got == {"median": 2.5, "min": 1.0, "max": 4.0}


@pytest.mark.parametrize("n", [3, 4, 5, 8, 12, 20])
def test_median_interval_is_the_order_statistic_interval(n):
    values = list(scipy.stats.norm.rvs(size=n, random_state=n))
    lo, hi, coverage = bench_stats.median_interval(values, 0.9)
    k = sorted(values).index(lo) + 1  # lo is the k-th smallest, hi the k-th largest
    assert hi == sorted(values)[n - k]
    # the coverage of [x_(k), x_(n+1-k)] for the median: 1 - 2 P(Bin(n, 1/2) <= k - 1)
    assert coverage == pytest.approx(1 - 2 * scipy.stats.binom.cdf(k - 1, n, 0.5))
    if n < 5:  # not even [min, max] reaches 90%: its coverage is 1 - 2^(1-n)
        assert (lo, hi) == (min(values), max(values))
        assert coverage == pytest.approx(1 - 2 ** (1 - n))
    else:  # the sign test's interval, as scipy computes it
        ci = scipy.stats.quantile_test(values, q=0, p=0.5).confidence_interval(0.9)
        assert (lo, hi) == (ci.low, ci.high)
        assert coverage >= 0.9


def test_verdict_says_no_difference_when_the_interval_holds_one():
    assert bench_stats.verdict(0.95, 1.10) == bench_stats.NO_DIFFERENCE
    assert bench_stats.verdict(1.02, 1.10) == "faster"
    assert bench_stats.verdict(0.70, 0.99) == "slower"


def test_warmup_is_split_off_the_steady_steps():
    steady, compile_s = bench_stats.split_warmup([5.0, 1.2, 1.0, 1.1, 0.9, 1.0], 2)
    assert steady == [1.0, 1.1, 0.9, 1.0]
    assert compile_s == pytest.approx(5.0 + 1.2 - 2 * 1.0)  # beyond two steady (median) steps
    with pytest.raises(ValueError, match="no steady step"):
        bench_stats.split_warmup([5.0, 1.0], 2)


# ------------------------------------------------------------------ rows from rounds

def _rounds(ms, compile_s=(1.0, 1.0, 1.0)):
    return [{"ms_per_iter": m, "compile_s": c, "peak_mem_bytes": 2**20, "peak_mem_kind": "x",
             "tokens_per_iter": 256, "flops_per_token": 1, "device": "cpu",
             "config_hash": "h"} for m, c in zip(ms, compile_s)]


def test_speed_is_paired_by_round():
    # The machine slowed down in round 2 for everyone: unpaired, B's range (11-22 ms)
    # overlaps A's (10-20 ms); paired by round, B is 10% slower in every round.
    rows = [bench.combine_rounds("A", "", _rounds([10.0, 20.0, 10.0])),
            bench.combine_rounds("B", "", _rounds([11.0, 22.0, 11.0])),
            bench.combine_rounds("C", "", _rounds([10.5, 19.0, 9.8])),
            bench.combine_rounds("D", "", [{"error": "boom"}])]
    bench.with_speed(rows)
    a, b, c, d = rows
    assert (a["ms_per_iter"], a["ms_min"], a["ms_max"], a["rounds"]) == (10.0, 10.0, 20.0, 3)
    assert a["tokens_per_s"] == pytest.approx(256 / 0.010)
    assert a["verdict"] == "baseline" and a["speed_vs_first"] == 1.0
    assert b["speed_vs_first"] == pytest.approx(10 / 11) and b["verdict"] == "slower"
    assert (b["speed_lo"], b["speed_hi"]) == pytest.approx((10 / 11, 10 / 11))
    assert b["speed_coverage"] == pytest.approx(0.75)
    # C: 0.95x, 1.05x, 1.02x of A: the interval holds 1
    assert c["verdict"] == bench_stats.NO_DIFFERENCE
    assert c["speed_vs_first"] == pytest.approx(statistics.median([10 / 10.5, 20 / 19, 10 / 9.8]))
    assert d["error"] == "boom" and "verdict" not in d


def test_compile_time_never_enters_the_step_time():
    # the same steady steps, one round with a cold compile cache (30 s), two warm (2 s)
    row = bench.combine_rounds("A", "", _rounds([10.0, 10.2, 9.9], compile_s=(30.0, 2.0, 2.5)))
    assert row["ms_per_iter"] == 10.0 and row["compile_s"] == 2.5


def test_measure_times_every_step_and_reports_warmup_apart(tiny_config, monkeypatch):
    """measure() on a fake trainer whose steps advance a fake clock: 4 s for the first
    (compiling), 0.5 s for the second, 0.1 s after."""
    from lib import config as cfglib
    clock = FakeClock()
    costs = itertools.chain([4.0, 0.5], itertools.repeat(0.1))

    class FakeTrainer:
        def __init__(self, cfg, run_dir, log):
            import torch
            self.device, self.log, self.tokens_per_iter = torch.device("cpu"), log, 256
            self.model = type("M", (), {"flops_per_token": lambda self: 1})()
            self.steps = 0

        def train_step(self):
            self.steps += 1
            clock.now += next(costs)

    monkeypatch.setattr(bench, "Trainer", FakeTrainer)
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    cfg = cfglib.load(tiny_config(), ["BENCH_WARMUP_ITERS=2", "BENCH_TIMED_ITERS=5"])
    got = bench.measure(cfg)
    assert got["ms_per_iter"] == pytest.approx(100.0)
    assert got["compile_s"] == pytest.approx(4.0 + 0.5 - 2 * 0.1)


# ------------------------------------------------------------------ the suite

def test_suite_interleaves_its_rows_and_writes_the_verdicts(tiny_config, tmp_path, monkeypatch):
    """The suite with each row's process replaced by synthetic rounds (a row is known by
    the SEED its fragment sets): the order of the runs and the table's figures are known."""
    listing = _tiny_list(tmp_path, tmp_path / "results")
    (listing / "00-memmap").write_text("# memmap batches\nCONFIG_SEED=100\n")
    (listing / "02-slow").write_text("# the same, slower\nCONFIG_SEED=200\n")
    names = {"SEED=100": "00-memmap", "SEED=200": "02-slow"}
    ms_of = {"00-memmap": iter([10.0, 12.0, 11.0]), "02-slow": iter([13.0, 15.6, 14.3])}
    calls = []

    def fake_row(base, overrides):
        name = next((names[o] for o in overrides if o in names), "01-broken")
        calls.append(name)
        if name == "01-broken":
            return {"error": "CONFIG_ATTENTION_BACKEND_MEMORY_EFFICIENT=y: not on the CPU"}
        return _rounds([next(ms_of[name])])[0]

    monkeypatch.setattr(bench, "run_row", fake_row)
    out = bench.suite(str(tiny_config()), [], str(listing), rounds=3)
    assert calls == ["00-memmap", "01-broken", "02-slow", "00-memmap", "02-slow",
                     "00-memmap", "02-slow"]
    rows = {r["name"]: r for r in csv.DictReader(open(out / "bench.csv"))}
    slow = rows["02-slow"]
    assert float(slow["speed_vs_first"]) == pytest.approx(1 / 1.3)
    assert slow["verdict"] == "slower" and slow["round_ms"] == "13 15.6 14.3"
    assert (float(slow["ms_min"]), float(slow["ms_max"])) == (13.0, 15.6)
    assert float(slow["tokens_per_s"]) == pytest.approx(256 / 0.0143)
    assert "ATTENTION_BACKEND_MEMORY_EFFICIENT" in rows["01-broken"]["error"]
    md = (out / "bench.md").read_text()
    assert "3 interleaved rounds" in md
    assert md_cells.row(md, "02-slow")[:4] == ["02-slow", "14.30", "13.00-15.60", "17,902"]
    assert md_cells.row(md, "02-slow")[-1] == "slower"


def _tiny_list(tmp_path, results):
    from tests.conftest import tiny_overrides
    listing = tmp_path / "list"
    listing.mkdir(exist_ok=True)
    lines = []
    for o in [*tiny_overrides(), f"RESULTS_DIR={results}", "BENCH_WARMUP_ITERS=1",
              "BENCH_TIMED_ITERS=3"]:
        name, _, value = o.partition("=")
        if name in ("MODEL_SIZE", "DEVICE"):
            lines.append(f"CONFIG_{name}_{value.upper()}=y")
        else:
            lines.append(f'CONFIG_{name}="{value}"' if not value.isdigit() else
                         f"CONFIG_{name}={value}")
    (listing / "_base").write_text("# tiny\n" + "\n".join(lines) + "\n")
    (listing / "00-memmap").write_text("# memmap batches\n")
    (listing / "01-broken").write_text("# not available on the CPU\n"
                                       "CONFIG_ATTENTION_BACKEND_MEMORY_EFFICIENT=y\n")
    return listing


def test_suite_runs_the_real_trainer_on_cpu(tiny_config, tmp_path):
    config = tiny_config()
    results = tmp_path / "results"
    out = bench.suite(str(config), [], str(_tiny_list(tmp_path, results)), rounds=2)
    assert out.parent == results / "bench" and out.name.endswith("-cpu")
    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert [r["name"] for r in rows] == ["00-memmap", "01-broken"]
    ok = rows[0]
    assert ok["rounds"] == "2" and len(ok["round_ms"].split()) == 2
    assert ok["mfu"] == "" and ok["device"] == "cpu" and ok["verdict"] == "baseline"
    assert int(ok["tokens_per_iter"]) == 8 * 32  # BATCH_SIZE x BLOCK_SIZE of the tiny model
    assert int(ok["peak_mem_bytes"]) > 0 and ok["peak_mem_kind"] == "cpu_peak_rss"
    assert "ATTENTION_BACKEND_MEMORY_EFFICIENT" in rows[1]["error"]
    md = (out / "bench.md").read_text()
    assert md_cells.row(md, "00-memmap")[4] == "n/a"  # MFU: the CPU is in no peak table
    assert md_cells.row(md, "01-broken")[1].startswith("failed:")
    # the current .config, compared with the run above
    again = bench.suite(str(config), [], "current", str(out), rounds=2)
    md = (again / "bench.md").read_text()
    assert md_cells.row(md, "current") and "then tokens/s" in md_cells.row(md, "configuration")
    assert bench.main([str(config), "--list", "nowhere"]) == 2


def test_compare_matches_an_earlier_row_by_name():
    line = {"name": "00-memmap", "description": "", "rounds": 3, "ms_per_iter": 10.0,
           "ms_min": 9.0, "ms_max": 11.0, "tokens_per_s": 2000.0, "mfu": None,
           "peak_mem_bytes": 2**20, "compile_s": 1.0, "speed_vs_first": 1.0, "speed_lo": 1.0,
           "speed_hi": 1.0, "speed_coverage": 0.75, "verdict": "baseline"}
    md = bench.markdown([line], "cpu", "now", {"00-memmap": {"tokens_per_s": "1600"}})
    assert md_cells.row(md, "00-memmap")[-2:] == ["1,600", "+25.0%"]


def test_rounds_option_needs_two_rounds(capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--rounds", "1"])
    assert stop.value.code == 2 and "--rounds" in capsys.readouterr().err


def test_mfu_uses_the_device_peak_and_is_na_elsewhere():
    rows = [{"name": "a", "tokens_per_s": 1e5, "flops_per_token": 1e9,
             "device": "NVIDIA H100 80GB HBM3"},
            {"name": "b", "tokens_per_s": 2e5, "flops_per_token": 1e9,
             "device": "NVIDIA H100 PCIe"},
            {"name": "c", "tokens_per_s": 1e3, "flops_per_token": 1e9, "device": "cpu"},
            {"name": "d", "tokens_per_s": 1e3, "flops_per_token": 1e9, "device": "Mystery GPU"}]
    bench.with_mfu(rows, {"a": ("bf16", True), "b": ("fp32", True), "c": ("fp32", True),
                          "d": ("bf16", True)})
    assert rows[0]["mfu"] == pytest.approx(1e14 / 989.5e12)
    assert rows[1]["mfu"] == pytest.approx(2e14 / 378e12)  # TF32 peak of the PCIe card
    assert rows[2]["mfu"] is None and rows[3]["mfu"] is None


def test_shipped_lists_are_valid_configurations():
    from lib import config as cfglib
    for name in ("cpu", "gpu"):
        for row, _, overrides in bench.list_configs(bench.LISTS_DIR / name, "results"):
            kconf = cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default", overrides)
            assert kconf is not None, row


# ------------------------------------------------------------------ --optimizers

def test_timed_leaves_the_warmup_out(monkeypatch):
    clock, costs = FakeClock(), iter([9.0, 9.0, 1.0, 2.0, 3.0])

    def work():
        clock.now += next(costs)
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    assert bench._timed(work, bench.torch.device("cpu"), warmup=2, steps=3) == pytest.approx(2.0)


def test_bench_times_each_optimizer_on_the_real_trainer(tiny_config):
    config = tiny_config()
    rows = bench.bench(str(config), [], ["adamw/foreach", "adamw", "lion", "sgd"], warmup=1,
                       steps=2)
    by_name = {r["optimizer"]: r for r in rows}
    assert list(by_name) == ["adamw/foreach", "adamw", "lion", "sgd"]
    assert all(r["peak_cuda_bytes"] is None for r in rows)
    # Lion keeps one moment, AdamW two (plus a step counter per tensor): about half
    assert 0.45 < by_name["lion"]["state_bytes"] / by_name["adamw"]["state_bytes"] < 0.55
    assert by_name["sgd"]["state_bytes"] == by_name["lion"]["state_bytes"]  # one momentum buffer


def test_the_optimizer_timing_steps_the_optimizer(tiny_config):
    """What --optimizers times as the optimizer step is the optimizer's step: AdamW's step
    counter advances once per call, warm-up included, and the weights move."""
    import logging
    import tempfile

    from gpt2.train import Trainer
    from lib import config as cfglib
    from lib.run import RunDir
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfglib.load(tiny_config()), RunDir(tmp), logging.getLogger("t"))
        trainer.forward = trainer.model
        weight = trainer.model.transformer.h[0].mlp.c_fc.weight
        before = weight.detach().clone()
        bench.time_optimizer_step(trainer, warmup=1, steps=2)
        assert int(trainer.optimizer.state[weight]["step"]) == 3
        assert not bench.torch.equal(weight, before)


def test_variant_selects_the_implementation():
    assert bench.variant_overrides("adamw/foreach") == ["OPTIMIZER=adamw", "OPTIMIZER_IMPL=foreach"]
    assert bench.variant_overrides("lion") == ["OPTIMIZER=lion"]


def test_optimizer_table_reports_ratios_to_the_baseline(capsys):
    rows = [{"optimizer": "lion", "ms_per_step": 30.0, "optimizer_ms": 3.0,
             "tokens_per_s": 1.0, "state_bytes": 2**20, "peak_cuda_bytes": None},
            {"optimizer": "adamw/foreach", "ms_per_step": 20.0, "optimizer_ms": 4.0,
             "tokens_per_s": 1.0, "state_bytes": 2**21, "peak_cuda_bytes": None}]
    bench.print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "baseline: adamw/foreach"
    lion = next(line for line in lines if line.startswith("lion")).split()
    assert (lion[3], lion[5], lion[7]) == ("1.50", "0.75", "0.50")
