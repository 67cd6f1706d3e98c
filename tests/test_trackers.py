"""Trackers: the metrics writer's records and the config reach the selected tracker; a
missing package is an error naming the knob and the package; a matrix is one project."""
import json
import sys
import types
from pathlib import Path

import pytest

from gpt2 import train
from lib import config as cfglib
from lib import trackers
from lib.run import RunDir
from scripts import matrix

RUN = ("MAX_ITERS=4", "LOG_INTERVAL=1", "EVAL_INTERVAL=2", "SAMPLE_AFTER_TRAINING=n")


def fake_wandb_like(name):
    """A module with wandb's (and trackio's) init/log/finish that records its calls."""
    module = types.ModuleType(name)
    module.calls = []
    module.init = lambda **kw: module.calls.append(("init", kw))
    module.log = lambda values, step=None: module.calls.append(("log", values, step))
    module.finish = lambda: module.calls.append(("finish",))
    return module


@pytest.mark.parametrize("choice", ["wandb", "trackio"])
def test_every_metrics_record_and_the_config_reach_the_tracker(tiny_config, monkeypatch,
                                                               choice):
    module = fake_wandb_like(choice)
    monkeypatch.setitem(sys.modules, choice, module)
    config = tiny_config(*RUN, f"TRACKER={choice}", "TRACKER_PROJECT=study")
    assert train.main([str(config)]) == 0
    run = RunDir.for_config(cfglib.load(config))
    (kind, init), *logged, last = module.calls
    assert kind == "init" and last == ("finish",)
    assert init["project"] == "study" and init["name"] == run.path.name
    assert init["config"]["N_LAYER"] == 2 and init["config"]["TRACKER"] == choice
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    # 4 train and 2 eval records, then the one test-split record at the end
    assert [r["kind"] for r in records].count("test") == 1
    assert len(logged) == len(records) == 4 + 2 + 1
    for (_, values, step), record in zip(logged, records):
        assert step == record["iter"]
        assert values == {f"{record['kind']}/{k}": v for k, v in record.items()
                          if k not in ("kind", "iter") and isinstance(v, (int, float))}
    assert logged[0][1]["train/train_loss"] == records[0]["train_loss"]


def test_tensorboard_writes_each_number_as_a_scalar(tiny_config, monkeypatch, tmp_path):
    scalars, texts = [], []

    class SummaryWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, global_step):
            scalars.append((tag, value, global_step))

        def add_text(self, tag, text):
            texts.append((tag, text))

        def flush(self):
            pass

        def close(self):
            scalars.append("closed")

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    cfg = cfglib.load(tiny_config("TRACKER=tensorboard"))
    tracker = trackers.start(cfg, tmp_path, "run-1")
    assert tracker.writer.log_dir == str(tmp_path / "tensorboard")
    tracker.log({"kind": "eval", "iter": 7, "val_loss": 2.5, "val_ppl": 12.2,
                 "peak_mem_kind": "cpu_peak_rss", "nan": float("nan")})
    tracker.close()
    assert scalars == [("eval/val_loss", 2.5, 7), ("eval/val_ppl", 12.2, 7), "closed"]
    assert texts[0][0] == "config" and "N_LAYER = 2" in texts[0][1]


@pytest.mark.parametrize("choice, package", [("wandb", "wandb"), ("trackio", "trackio"),
                                             ("tensorboard", "tensorboard")])
def test_a_missing_tracker_package_names_the_knob_and_the_package(
        tiny_config, monkeypatch, capsys, choice, package):
    module = {"tensorboard": "torch.utils.tensorboard"}.get(choice, choice)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    config = tiny_config(*RUN, f"TRACKER={choice}")
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert f"TRACKER_{choice.upper()}=y" in err and f"pip install {package}" in err
    assert "TRACKER_NONE" in err
    assert not RunDir.for_config(cfglib.load(config)).path.exists()  # nothing written


def test_tracker_knobs_stay_out_of_the_hash_and_a_matrix_is_one_project(tiny_config):
    plain = cfglib.load(tiny_config(name="plain"))
    tracked = cfglib.load(tiny_config("TRACKER=wandb", "TRACKER_RUN_NAME=x", name="tracked"))
    assert plain.hash == tracked.hash
    m = matrix.load_matrix(tiny_config("MATRIX=y", "MATRIX_SEEDS=2", "TRACKER=wandb",
                                       name="matrix"))
    projects = {cfglib.from_kconf(c.kconf).TRACKER_PROJECT for c in m.cells}
    assert projects == {m.path.name}
    named = matrix.load_matrix(tiny_config("MATRIX=y", "TRACKER=wandb", "TRACKER_PROJECT=mine",
                                           name="named"))
    assert cfglib.from_kconf(named.cells[0].kconf).TRACKER_PROJECT == "mine"
