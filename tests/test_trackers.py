"""Trackers, each run for real in a training process and read back with its own library:
every metrics.jsonl record and the config reach it, and the run's log says where it wrote
when the run starts and when it ends. A missing package is an error naming the knob and
the pip command; a matrix is one project."""
import json
import os
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from gpt2 import train
from lib import config as cfglib
from lib.run import RunDir
from scripts import matrix
from conftest import EVENT_LIMIT_S

RUN = ("MAX_ITERS=4", "LOG_INTERVAL=1", "EVAL_INTERVAL=2", "SAMPLE_AFTER_TRAINING=n",
       "TRACKER_PROJECT=study")


def child_env(tmp_path, **env) -> dict:
    """The environment of a training process whose trackers keep every file under
    tmp_path."""
    home = tmp_path / "home"
    return {**os.environ, "PYTHONPATH": str(cfglib.ROOT), "HF_HOME": str(home / "hf"),
            "TRACKIO_DIR": str(tmp_path / "trackio"), "XDG_CONFIG_HOME": str(home / "config"),
            **{f"WANDB_{d}_DIR": str(home / f"wandb-{d.lower()}")
               for d in ("CONFIG", "CACHE", "DATA", "ARTIFACT")}, **env}


def train_child(config, tmp_path, **env):
    """Train `config` in its own process (child_env); the run's directory and its log's
    messages."""
    result = subprocess.run([sys.executable, "-m", "gpt2.train", str(config)],
                            env=child_env(tmp_path, **env), cwd=cfglib.ROOT,
                            capture_output=True, text=True, timeout=EVENT_LIMIT_S)
    assert result.returncode == 0, result.stderr
    run = RunDir.for_config(cfglib.load(config))
    messages = [line.split(" INFO ", 1)[1] for line in run.log.read_text().splitlines()
                if " INFO " in line]
    return run, messages


def said_where(messages, tracker) -> list:
    """The tracker's lines, which the log holds twice: before training starts, and after
    the run's last line."""
    start = next(i for i, m in enumerate(messages) if m.startswith("training "))
    end = next(i for i, m in enumerate(messages) if m.startswith("complete at iteration"))
    before = [m for m in messages[:start] if m.startswith(f"{tracker}: ")]
    after = [m for m in messages[end:] if m.startswith(f"{tracker}: ")]
    assert before and before == after, messages
    assert not [m for m in messages[start:end] if m.startswith(f"{tracker}: ")]
    return before


def records(run) -> list:
    return [json.loads(line) for line in run.metrics.read_text().splitlines()]


def numbers(record) -> dict:
    """The record's numbers under the tracker's names, <kind>/<key> (none is NaN here)."""
    return {f"{record['kind']}/{k}": v for k, v in record.items()
            if k not in ("kind", "iter") and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def test_tensorboard_event_files_hold_every_metric_and_the_log_says_where(
        tiny_config, tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed: pip install -e '.[trackers]'")
    run, messages = train_child(tiny_config(*RUN, "TRACKER=tensorboard"), tmp_path)
    log_dir = run.path / "tensorboard"
    assert said_where(messages, "tensorboard") == [
        f"tensorboard: event files in {log_dir}",
        f"tensorboard: view with: tensorboard --logdir {log_dir}"]
    events = event_accumulator.EventAccumulator(str(log_dir))
    events.Reload()
    expected = defaultdict(list)
    for record in records(run):
        for tag, value in numbers(record).items():
            expected[tag].append((record["iter"], value))
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in read] == [s for s, _ in points]
        assert [v for _, v in read] == pytest.approx([v for _, v in points], rel=1e-6)
    assert len(expected["train/train_loss"]) == 4 and len(expected["eval/val_loss"]) == 2


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file: W&B's 7-byte header, then
    LevelDB's log format (32 KiB blocks of chunks: crc32, length, type 1 full / 2 first /
    3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2
    data, block, records, pending = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def test_wandb_offline_run_holds_every_metric_and_the_log_says_where(tiny_config, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install -e '.[trackers]'")
    config = tiny_config(*RUN, "TRACKER=wandb", "TRACKER_WANDB_MODE=offline")
    run, messages = train_child(config, tmp_path, WANDB_MODE="online")  # the knob decides
    (offline,) = (run.path / "wandb").glob("offline-run-*")
    assert said_where(messages, "wandb") == [f"wandb: offline run in {offline}",
                                             f"wandb: upload it with: wandb sync {offline}"]
    (stored,) = offline.glob("run-*.wandb")
    stored = wandb_records(stored)
    (started,) = [r.run for r in stored if r.WhichOneof("record_type") == "run"]
    assert (started.project, started.display_name) == ("study", run.path.name)
    hyper = {u.key: json.loads(u.value_json) for u in started.config.update}
    assert hyper["N_LAYER"] == 2 and hyper["TRACKER_WANDB_MODE"] == "offline"
    rows = []  # wandb merges the values logged at one step into one row
    for record in (r.history for r in stored if r.WhichOneof("record_type") == "history"):
        row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.item}
        rows.append((row.pop("_step"), {k: v for k, v in row.items() if not k.startswith("_")}))
    expected = defaultdict(dict)
    for record in records(run):
        expected[record["iter"]].update(numbers(record))
    assert rows == list(expected.items())


def test_a_resumed_run_continues_its_wandb_run(tiny_config, tmp_path):
    """Stopped at iteration 2 and resumed: two offline sessions of one W&B run (one id),
    whose history together covers every iteration, so `wandb sync` makes one run of them."""
    pytest.importorskip("wandb", reason="wandb is not installed: pip install -e '.[trackers]'")
    config = tiny_config(*RUN, "TRACKER=wandb", "TRACKER_WANDB_MODE=offline")
    command = [sys.executable, "-m", "gpt2.train", str(config)]
    for extra in (["--stop-after", "2"], []):
        result = subprocess.run(command + extra, env=child_env(tmp_path), cwd=cfglib.ROOT,
                                capture_output=True, text=True, timeout=EVENT_LIMIT_S)
        assert result.returncode == 0, result.stderr
    run = RunDir.for_config(cfglib.load(config))
    sessions = sorted((run.path / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2
    ids, steps = set(), set()
    for session in sessions:
        (stored,) = session.glob("run-*.wandb")
        stored = wandb_records(stored)
        ids |= {r.run.run_id for r in stored if r.WhichOneof("record_type") == "run"}
        steps |= {json.loads(i.value_json) for r in stored
                  if r.WhichOneof("record_type") == "history" for i in r.history.item
                  if ("/".join(i.nested_key) or i.key) == "_step"}
    assert len(ids) == 1
    assert steps == {record["iter"] for record in records(run)}


def test_wandb_online_without_a_login_is_one_line_naming_the_way_out(tiny_config, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install -e '.[trackers]'")
    config = tiny_config(*RUN, "TRACKER=wandb", "TRACKER_WANDB_MODE=online")
    env = child_env(tmp_path, HOME=str(tmp_path / "home"), NETRC=str(tmp_path / "no-netrc"),
                    WANDB_MODE="offline",  # the knob decides, not this
                    XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME",
                                                  str(Path.home() / ".cache")))
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run([sys.executable, "-m", "gpt2.train", str(config)], env=env,
                            cwd=cfglib.ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=EVENT_LIMIT_S)
    assert result.returncode == 2, result.stderr
    (line,) = [e for e in result.stderr.splitlines() if e.startswith("error: ")]
    assert "CONFIG_TRACKER_WANDB_MODE_ONLINE=y" in line and "API key" in line
    assert "wandb login" in line and "TRACKER_WANDB_MODE_OFFLINE" in line
    assert "Traceback" not in result.stderr
    run = RunDir.for_config(cfglib.load(config))
    assert not list((run.path / "wandb").glob("offline-run-*"))


TRACKIO_READ = """import json, sys
from trackio.sqlite_storage import SQLiteStorage
project, name = sys.argv[1:]
print(json.dumps([SQLiteStorage.get_logs(project, name),
                  SQLiteStorage.get_run_config(project, name)]))"""


def test_trackio_local_store_holds_every_metric_and_the_log_says_where(tiny_config, tmp_path):
    pytest.importorskip("trackio", reason="trackio is not installed: pip install -e "
                                          "'.[trackers]'")
    run, messages = train_child(tiny_config(*RUN, "TRACKER=trackio"), tmp_path)
    store = tmp_path / "trackio" / "study.db"
    assert said_where(messages, "trackio") == [
        f"trackio: project 'study' in {store}",
        "trackio: open its dashboard with: trackio show --project study"]
    assert store.is_file()
    read = subprocess.run([sys.executable, "-c", TRACKIO_READ, "study", run.path.name],
                          env={**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")},
                          capture_output=True, text=True, timeout=EVENT_LIMIT_S, check=True)
    logs, hyper = json.loads(read.stdout.splitlines()[-1])
    assert hyper["N_LAYER"] == 2 and hyper["TRACKER"] == "trackio"
    assert [(row.pop("step"), {k: v for k, v in row.items() if k != "timestamp"})
            for row in logs] == [(r["iter"], numbers(r)) for r in records(run)]


@pytest.mark.parametrize("choice, module", [("wandb", "wandb"), ("trackio", "trackio"),
                                            ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_tracker_package_names_the_knob_and_the_extra(
        tiny_config, monkeypatch, capsys, choice, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    config = tiny_config(*RUN, f"TRACKER={choice}")
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert f"TRACKER_{choice.upper()}=y" in err and "pip install -e '.[trackers]'" in err
    assert "TRACKER_NONE" in err
    assert not RunDir.for_config(cfglib.load(config)).path.exists()  # nothing written


def test_tracker_knobs_stay_out_of_the_hash_and_a_matrix_is_one_project(tiny_config):
    plain = cfglib.load(tiny_config(name="plain"))
    tracked = cfglib.load(tiny_config("TRACKER=wandb", "TRACKER_RUN_NAME=x",
                                      "TRACKER_WANDB_MODE=offline", name="tracked"))
    assert plain.hash == tracked.hash
    m = matrix.load_matrix(tiny_config("MATRIX=y", "MATRIX_SEEDS=2", "TRACKER=wandb",
                                       name="matrix"))
    projects = {cfglib.from_kconf(c.kconf).TRACKER_PROJECT for c in m.cells}
    assert projects == {m.path.name}
    named = matrix.load_matrix(tiny_config("MATRIX=y", "TRACKER=wandb", "TRACKER_PROJECT=mine",
                                           name="named"))
    assert cfglib.from_kconf(named.cells[0].kconf).TRACKER_PROJECT == "mine"
