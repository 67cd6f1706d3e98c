"""BATCH_SIZE_AUTO (gpt2/batch_fit.py): the search, its probes, and the trainer with it."""
import json
import math

import pytest
import torch

from gpt2 import batch_fit, data, train
from gpt2.data import loaders
from lib import config as cfglib
from lib.distributed import Distributed
from lib.run import RunDir

# An asked step of 4 x 2 = 8 sequences of 64 tokens. On the CPU each sequence's
# activations take about 0.5 MB (gpt2/activations.py), the tiny model's weights, gradients
# and AdamW state about 0.5 MB: a 2 MiB cap leaves room for 2 sequences, not 4.
ASKED = ("BATCH_SIZE=4", "GRADIENT_ACCUMULATION=2", "BLOCK_SIZE=64", "MAX_ITERS=2",
         "EVAL_INTERVAL=2", "SAMPLE_AFTER_TRAINING=n", "CHECKPOINT_INTERVAL=1")
CAP = "BATCH_SIZE_AUTO_MEMORY_MB=2"


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@pytest.mark.parametrize("step_batch,processes", [(48, 1), (64, 4), (7, 1), (1, 1), (360, 3)])
def test_candidates_split_the_step_into_whole_micro_batches_per_process(step_batch, processes):
    sizes = batch_fit.candidates(step_batch, processes)
    assert sizes == divisors(step_batch // processes)
    assert all((step_batch // b) % processes == 0 for b in sizes)


@pytest.mark.parametrize("n", [48, 64, 360, 7, 1])
def test_search_finds_the_largest_size_under_a_threshold_in_few_probes(n):
    sizes = divisors(n)
    bound = 2 * math.ceil(math.log2(len(sizes))) + 2 if len(sizes) > 1 else 1
    for start in sizes:
        for threshold in range(0, n + 2):
            probed = []
            found = batch_fit.search(sizes, lambda b: probed.append(b) or b <= threshold, start)
            assert found == max((b for b in sizes if b <= threshold), default=None)
            assert len(probed) == len(set(probed)) <= bound, (start, threshold, probed)
            assert probed[0] == start


def test_refusal_when_nothing_fits_names_the_knob(tiny_config, capsys):
    config = tiny_config(*ASKED, "BLOCK_SIZE=256", "BATCH_SIZE_AUTO=y",
                         "BATCH_SIZE_AUTO_MEMORY_MB=1")
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert "BATCH_SIZE_AUTO" in err and "raise BATCH_SIZE_AUTO_MEMORY_MB" in err
    assert len(err.strip().splitlines()) == 1
    assert not RunDir.for_config(cfglib.load(config)).path.exists()  # nothing written


def test_cpu_probe_backs_off_under_a_cap_and_leaves_no_trace(tiny_config):
    capped = cfglib.load(tiny_config(*ASKED, "BATCH_SIZE_AUTO=y", CAP, name="capped"))
    free = cfglib.load(tiny_config(*ASKED, "BATCH_SIZE_AUTO=y", name="free"))
    prepared = data.prepare_config(capped)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    choices = [batch_fit.choose(c, prepared, cpu, Distributed(), RunDir.for_config(c))
               for c in (capped, free)]
    assert torch.equal(torch.get_rng_state(), rng)  # the trial drew from a forked RNG
    (low, high) = choices
    assert low.micro_batch < 4 < high.micro_batch == 8  # the asked step fits whole uncapped
    for choice in choices:
        assert choice.micro_batch * choice.accumulation == 8 and choice.how == "searched"


def test_cuda_probe_treats_out_of_memory_as_does_not_fit():
    class FakeTrial:
        device = torch.device("cpu")
        tried = []

        def step(self, micro_batch):
            self.tried.append(micro_batch)
            if micro_batch > 5:
                raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    fits = batch_fit.cuda_probe(None, FakeTrial(), None)
    assert batch_fit.search(divisors(48), fits, 12) == 4
    assert FakeTrial.tried[0] == 12


@pytest.mark.parametrize("message,too_big", [
    ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
    ("CUDA error: out of memory", True), ("mat1 and mat2 shapes cannot be multiplied", False)])
def test_cuda_probe_reads_library_allocation_failures_and_raises_real_errors(message, too_big):
    class FailingTrial:
        def step(self, micro_batch):
            raise RuntimeError(message)

    fits = batch_fit.cuda_probe(None, FailingTrial(), None)
    if too_big:
        assert fits(1) is False
    else:
        with pytest.raises(RuntimeError, match="shapes"):  # a bug is not "does not fit"
            fits(1)


def test_a_step_draws_the_same_sequences_whatever_its_split(tiny_config):
    prepared = data.prepare_config(cfglib.load(tiny_config(*ASKED)))
    steps = {}
    for micro, accum in ((8, 1), (4, 2), (2, 4), (1, 8)):
        batches = data.Batches(prepared, 64, micro, "cpu", seed=7)
        steps[micro] = [torch.cat([x for x, _ in batches.step("train", accum)])
                        for _ in range(3)]
    for micro in (4, 2, 1):
        assert all(torch.equal(a, b) for a, b in zip(steps[8], steps[micro]))


def _summary(config):
    return json.loads(RunDir.for_config(cfglib.load(config)).summary.read_text())


def test_trainer_with_a_cap_trains_the_asked_steps_and_resume_reuses_the_choice(tiny_config,
                                                                                tmp_path):
    auto = tiny_config(*ASKED, "BATCH_SIZE_AUTO=y", CAP, name="auto")
    asked = tiny_config(*ASKED, f"RESULTS_DIR={tmp_path / 'asked-results'}", name="asked")
    assert cfglib.load(auto).hash == cfglib.load(asked).hash  # the hash is of what was asked
    assert train.main([str(auto), "--stop-after", "1"]) == 0
    first = _summary(auto)
    assert (first["batch_size_used"], first["gradient_accumulation_used"]) == (2, 4)
    assert first["batch_size_auto"] == "searched" and first["batch_size"] == 4
    # without the cap a new search would take all 8 sequences at once; the resume keeps
    # the recorded split and finds the same run directory
    assert train.main([str(auto), "--set", "BATCH_SIZE_AUTO_MEMORY_MB=0"]) == 0
    done = _summary(auto)
    assert done["status"] == "complete" and done["batch_size_auto"] == "resumed"
    assert (done["batch_size_used"], done["gradient_accumulation_used"]) == (2, 4)
    assert done["tokens_seen"] == 2 * 8 * 64  # the asked tokens per optimizer step
    log = (RunDir.for_config(cfglib.load(auto)).path / "train.log").read_text()
    assert "micro-batch 2 x 4 accumulation (BATCH_SIZE_AUTO, searched)" in log
    assert "micro-batch 2 x 4 accumulation (BATCH_SIZE_AUTO, resumed)" in log
    # the same sequences in the same order as the asked 4 x 2 split, so the asked run is
    # the oracle: its training agrees up to rounding, and the report pairs the two
    assert train.main([str(asked)]) == 0
    plain = _summary(asked)
    assert plain["batch_size_auto"] == "asked" and plain["data_hash"] == done["data_hash"]
    assert plain["init_hash"] == done["init_hash"]  # the trial model drew no RNG of the run
    for key in ("train_loss", "val_loss", "test_loss"):
        assert done[key] == pytest.approx(plain[key], rel=1e-4), key


def test_preloaded_data_is_left_room_for(tiny_config):
    cfg = cfglib.load(tiny_config(*ASKED, "BATCH_SIZE_AUTO=y", "DATA_LOADER=preloaded"))
    prepared = data.prepare_config(cfg)
    held = loaders.PreloadedBatches(prepared, 64, 4)._tokens.values()
    assert batch_fit.resident_data_bytes(cfg, prepared) == sum(
        t.numel() * t.element_size() for t in held)
    memmap = cfglib.load(tiny_config(*ASKED, "BATCH_SIZE_AUTO=y", name="memmap"))
    assert batch_fit.resident_data_bytes(memmap, prepared) == 0


def test_the_recorded_choice_is_reused_only_for_a_checkpoint_it_still_splits(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_summary({"batch_size_used": 2, "gradient_accumulation_used": 4})
    assert batch_fit.recorded(run, 8, 1) is None  # no checkpoint: a fresh start searches
    run.ckpt.write_bytes(b"")
    assert batch_fit.recorded(run, 8, 1) == batch_fit.Choice(2, 4, "resumed")
    assert batch_fit.recorded(run, 8, 4) == batch_fit.Choice(2, 4, "resumed")
    assert batch_fit.recorded(run, 8, 8) is None  # 4 micro-batches cannot feed 8 processes
    assert batch_fit.recorded(run, 16, 1) is None  # another step batch


def test_a_resume_that_no_longer_fits_searches_again(tiny_config):
    cfg = cfglib.load(tiny_config(*ASKED, "BATCH_SIZE_AUTO=y", CAP))
    run = RunDir.for_config(cfg)
    run.path.mkdir(parents=True)
    run.ckpt.write_bytes(b"")
    run.write_summary({"batch_size_used": 8, "gradient_accumulation_used": 1})
    choice = batch_fit.choose(cfg, data.prepare_config(cfg), torch.device("cpu"),
                              Distributed(), run)
    assert choice == batch_fit.Choice(2, 4, "searched")


@pytest.mark.parametrize("auto,fix", [((), "set BATCH_SIZE_AUTO=y"),
                                      (("BATCH_SIZE_AUTO=y",), "BATCH_SIZE_AUTO_MEMORY_MB")])
def test_out_of_memory_in_training_names_the_knob_that_helps(tiny_config, monkeypatch, auto, fix):
    def out_of_memory(self):
        raise torch.OutOfMemoryError("CUDA out of memory (fake)")
    monkeypatch.setattr(train.Trainer, "train_step", out_of_memory)
    config = tiny_config(*ASKED, *auto)
    assert train.main([str(config)]) == 3
    summary = _summary(config)
    assert summary["status"] == "failed" and fix in summary["error"]
