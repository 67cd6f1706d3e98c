"""The trainer end to end on a tiny model: loss falls, the run directory, resume, errors."""
import json
import math
import time

import pytest
import torch

from gpt2 import train
from gpt2.model import GPT
from lib import checkpoint, optim
from lib import config as cfglib
from lib.run import RunDir


def run_dir(config_path) -> RunDir:
    return RunDir.for_config(cfglib.load(config_path))


def test_tiny_training_loss_falls_and_fills_the_run_directory(tiny_config, monkeypatch):
    # start-up is counted from the trainer's import, which in a long test session was
    # minutes ago: count it from here
    monkeypatch.setattr(train, "PROCESS_START", time.time())
    config = tiny_config("MAX_ITERS=60", "EVAL_INTERVAL=30")
    assert train.main([str(config)]) == 0
    run = run_dir(config)
    for f in ("config", "env.json", "metrics.jsonl", "train.log", "ckpt.pt", "summary.json",
              "samples.txt"):
        assert (run.path / f).is_file(), f
    assert run.config.read_text() == config.read_text()
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    train_losses = [r["train_loss"] for r in records if r["kind"] == "train"]
    assert [r["iter"] for r in records if r["kind"] == "train"] == list(range(5, 61, 5))
    assert train_losses[-1] < train_losses[0] - 0.5
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [30, 60]
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "complete" and summary["iters"] == 60
    assert summary["tokens_seen"] == 60 * 8 * 32
    assert summary["val_loss"] == evals[-1]["val_loss"]
    assert summary["peak_mem_kind"] == "cpu_peak_rss" and summary["peak_mem_bytes"] > 0
    assert summary["tokens_per_s"] > 0
    assert 0 < summary["startup_s"] < 600
    env = json.loads(run.env.read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    # the checkpoint loads with weights_only and holds the whole training state
    state = checkpoint.load(run.ckpt)
    assert {"model", "optimizer", "scaler", "data", "rng_cpu", "progress"} <= state.keys()
    assert state["progress"]["iter"] == 60


def test_second_run_says_already_complete(tiny_config, capsys):
    config = tiny_config("MAX_ITERS=10", "EVAL_INTERVAL=10", "SAMPLE_AFTER_TRAINING=n")
    assert train.main([str(config)]) == 0
    mtime = run_dir(config).ckpt.stat().st_mtime_ns
    assert train.main([str(config)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert run_dir(config).ckpt.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-8bit", "lion", "adafactor", "sgd"])
def test_resume_is_bit_exact(tiny_config, tmp_path, optimizer):
    common = ("MAX_ITERS=20", "EVAL_INTERVAL=10", "CHECKPOINT_INTERVAL=100", "DROPOUT=0.1",
              "GRADIENT_ACCUMULATION=2", "SAMPLE_AFTER_TRAINING=n", f"OPTIMIZER={optimizer}")
    straight = tiny_config(*common, name="straight")
    resumed = tiny_config(*common, f"RESULTS_DIR={tmp_path / 'other'}", name="resumed")
    assert train.main([str(straight)]) == 0
    assert train.main([str(resumed), "--stop-after", "10"]) == 0
    assert json.loads(run_dir(resumed).summary.read_text())["status"] == "stopped"
    assert checkpoint.load(run_dir(resumed).ckpt)["progress"]["iter"] == 10
    assert train.main([str(resumed)]) == 0
    a, b = checkpoint.load(run_dir(straight).ckpt), checkpoint.load(run_dir(resumed).ckpt)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    sa, sb = (json.loads(run_dir(c).summary.read_text()) for c in (straight, resumed))
    assert sa["val_loss"] == sb["val_loss"] and sa["train_loss"] == sb["train_loss"]
    metrics = lambda c: [(r["iter"], r.get("train_loss"), r.get("val_loss"))  # noqa: E731
                         for r in map(json.loads, run_dir(c).metrics.read_text().splitlines())]
    assert metrics(straight) == metrics(resumed)


def test_token_and_epoch_budgets_set_the_iterations(tiny_config):
    cfg = cfglib.load(tiny_config("BUDGET=tokens", "MAX_TOKENS=2600"))
    assert train.Budget(cfg, tokens_per_iter=256, train_tokens=10**6).total_iters == 11
    cfg = cfglib.load(tiny_config("BUDGET=epochs", "NUM_EPOCHS=0.5"))
    assert train.Budget(cfg, tokens_per_iter=256, train_tokens=1000).total_iters == 2


def test_a_different_config_never_reuses_a_run_directory(tiny_config, capsys):
    first = tiny_config("MAX_ITERS=5", "RUN_NAME=same", "SAMPLE_AFTER_TRAINING=n", name="a")
    second = tiny_config("MAX_ITERS=6", "RUN_NAME=same", "SAMPLE_AFTER_TRAINING=n", name="b")
    assert train.main([str(first)]) == 0
    before = run_dir(first).summary.read_text()
    assert train.main([str(second)]) == 2
    assert "holds a run of a different configuration" in capsys.readouterr().err
    assert run_dir(first).summary.read_text() == before


def test_bad_value_stops_before_any_work(tiny_config, tmp_path, capsys):
    config = tiny_config("MAX_ITERS=5")
    assert train.main([str(config), "--set", "ADAMW_LR=-1"]) == 2
    err = capsys.readouterr().err
    assert 'ADAMW_LR=-1: -1 is outside the allowed range (0, 10]' in err
    assert not (tmp_path / "results").exists()


def test_missing_dataset_is_a_clear_error(tiny_config, monkeypatch, capsys, tmp_path):
    from gpt2 import data

    monkeypatch.setattr(data.inputs, "SHARED_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("KMATRIX_DATA", raising=False)
    monkeypatch.setattr(data.inputs, "_cache_dir", lambda: tmp_path / "no-cache")

    def offline(url, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.inputs, "download", offline)
    config = tiny_config("MAX_ITERS=5", f"DATA_DIR={tmp_path / 'empty'}")
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert "tinyshakespeare/input.txt" in err and "DATA_DIR" in err


def test_non_finite_loss_fails_the_run_with_its_reason(tiny_config, monkeypatch):
    config = tiny_config("MAX_ITERS=20", "LOG_INTERVAL=2")
    real_forward = GPT.forward

    def poisoned(self, *args):
        logits, loss = real_forward(self, *args)
        return logits, (loss * float("nan") if self.training else loss)

    monkeypatch.setattr(GPT, "forward", poisoned)
    assert train.main([str(config)]) == 3
    summary = json.loads(run_dir(config).summary.read_text())
    assert summary["status"] == "failed" and "non-finite training loss" in summary["error"]
    assert summary["iters"] == 2


def test_flag_aliases_map_to_symbols(tiny_config):
    args = train.parse_args(["x", "--batch-size", "4", "--num-epochs", "3", "--device", "cpu"])
    assert set(args.overrides) == {"BUDGET=epochs", "BATCH_SIZE=4", "NUM_EPOCHS=3", "DEVICE=cpu"}
    cfg = cfglib.load(tiny_config(), args.overrides)
    assert (cfg.BATCH_SIZE, cfg.BUDGET, cfg.NUM_EPOCHS) == (4, "epochs", 3.0)


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_knob_sets_cpu_arithmetic(tiny_config, flush):
    config = tiny_config("MAX_ITERS=1", "SAMPLE_AFTER_TRAINING=n",
                         f"FLUSH_DENORMAL={'y' if flush else 'n'}")
    assert train.main([str(config)]) == 0
    tiny = (torch.tensor([1e-39]) * 1.0).item()  # a denormal float32
    assert (tiny == 0.0) == flush
    torch.set_flush_denormal(False)


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "a pickle"])
def test_damaged_checkpoint_is_a_clear_error_and_the_previous_one_resumes(tiny_config, capsys,
                                                                          damage):
    config = tiny_config("MAX_ITERS=12", "EVAL_INTERVAL=6", "CHECKPOINT_INTERVAL=4",
                         "SAMPLE_AFTER_TRAINING=n")
    assert train.main([str(config), "--stop-after", "8"]) == 0
    run = run_dir(config)
    previous = checkpoint.previous(run.ckpt)
    assert checkpoint.load(previous)["progress"]["iter"] == 4  # kept until 8 was verified
    good = run.ckpt.read_bytes()
    bad = {"truncated": good[: len(good) // 2], "random bytes": bytes(range(256)) * 64,
           "a pickle": __import__("pickle").dumps(object)}[damage]
    run.ckpt.write_bytes(bad)
    capsys.readouterr()
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {run.ckpt} is damaged" in err
    assert str(previous) in err and "Traceback" not in err
    assert "weights_only=False" not in err and "weights_only" not in err.split("(")[1]
    assert run.ckpt.read_bytes() == bad  # nothing was overwritten
    run.ckpt.rename(run.path / "ckpt.pt.damaged")  # as the message says
    assert train.main([str(config)]) == 0
    assert "resuming" in run.log.read_text() and "from ckpt.prev.pt" in run.log.read_text()
    summary = json.loads(run.summary.read_text())
    assert (summary["status"], summary["iters"], summary["eval_iter"]) == ("complete", 12, 12)


def test_stale_complete_summary_is_finished_again(tiny_config):
    """A summary from an interrupted final evaluation (the old trainer wrote it complete)."""
    config = tiny_config("MAX_ITERS=10", "EVAL_INTERVAL=5")
    assert train.main([str(config)]) == 0
    run = run_dir(config)
    good = json.loads(run.summary.read_text())
    state = checkpoint.load(run.ckpt)
    state["progress"].update(eval_iter=5, last_eval={"val_loss": 9.0, "val_ppl": 8103.0})
    checkpoint.save(run.ckpt, state)
    run.samples.unlink()
    stale = {**good, "val_loss": 9.0}
    del stale["eval_iter"]
    run.write_summary(stale)
    assert train.main([str(config)]) == 0
    summary = json.loads(run.summary.read_text())
    assert summary["val_loss"] == good["val_loss"] and summary["eval_iter"] == 10
    assert run.samples.read_text()
    evals = [r["iter"] for r in map(json.loads, run.metrics.read_text().splitlines())
             if r["kind"] == "eval"]
    assert evals == [5, 10]


def test_unwritable_results_dir_is_one_line(tiny_config, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tiny_config("MAX_ITERS=5", f"RESULTS_DIR={blocker / 'results'}")
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err and "RESULTS_DIR" in err


def test_nothing_is_written_on_a_bad_start(tiny_config, monkeypatch, tmp_path):
    from gpt2 import data

    monkeypatch.setattr(data.shakespeare, "find_input", lambda *a, **k: (_ for _ in ()).throw(
        data.DataError("tinyshakespeare/input.txt not found; set DATA_DIR")))
    config = tiny_config("MAX_ITERS=5")
    assert train.main([str(config)]) == 2
    assert not run_dir(config).path.exists()
    # a model the configuration cannot build: no run directory either
    assert train.main([str(tiny_config("N_EMBD=30", "N_HEAD=4", name="odd"))]) == 2
    assert not run_dir(tmp_path / "odd").path.exists()


def test_orphaned_temporary_files_are_removed_on_start(tiny_config):
    config = tiny_config("MAX_ITERS=4", "SAMPLE_AFTER_TRAINING=n")
    assert train.main([str(config), "--stop-after", "2"]) == 0
    run = run_dir(config)
    orphan = run.path / ".ckpt.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert train.main([str(config)]) == 0
    assert not orphan.exists()
    assert "removed .ckpt.pt.abc123.tmp" in run.log.read_text()


def test_gpu_recipe_on_the_cpu_says_so_once_and_trains(tiny_config):
    config = tiny_config("MAX_ITERS=2", "SAMPLE_AFTER_TRAINING=n", "PRECISION=bf16")
    assert train.main([str(config)]) == 0
    log = run_dir(config).log.read_text()
    assert log.count("for a GPU") == 1 and "PRECISION=bf16" in log and "per iteration" in log
    assert json.loads(run_dir(config).summary.read_text())["status"] == "complete"
    plain = tiny_config("MAX_ITERS=2", "SAMPLE_AFTER_TRAINING=n", name="plain")
    assert train.main([str(plain)]) == 0
    assert "for a GPU" not in run_dir(plain).log.read_text()


def test_gpu_recipe_note_names_what_it_was_sized_for():
    from lib import recipe_fit

    cfg = cfglib.load(cfglib.ROOT / "defconfigs" / "gpt2-shakespeare-l4")
    note = recipe_fit.gpu_recipe_on_cpu(cfg, torch.device("cpu"), params=124_000_000,
                                        tokens_per_iter=65536, total_iters=10,
                                        flops_per_s=100e9)
    assert "24 GB NVIDIA L4" in note and "PRECISION=bf16, COMPILE=y" in note
    assert "8.1 min per iteration" in note and "1.4 h for its 10 iterations" in note
    assert recipe_fit.gpu_recipe_on_cpu(cfg, torch.device("cuda"), 1, 1, 1) is None


def test_a_second_trainer_on_the_same_run_stops(tiny_config, capsys):
    config = tiny_config("MAX_ITERS=2", "SAMPLE_AFTER_TRAINING=n")
    holder = run_dir(config)
    holder.claim(cfglib.load(config))  # as a trainer in another process would
    try:
        assert train.main([str(config)]) == 2
        assert "is being trained by another process" in capsys.readouterr().err
        assert not holder.ckpt.exists()
    finally:
        holder.unlock()
    assert train.main([str(config)]) == 0


def test_evaluation_reads_fixed_windows_and_the_whole_split_on_request(tiny_config):
    from gpt2 import data

    cfg = cfglib.load(tiny_config("EVAL_ITERS=3"))
    prepared = data.prepare(cfg.DATASET, cfg.DATA_DIR, cfg.RESULTS_DIR + "/_data",
                            cfg.TRAIN_SPLIT)
    windows = train.eval_windows(prepared, cfg, "cpu")
    assert len(windows["train"]) == len(windows["val"]) == 3 * 8
    val_tokens = data.read_meta(prepared)["val_tokens"]
    whole = train.eval_windows(prepared, cfglib.load(tiny_config("EVAL_WHOLE_SPLIT=y",
                                                                 name="whole")), "cpu")
    assert len(whole["val"]) == (val_tokens - 1) // 32 and len(whole["train"]) == 2 * 8
    # the train estimate is its own fixed windows, not the first training batches
    batches = data.Batches(prepared, 32, 8, "cpu", cfg.SEED)
    first_x = batches.get("train")[0]
    x0, _ = next(iter(windows["train"]))
    assert not torch.equal(x0, first_x)
    torch.manual_seed(0)
    from gpt2.build import build_model
    model = build_model(cfg, data.vocab_size(prepared))
    nothing = torch.autocast("cpu", enabled=False)
    a, b = train.evaluate(model, windows, nothing), train.evaluate(model, windows, nothing)
    assert a == b and set(a) == {"train_loss", "train_acc", "val_loss", "val_acc", "val_ppl"}


KNOBS = ("NORM=rmsnorm", "QK_NORM=y", "POSITIONS=rope", "MLP=bio", "BIO_SPARSITY_PENALTY=0.01",
         "FUSED_QKV=n", "ACTIVATION_CHECKPOINTING=y", "LABEL_SMOOTHING=0.1",
         "LOSS_CHUNK_TOKENS=100", "LR_SCHEDULE=wsd", "DATA_LOADER=preloaded",
         "ATTENTION_BACKEND=math", "MEMORY_SNAPSHOT_ITERS=2")


def wsd_oracle(i, peak, floor, warmup=5, span=20, decay_fraction=0.2):
    """The textbook warmup-stable-decay rate of step i: linear warm-up to the peak over
    `warmup` steps, the peak, then linear down to floor over the span's last fraction."""
    if i < warmup:
        return peak * (i + 1) / (warmup + 1)
    q = (i - warmup) / (span - warmup)
    return peak if q <= 1 - decay_fraction else floor + (1 - q) / decay_fraction * (peak - floor)


def test_architecture_and_speed_knobs_each_take_effect(tiny_config, monkeypatch):
    """Every knob at once through the real trainer, each checked where it acts: the
    modules it selects are the model's, the loss it names is the one trained on (and
    evaluation's stays plain), checkpointing recomputes every block, the attention ran
    on the math kernel (in the backward's recomputation too), the LR the optimizer
    stepped with is WSD's; the bio MLP's sparsity is logged, and a memory snapshot
    request on the CPU is a warning, not a file."""
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends
    from gpt2 import losses, model as model_module
    from gpt2.data import loaders
    seen = {"loss": [], "kernels": [], "block_checkpoints": 0, "stepped_lr": []}
    trainers = []

    class Recorded(train.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)
            for block in self.model.transformer.h:
                block.attn.register_forward_pre_hook(
                    lambda *_: seen["kernels"].append(_cur_sdpa_kernel_backends()))
            step = self.optimizer.step
            def recorded_step(*a, **kw):
                seen["stepped_lr"].append(self.optimizer.param_groups[0]["lr"])
                return step(*a, **kw)
            self.optimizer.step = recorded_step

    def recorded_loss(loss, model, hidden, targets, call=losses.Loss.__call__):
        logits, value = call(loss, model, hidden, targets)
        seen["loss"].append((model.training, loss, logits is None))
        return logits, value

    def counted_checkpoint(*args, real=model_module.checkpoint, **kwargs):
        seen["block_checkpoints"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "Trainer", Recorded)
    monkeypatch.setattr(losses.Loss, "__call__", recorded_loss)
    monkeypatch.setattr(model_module, "checkpoint", counted_checkpoint)
    config = tiny_config("MAX_ITERS=20", "EVAL_INTERVAL=20", "LOG_INTERVAL=1",
                         "SAMPLE_AFTER_TRAINING=n", *KNOBS)
    assert train.main([str(config)]) == 0
    (trainer,) = trainers
    cfg, model = trainer.cfg, trainer.model
    blocks = model.transformer.h

    # NORM, QK_NORM: RMSNorm before attention, MLP, the head, and on q and k; no LayerNorm
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))]
    assert len(norms) == 4 * cfg.N_LAYER + 1
    assert all(isinstance(m, torch.nn.RMSNorm) for m in norms)
    assert all(isinstance(b.attn.q_norm, torch.nn.RMSNorm) for b in blocks)
    # POSITIONS: no position table; every attention layer rotates
    assert "wpe" not in model.transformer
    assert all(isinstance(b.attn.rotary, model_module.RotaryEmbedding) for b in blocks)
    # MLP, FUSED_QKV: the bio MLP, three separate projections
    assert all(isinstance(b.mlp, model_module.BioMLP) for b in blocks)
    assert all(isinstance(b.attn, model_module.SeparateQKVAttention) for b in blocks)
    keys = model.state_dict().keys()
    assert "transformer.h.0.attn.c_q.weight" in keys and not any("c_attn" in k for k in keys)
    # DATA_LOADER
    assert isinstance(trainer.batches, loaders.PreloadedBatches)
    # LABEL_SMOOTHING, LOSS_CHUNK_TOKENS, BIO_SPARSITY_PENALTY: the training loss; the
    # evaluation's is plain cross-entropy with whole logits
    steps = cfg.MAX_ITERS * cfg.GRADIENT_ACCUMULATION
    training = [(loss, chunked) for is_training, loss, chunked in seen["loss"] if is_training]
    evaluation = [(loss, chunked) for is_training, loss, chunked in seen["loss"] if not is_training]
    assert training == [(losses.Loss(0.1, 100, 0.01), True)] * steps
    assert evaluation and set(evaluation) == {(losses.PLAIN, False)}
    # ACTIVATION_CHECKPOINTING: every block of every training forward, never in evaluation
    assert seen["block_checkpoints"] == cfg.N_LAYER * steps
    # ATTENTION_BACKEND: every attention call, the backward's recomputation included
    assert len(seen["kernels"]) > 2 * cfg.N_LAYER * steps
    assert all(k == [SDPBackend.MATH] for k in seen["kernels"])
    # LR_SCHEDULE: the optimizer stepped with WSD's rate at every step
    peak = optim.peak_lr(cfg)
    expected = [wsd_oracle(i, peak, peak * cfg.MIN_LR_FRACTION) for i in range(cfg.MAX_ITERS)]
    assert seen["stepped_lr"] == pytest.approx(expected, rel=1e-9)
    assert expected[5:16] == [peak] * 11  # the stable phase, which cosine has not

    run = run_dir(config)
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    trains = [r for r in records if r["kind"] == "train"]
    assert [r["lr"] for r in trains] == pytest.approx(expected, rel=1e-9)
    assert trains[-1]["train_loss"] < trains[0]["train_loss"]
    assert all(0 <= r["activation_sparsity"] <= 1 for r in trains)
    assert not (run.path / "memory_snapshot.pickle").exists()
    assert "MEMORY_SNAPSHOT_ITERS=2 ignored" in run.log.read_text()


def test_unavailable_attention_kernel_is_a_config_error(tiny_config, capsys):
    if torch.cuda.is_available():
        pytest.skip("the memory-efficient kernel exists on CUDA")
    config = tiny_config("MAX_ITERS=2", "ATTENTION_BACKEND=memory-efficient")
    assert train.main([str(config)]) == 2
    assert "ATTENTION_BACKEND_MEMORY_EFFICIENT=y" in capsys.readouterr().err
