"""make bench: the real trainer's step under each optimizer, with state sizes and ratios."""
import pytest

from scripts import bench


def test_bench_measures_each_optimizer_on_the_real_trainer(tiny_config, capsys):
    config = tiny_config()
    rows = bench.bench(str(config), [], ["adamw/foreach", "adamw", "lion", "sgd"], warmup=1,
                       steps=2)
    by_name = {r["optimizer"]: r for r in rows}
    assert list(by_name) == ["adamw/foreach", "adamw", "lion", "sgd"]
    assert all(r["ms_per_step"] > 0 and r["peak_cuda_bytes"] is None for r in rows)
    assert all(0 < r["optimizer_ms"] < r["ms_per_step"] for r in rows)
    # tiny config: 8 sequences x 32 tokens per step
    assert all(abs(r["tokens_per_s"] * r["ms_per_step"] / 1e3 - 256) < 1e-6 for r in rows)
    # Lion keeps one moment, AdamW two (plus a step counter per tensor): about half
    assert 0.45 < by_name["lion"]["state_bytes"] / by_name["adamw"]["state_bytes"] < 0.55
    assert by_name["sgd"]["state_bytes"] == by_name["lion"]["state_bytes"]  # one momentum buffer
    bench.print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "baseline: adamw/foreach"
    base_line = next(line for line in lines if line.startswith("adamw/foreach"))
    assert base_line.split()[3] == "1.00" and base_line.split()[5] == "1.00"


def test_variant_selects_the_implementation():
    assert bench.variant_overrides("adamw/foreach") == ["OPTIMIZER=adamw", "OPTIMIZER_IMPL=foreach"]
    assert bench.variant_overrides("lion") == ["OPTIMIZER=lion"]


def _tiny_list(tmp_path, results):
    from tests.conftest import tiny_overrides
    listing = tmp_path / "list"
    listing.mkdir()
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


def test_suite_writes_its_tables_on_cpu(tiny_config, tmp_path, capsys):
    config = tiny_config()
    results = tmp_path / "results"
    out = bench.suite(str(config), [], str(_tiny_list(tmp_path, results)))
    assert out.parent == results / "bench" and out.name.endswith("-cpu")
    import csv
    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert [r["name"] for r in rows] == ["00-memmap", "01-broken"]
    ok = rows[:1]
    for r in ok:
        assert float(r["ms_per_iter"]) > 0 and r["mfu"] == "" and r["device"] == "cpu"
        assert float(r["tokens_per_s"]) == pytest.approx(256 / float(r["ms_per_iter"]) * 1e3)
        assert int(r["peak_mem_bytes"]) > 0 and r["peak_mem_kind"] == "cpu_peak_rss"
    assert float(ok[0]["speed_vs_first"]) == 1.0
    assert "ATTENTION_BACKEND_MEMORY_EFFICIENT" in rows[1]["error"]
    md = (out / "bench.md").read_text()
    assert "| 00-memmap |" in md and "n/a" in md and "failed:" in md
    # the current .config, compared with the run above
    again = bench.suite(str(config), [], "current", str(out))
    md = (again / "bench.md").read_text()
    assert "| current |" in md and "then tokens/s" in md
    # a row of the earlier run is matched by name
    row = {"name": "00-memmap", "description": "", "ms_per_iter": 10.0, "tokens_per_s": 2000.0,
           "mfu": None, "peak_mem_bytes": 2**20, "speed_vs_first": 1.0}
    line = next(l for l in bench.markdown([row], "cpu", "now", {"00-memmap": {
        "tokens_per_s": "1600"}}).splitlines() if l.startswith("| 00-memmap"))
    assert line.endswith("| 1,600 | +25.0% |")
    assert bench.main([str(config), "--list", "nowhere"]) == 2


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
    assert rows[1]["speed_vs_first"] == 2.0


def test_shipped_lists_are_valid_configurations():
    from lib import config as cfglib
    for name in ("cpu", "gpu"):
        for row, _, overrides in bench.list_configs(bench.LISTS_DIR / name, "results"):
            kconf = cfglib.load_kconf(cfglib.ROOT / "defconfigs" / "default", overrides)
            assert kconf is not None, row
