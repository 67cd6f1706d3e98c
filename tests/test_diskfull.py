"""A full disk and a torn record: each ends in one line and loses nothing, and the run
resumes to the uninterrupted result (CPU, tiny model).

The disk fills for real: a file-size limit (RLIMIT_FSIZE, so a write returns EFBIG) in
a child process, or a small tmpfs mounted over the run directory (ENOSPC; skipped where
mounting is not permitted). Nothing of torch.save or the file system is mocked.
"""
import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EVENT_LIMIT_S, write_tiny_config
from test_faults import COMMON, assert_identical, outcome, run_dir

from gpt2 import train
from lib import checkpoint
from lib import config as cfglib



@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    config = write_tiny_config(tmp_path_factory.mktemp("reference") / "config", *COMMON)
    assert train.main([str(config)]) == 0
    return outcome(config)


def limited(max_bytes):
    """preexec_fn: files this child writes stop growing at max_bytes (write gets EFBIG)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def train_child(config, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "gpt2.train", str(config)], cwd=cfglib.ROOT,
                          capture_output=True, text=True, timeout=EVENT_LIMIT_S,
                          preexec_fn=preexec_fn)


def assert_out_of_space(result, run, kept_iter):
    line = (f"no space left on {run.path}: the previous checkpoint (iteration {kept_iter}) "
            f"is intact; free space and run make again")
    assert result.returncode == 130, result.stderr
    assert line in result.stderr and "Traceback" not in result.stderr, result.stderr
    summary = json.loads(run.summary.read_text())
    assert (summary["status"], summary["error"]) == ("interrupted", line)
    assert checkpoint.load(run.ckpt)["progress"]["iter"] == kept_iter
    assert not list(run.path.glob(".*.tmp"))


def test_checkpoint_over_a_file_size_limit(tiny_config, reference):
    config = tiny_config(*COMMON)
    assert train.main([str(config), "--stop-after", "4"]) == 0  # checkpoint at iteration 4
    run = run_dir(config)
    result = train_child(config, limited(run.ckpt.stat().st_size // 2))
    assert_out_of_space(result, run, 4)
    assert train.main([str(config)]) == 0
    assert_identical(outcome(config), reference)


def mount_tmpfs(where: Path, size: int) -> None:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or 'mount failed'}")


def move_tree(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)
        (shutil.rmtree if item.is_dir() else Path.unlink)(item)


def test_checkpoint_on_a_full_tmpfs(tiny_config, reference, tmp_path):
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    config = tiny_config(*COMMON)
    assert train.main([str(config), "--stop-after", "4"]) == 0
    run = run_dir(config)
    used = sum(f.stat().st_size for f in run.path.iterdir() if f.is_file())
    aside = tmp_path / "aside"
    aside.mkdir()
    move_tree(run.path, aside)
    # room for what is there and half a checkpoint more (plus a page per file)
    mount_tmpfs(run.path, used + 4096 * 16 + (aside / "ckpt.pt").stat().st_size // 2)
    try:
        move_tree(aside, run.path)
        result = train_child(config)
        assert_out_of_space(result, run, 4)
        move_tree(run.path, aside)
    finally:
        subprocess.run(["umount", str(run.path)], check=True)
    move_tree(aside, run.path)
    assert train.main([str(config)]) == 0
    assert_identical(outcome(config), reference)


# A child that appends records to metrics.jsonl and rewrites summary.json under a file-size
# limit a few records long, then reports what it saw.
_APPEND_UNTIL_FULL = """
import json, sys
from pathlib import Path
from lib.fsutil import atomic_write_json, no_space
from lib.metrics import MetricsLog
log, summary = MetricsLog(Path(sys.argv[1])), Path(sys.argv[2])
record = {"kind": "train", "iter": 0, "train_loss": 1.0, "pad": "x" * 100}
for i in range(1, 1000):
    try:
        log.write({**record, "iter": i})
    except OSError as e:
        assert no_space(e) is e
        break
try:
    atomic_write_json(summary, {"status": "running", "pad": "y" * 4000})
except OSError as e:
    assert no_space(e) is e
    print(json.dumps({"failed_at": i, "summary_error": e.errno}))
"""


def test_metrics_and_summary_that_do_not_fit_lose_nothing(tmp_path):
    metrics, summary = tmp_path / "metrics.jsonl", tmp_path / "summary.json"
    summary.write_text(json.dumps({"status": "interrupted"}))
    result = subprocess.run([sys.executable, "-c", _APPEND_UNTIL_FULL, str(metrics),
                             str(summary)], cwd=cfglib.ROOT, capture_output=True, text=True,
                            timeout=EVENT_LIMIT_S, preexec_fn=limited(1000))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["summary_error"] in (27,)  # EFBIG
    text = metrics.read_text()
    assert text.endswith("\n")  # the record that did not fit was cut back off
    iters = [json.loads(line)["iter"] for line in text.splitlines()]
    assert iters == list(range(1, seen["failed_at"]))
    assert json.loads(summary.read_text()) == {"status": "interrupted"}  # the old one, whole
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_torn_last_metrics_record_is_dropped_on_resume(tiny_config, reference, capsys):
    config = tiny_config(*COMMON)
    assert train.main([str(config), "--stop-after", "7"]) == 0
    run = run_dir(config)
    with run.metrics.open("a") as f:
        f.write('{"kind": "train", "iter": 10, "train_lo')  # a full disk, or kill -9
    assert train.main([str(config)]) == 0
    err = capsys.readouterr().err
    assert f"{run.metrics}: dropped a torn last record" in err
    assert_identical(outcome(config), reference)


def test_a_torn_record_before_the_last_is_an_error_naming_file_and_line(tiny_config, capsys):
    config = tiny_config(*COMMON)
    assert train.main([str(config), "--stop-after", "12"]) == 0
    run = run_dir(config)
    lines = run.metrics.read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    damaged = "".join([lines[0][:20] + "\n", *lines[1:]])
    run.metrics.write_text(damaged)
    ckpt = run.ckpt.read_bytes()
    capsys.readouterr()
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {run.metrics}, line 1: not a whole JSON record")
    assert run.metrics.read_text() == damaged and run.ckpt.read_bytes() == ckpt  # nothing lost
