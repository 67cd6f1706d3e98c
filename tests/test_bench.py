"""make bench: the real trainer's step under each optimizer, with state sizes and ratios."""
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
