"""provenance.json against a real temporary git repository and importlib.metadata."""
import hashlib
import json
import subprocess
from importlib import metadata

import pytest

from lib import provenance

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    (root / "a.py").write_text("x = 1\n")
    subprocess.run([*GIT, "add", "a.py"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "one"], cwd=root, check=True)
    return root


def _git_out(root, *args) -> bytes:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True).stdout


def test_clean_and_dirty_trees(repo, tmp_path):
    info, diff = provenance.collect(repo, "cpu", None, None, ["python", "-m", "gpt2.train"])
    assert info["git_commit"] == _git_out(repo, "rev-parse", "HEAD").decode().strip()
    assert info["git_dirty"] is False and diff is None
    assert info["git_diff_sha256"] == hashlib.sha256(b"").hexdigest()
    assert info["argv"] == ["python", "-m", "gpt2.train"]

    (repo / "a.py").write_text("x = 2\n")
    info2, diff2 = provenance.collect(repo, "cpu", None, None, ["python"])
    expected = _git_out(repo, "diff", "HEAD")
    assert info2["git_dirty"] is True and diff2 == expected
    assert info2["git_diff_sha256"] == hashlib.sha256(expected).hexdigest()

    run = tmp_path / "run"
    run.mkdir()
    provenance.write(run, info2, diff2)
    assert (run / "provenance.diff").read_bytes() == expected
    assert json.loads((run / "provenance.json").read_text()) == info2


def test_outside_a_repository_the_git_fields_are_null(tmp_path):
    info, diff = provenance.collect(tmp_path, "cpu", None, None, [])
    assert (info["git_commit"], info["git_dirty"], info["git_diff_sha256"], diff) == (
        None, None, None, None)


def test_versions_are_importlib_metadata_and_null_when_absent(monkeypatch):
    found = provenance.versions()
    assert set(found) == {"python", "torch", "kconfiglib", "numpy", "bitsandbytes",
                          "lion_pytorch", "tiktoken", "datasets"}
    for key, dist in provenance.PACKAGES.items():
        try:
            assert found[key] == metadata.version(dist), key
        except metadata.PackageNotFoundError:
            assert found[key] is None
    monkeypatch.setitem(provenance.PACKAGES, "tiktoken", "kmatrix-no-such-package")
    assert provenance.versions()["tiktoken"] is None


def test_a_resumed_session_that_differs_is_added_not_overwritten(repo, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    first, diff = provenance.collect(repo, "cpu", None, None, ["train"])
    provenance.write(run, first, diff)
    provenance.write(run, first, diff)  # the same again: nothing added
    assert json.loads((run / "provenance.json").read_text()) == first
    (repo / "a.py").write_text("x = 3\n")
    later, later_diff = provenance.collect(repo, "cpu", None, None, ["train"])
    provenance.write(run, later, later_diff)
    recorded = json.loads((run / "provenance.json").read_text())
    assert {k: v for k, v in recorded.items() if k != "resumed_with"} == first
    assert recorded["resumed_with"] == [later]
    assert (run / "provenance.resumed-1.diff").read_bytes() == later_diff
    assert not (run / "provenance.diff").exists()  # the first session was clean


def test_a_run_directory_gets_its_provenance(tiny_config):
    from gpt2 import train
    from lib import config as cfglib
    from lib.run import RunDir

    config = tiny_config("MAX_ITERS=2", "EVAL_INTERVAL=2", "SAMPLE_AFTER_TRAINING=n")
    assert train.main([str(config)]) == 0
    recorded = json.loads((RunDir.for_config(cfglib.load(config)).path
                           / "provenance.json").read_text())
    assert recorded["device_name"] and recorded["versions"]["torch"] == metadata.version("torch")
    assert isinstance(recorded["argv"], list) and "git_commit" in recorded
