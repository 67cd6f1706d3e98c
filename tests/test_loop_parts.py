"""The training loop's parts (gpt2/loop/) on their own: Progress through a checkpoint, the
log window's sums and record, the checkpointer's cadence. No training: seconds."""
import math
import statistics
from dataclasses import asdict

import pytest
import torch

from gpt2.loop import TrainingFailed
from gpt2.loop.checkpointer import Checkpointer
from gpt2.loop.log_window import LogWindow, saved_state
from gpt2.loop.progress import Progress
from lib import checkpoint
from lib.distributed import Distributed
from lib.steptime import StepClock


class Records:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)


def window(interval=5, tokens_per_iter=256):
    return LogWindow(interval, Distributed(), torch.device("cpu"), tokens_per_iter, "LR_ADAMW")


def test_progress_round_trips_through_a_weights_only_checkpoint(tmp_path):
    p = Progress(iter=7, tokens_seen=3584, train_time_s=1.5, best_val_loss=4.0,
                 last_eval={"val_loss": 4.0, "val_ppl": math.exp(4.0)}, eval_iter=4,
                 test={"test_loss": 3.9}, init_hash="ab", data_hash="cd", compile_s=0.25,
                 steady_step_s=0.125)
    checkpoint.save(tmp_path / "ckpt.pt", {"progress": asdict(p)})
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["progress"]
    assert Progress(**saved) == p
    assert Progress(**asdict(Progress())) == Progress()  # inf and None survive too


def test_the_window_logs_the_mean_loss_of_its_steps_and_starts_afresh():
    losses = [4.5, 4.25, 3.75, 4.0, 3.5, 3.25]
    w, metrics, p = window(), Records(), Progress()
    clock = StepClock("cpu")
    w.begin(p.train_time_s)
    for loss in losses[:5]:
        w.add(torch.tensor(loss))
        p.iter, p.tokens_seen, p.train_time_s = p.iter + 1, p.tokens_seen + 256, p.train_time_s + 0.5
        clock.step(0.5)
    assert [w.due(i, last=False) for i in (4, 5, 6)] == [False, True, False]
    assert w.due(6, last=True)
    train_loss, tokens_per_s = w.close(p, clock, metrics, 1e-3, torch.tensor(0.5), {"a": 1})
    assert train_loss == pytest.approx(statistics.fmean(losses[:5]), rel=1e-6)
    assert tokens_per_s == pytest.approx(5 * 256 / p.train_time_s)
    record = metrics.records[0]
    assert list(record) == ["kind", "iter", "tokens", "train_loss", "lr", "grad_norm",
                            "tokens_per_s", "elapsed_s", "peak_mem_bytes", "peak_mem_kind", "a"]
    assert (record["kind"], record["iter"], record["tokens"], record["lr"],
            record["grad_norm"], record["a"]) == ("train", 5, 1280, 1e-3, 0.5, 1)
    assert w.state_dict() == {"loss_sum": 0.0, "iters": 0}
    w.add(torch.tensor(losses[5]))
    p.iter += 1
    assert w.close(p, clock, metrics, 1e-3, torch.tensor(0.5), {})[0] == losses[5]


def test_a_window_saved_mid_way_logs_what_an_unbroken_one_does():
    losses = [torch.tensor(x) for x in (4.123, 3.987, 4.001, 3.5)]
    whole, first, second = window(), window(), window()
    for loss in losses:
        whole.add(loss)
    for loss in losses[:2]:
        first.add(loss)
    second.load_state_dict(first.state_dict())
    for loss in losses[2:]:
        second.add(loss)
    p = Progress(iter=4)
    results = [w.close(p, StepClock("cpu"), Records(), 0.0, torch.tensor(0.0), {})[0]
               for w in (whole, second)]
    assert results[0] == results[1]
    assert second.iters == 0


def test_a_non_finite_window_fails_naming_the_learning_rate():
    w = window()
    w.add(torch.tensor(float("nan")))
    with pytest.raises(TrainingFailed, match="iteration 3; lower LR_ADAMW or use GRAD_CLIP"):
        w.close(Progress(iter=3), StepClock("cpu"), Records(), 0.0, torch.tensor(0.0), {})


def test_a_checkpoint_before_the_window_had_its_own_entry_still_resumes():
    old = {"progress": {"iter": 7, "window_loss_sum": 7.5, "window_iters": 2}}
    assert saved_state(old) == ({"iter": 7}, {"loss_sum": 7.5, "iters": 2})
    new = {"progress": {"iter": 7}, "log_window": {"loss_sum": 7.5, "iters": 2}}
    assert saved_state(new) == ({"iter": 7}, {"loss_sum": 7.5, "iters": 2})


class CountingWindow:
    def __init__(self):
        self.calls = 0

    def state_dict(self):
        self.calls += 1
        return {"loss_sum": 1.5, "iters": 1}


@pytest.mark.parametrize("is_main", [True, False])
def test_the_checkpointer_saves_on_its_cadence_once_per_iteration(tmp_path, is_main):
    path, w = tmp_path / "ckpt.pt", CountingWindow()
    saves = []
    ck = Checkpointer(path, 3, is_main, lambda: saves.append(1) or {"progress": {"iter": 0}}, w)
    assert [i for i in range(1, 10) if ck.due(i, final=False)] == [3, 6, 9]
    assert ck.due(4, final=True)
    ck.save(3)
    ck.save(3)  # already saved: every rank skips it alike
    assert w.calls == 1 and len(saves) == int(is_main)
    ck.save(3, again=True)
    assert w.calls == 2 and len(saves) == 2 * int(is_main)
    assert path.exists() == is_main
    if is_main:
        assert torch.load(path, weights_only=True)["log_window"] == {"loss_sum": 1.5, "iters": 1}
