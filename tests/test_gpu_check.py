"""make gpu-check's frame on the CPU: the no-CUDA line, row selection, the report writer.
Its rows need CUDA and cannot run here."""
import json
import subprocess
import sys

import pytest
import torch

from lib import config as cfglib
from scripts import gpu_check, gpu_check_rows
from scripts.gpu_check import Row
from tests import md_cells


def test_make_gpu_check_without_cuda_is_one_line_and_exit_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: make gpu-check would run the rows")
    done = subprocess.run(["make", "--no-print-directory", "-C", str(cfglib.ROOT), "INSTALL=",
                           f"PY={sys.executable}", f"KCONFIG_CONFIG={tmp_path / '.config'}",
                           "gpu-check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = [line for line in done.stdout.splitlines() if not line.startswith(sys.executable)]
    assert printed == [gpu_check.NO_CUDA]


def test_no_cuda_runs_no_row(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "registry", lambda: {"a": lambda w: ran.append(w)})
    assert gpu_check.main([]) == 0
    assert ran == [] and capsys.readouterr().out.strip() == gpu_check.NO_CUDA


def test_list_names_every_registered_row(capsys):
    assert gpu_check.main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    assert names == list(gpu_check.registry())
    for needed in ("train-fp32", "train-bf16", "train-fp16", "fp16-overflow-skipped",
                   "compile-vs-eager", "attention-backends", "optimizer-adamw-8bit-paged",
                   "optimizer-adamwspam-fused", "prune-state-bitter2", "peak-memory-vs-estimate",
                   "mfu-gpt2-124m", "ddp-nccl"):
        assert needed in names


def test_bad_row_name_is_one_line_and_exit_2(capsys):
    assert gpu_check.main(["--rows", "train-fp32,trian-bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rows" in err[0] and "'trian-bf16'" in err[0]


def test_rows_picks_rows_in_order_and_writes_the_report(monkeypatch, tmp_path, capsys):
    def boom(workdir):
        raise RuntimeError("trainer exit 3\nmore")
    rows = {"a": lambda w: Row("a", True, "loss 3 -> 2"), "b": boom,
            "c": lambda w: Row("c", True, "unused")}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "registry", lambda: rows)
    monkeypatch.setattr(gpu_check, "device_facts", lambda: {
        "device": "Fake GPU", "driver": "555.1", "cuda": "12.4", "torch": "2.x", "gpus": 1})
    report = tmp_path / "r" / "report.md"
    assert gpu_check.main(["--rows", "b,a", "--report", str(report)]) == 1  # b failed
    text = report.read_text()
    assert "- device: Fake GPU (x1)" in text and "- driver: 555.1" in text
    assert "- CUDA: 12.4" in text and "- passed: 1 of 2" in text
    assert md_cells.table_rows(text)[1:] == [["b", "FAIL", "error: RuntimeError: trainer exit 3"],
                                             ["a", "pass", "loss 3 -> 2"]]
    assert "unused" not in text


def test_report_escapes_pipes_and_counts_passes():
    facts = {"device": "d", "driver": "v", "cuda": "c", "torch": "t", "gpus": 2}
    text = gpu_check.format_report(facts, [Row("x", True, "a|b"), Row("y", False, "f")])
    assert md_cells.table_rows(text)[1:] == [["x", "pass", "a|b"], ["y", "FAIL", "f"]]
    assert "a\\|b" in text  # escaped, so the row keeps its three cells
    assert "- passed: 1 of 2" in text and "(x2)" in text


@pytest.mark.parametrize("overrides", gpu_check_rows.OVERRIDE_SETS)
def test_every_rows_overrides_make_a_valid_config(tmp_path, overrides):
    """Each row's settings take (strictly) and read back as set: no typo waits for a GPU."""
    config = gpu_check_rows.write_config(tmp_path, overrides)
    cfg = cfglib.load(config)
    for setting in overrides:
        name, value = setting.split("=", 1)
        if value in ("y", "n") or value.replace(".", "").isdigit():
            continue
        assert str(getattr(cfg, name)).lower().replace("_", "-") == value.lower().replace("_", "-"), setting


@pytest.fixture
def rows_on_the_cpu(monkeypatch):
    """The rows' own code with SMALL shrunk to the tiny CPU model (the rows say DEVICE=cuda)."""
    from conftest import TINY
    monkeypatch.setattr(gpu_check_rows, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check_rows, "SMALL", [*TINY, "MAX_ITERS=30", "EVAL_INTERVAL=30",
                                                  "SAMPLE_AFTER_TRAINING=n"])
    return gpu_check_rows.ROWS


@pytest.mark.parametrize("name", ["train-fp16", "fp16-overflow-skipped", "optimizer-adamw-8bit",
                                  "prune-state-bitter2"])
def test_rows_run_through_the_trainer_on_a_tiny_cpu_model(rows_on_the_cpu, tmp_path, name):
    row = gpu_check.run_row(name, rows_on_the_cpu[name], tmp_path)
    assert row.ok and row.name == name, row
    if name == "fp16-overflow-skipped":
        assert row.figure == "step skipped: True; scale 65536 -> 32768"
    if name.startswith("prune"):
        assert row.figure.startswith("sparsity 0.50")


def test_a_row_whose_trainer_fails_is_a_failed_row_with_the_reason(rows_on_the_cpu, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(gpu_check_rows, "SMALL", [*gpu_check_rows.SMALL, "MAX_ITERS=3"])
    row = gpu_check.run_row("prune-magnitude", rows_on_the_cpu["prune-magnitude"], tmp_path)
    assert not row.ok and "trainer exit 2" in row.figure and "TARGET_SPARSITY" in row.figure


def test_memory_and_mfu_rows_read_the_run_and_the_estimate(rows_on_the_cpu, tmp_path,
                                                           monkeypatch):
    """The GPT-2 124M rows on the tiny model: the measured peak (here the process's resident
    set) over make estimate's, and MFU = tokens/s x FLOPs per token / the card's peak."""
    from conftest import TINY
    monkeypatch.setattr(gpu_check_rows, "GPT2", [*TINY, "SAMPLE_AFTER_TRAINING=n"])
    row = gpu_check.run_row("m", rows_on_the_cpu["peak-memory-vs-estimate"], tmp_path / "mem")
    assert row.name == "peak-memory-vs-estimate" and "GiB / estimate" in row.figure, row
    monkeypatch.setattr(gpu_check_rows.devices, "peak_flops",
                        lambda name, precision, tf32: 1e9 if name == "cpu" else None)
    row = gpu_check.run_row("f", rows_on_the_cpu["mfu-gpt2-124m"], tmp_path / "mfu")
    assert "at micro-batch 64" in row.figure and "peak 0.001 TFLOP/s" in row.figure, row
    summary = json.loads(next((tmp_path / "mfu" / "b64").glob("results/**/summary.json")).read_text())
    flops = json.loads(subprocess.run(
        [sys.executable, "-m", "scripts.estimate", str(tmp_path / "mfu" / "estimate" / "config"),
         "--json"], capture_output=True, text=True, cwd=cfglib.ROOT).stdout)["flops_per_token"]
    assert f"MFU {summary['tokens_per_s'] * flops / 1e9:.1%}" in row.figure


def test_attention_row_goes_through_the_trainers_kernel_check(rows_on_the_cpu, tmp_path,
                                                             monkeypatch):
    # the CPU has no memory-efficient kernel: the project's own check names the knob
    row = gpu_check.run_row("attention-backends", rows_on_the_cpu["attention-backends"],
                            tmp_path / "all")
    assert not row.ok and "CONFIG_ATTENTION_BACKEND_MEMORY_EFFICIENT=y" in row.figure
    monkeypatch.setattr(gpu_check_rows, "ATTENTION", ("flash", "math"))
    row = gpu_check.run_row("attention-backends", rows_on_the_cpu["attention-backends"],
                            tmp_path / "two")
    assert row.ok and row.figure.startswith("flash: max |logit diff| vs math 0.0"), row


def test_ddp_and_matrix_rows_on_two_cpu_processes(rows_on_the_cpu, tmp_path, monkeypatch):
    """With device_count() saying 2, the DDP row runs the trainer's own torchrun launch (gloo
    here) against one process on the same batch; the matrix row runs 4 cells and reads their
    state files, which on the CPU name no GPU, so the pinning check fails as it should."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(gpu_check_rows, "SMALL", [*gpu_check_rows.SMALL, "MAX_ITERS=20",
                                                  "EVAL_INTERVAL=20"])
    row = gpu_check.run_row("ddp-nccl", rows_on_the_cpu["ddp-nccl"], tmp_path / "ddp")
    assert row.ok and row.figure.startswith("2 processes; loss "), row
    row = gpu_check.run_row("m", rows_on_the_cpu["matrix-one-cell-per-gpu"], tmp_path / "m")
    assert not row.ok and row.figure == "exit 0; 4 cells on GPUs None", row
