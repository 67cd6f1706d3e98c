"""DATASET_REVISION: a hub corpus is pinned to a commit, recorded in meta.json, and
prepared anew when the commit it resolves to moves. The hub is never reached: its
reachability and its answer (hub.commit_of) are replaced, and datasets.load_dataset is a
fake that records its arguments and serves an in-memory dataset."""
import json

import datasets
import pytest

from gpt2 import data
from gpt2.data import huggingface, hub, pipeline
from gpt2.data.corpus import Corpus
from lib import config as cfglib

A, B = "a" * 40, "b" * 40
DOCS = [f"document {i} " + "xyz " * (i % 7 + 1) + "\n" for i in range(80)]


class Hub:
    """The fake hub: the commit each revision resolves to, and every call made."""

    def __init__(self, monkeypatch, commits):
        self.commits, self.asked, self.loads = dict(commits), [], []
        monkeypatch.setattr(hub, "unreachable", lambda url: None)
        monkeypatch.setattr(hub, "commit_of", self.commit_of)
        monkeypatch.setattr(datasets, "load_dataset", self.load_dataset)

    def commit_of(self, name, revision):
        self.asked.append((name, revision))
        if revision not in self.commits:
            from huggingface_hub.errors import RevisionNotFoundError
            error = RevisionNotFoundError.__new__(RevisionNotFoundError)
            Exception.__init__(error, f"Revision Not Found for {revision}")
            raise error
        return self.commits[revision]

    def load_dataset(self, name, config=None, **kwargs):
        self.loads.append({"name": name, "config": config, **kwargs})
        return datasets.Dataset.from_dict({"text": DOCS})


@pytest.fixture(autouse=True)
def online(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def _spec(revision="", **kw):
    return data.DataSpec("hf", hf_name="someone/corpus", hf_config="small", tokenizer="char",
                         workers=1, revision=revision, **kw)


def test_the_prepared_directory_changes_with_a_pinned_revision(tmp_path):
    names = {r: data.prepared_dir(_spec(r), tmp_path).name for r in ("", "v1", "v2", A)}
    assert len(set(names.values())) == 4
    # An empty revision leaves the name as it was before DATASET_REVISION existed.
    assert "revision" not in _spec("").identity()
    assert _spec("v1").identity()["revision"] == "v1"


def test_kconfig_symbol_reaches_the_spec_for_hub_datasets_only(tmp_path):
    def spec(*overrides):
        return data.spec_from_config(cfglib.from_kconf(cfglib.load_kconf(
            cfglib.ROOT / "defconfigs" / "default", list(overrides))))
    assert spec("DATASET=finewebedu", "DATASET_REVISION=v1.0").revision == "v1.0"
    assert spec("DATASET=openwebtext", f"DATASET_REVISION={A}").revision == A
    assert spec("DATASET=hf", "HF_NAME=x/y").revision == ""
    assert spec("DATASET=text-files", "TEXT_FILES_PATH=.").revision == ""
    # Not visible for local files: setting it there is refused, naming the symbol.
    with pytest.raises(cfglib.ConfigError, match="DATASET_REVISION=v1: dropped"):
        spec("DATASET=text-files", "TEXT_FILES_PATH=.", "DATASET_REVISION=v1")


def test_meta_records_name_config_splits_and_both_revisions(tmp_path, monkeypatch, capsys):
    fake = Hub(monkeypatch, {"v1": A})
    out = data.prepare_spec(_spec("v1", hf_val_split="validation"), tmp_path)
    inputs = data.read_meta(out)["inputs"]
    assert inputs["hf_name"] == "someone/corpus" and inputs["hf_config"] == "small"
    assert inputs["hf_split"] == "train" and inputs["hf_val_split"] == "validation"
    assert inputs["revision"] == "v1" and inputs["revision_sha"] == A
    assert fake.asked == [("someone/corpus", "v1")]
    # Every stream reads the resolved commit, not the movable name.
    # (the char tokenizer's vocabulary pass opens each stream once more)
    assert {(c["name"], c["config"], c["split"], c["revision"]) for c in fake.loads} == {
        ("someone/corpus", "small", "train", A), ("someone/corpus", "small", "validation", A)}
    assert capsys.readouterr().err.count("preparing it anew") == 0


def test_a_moved_default_branch_is_prepared_anew_in_one_line(tmp_path, monkeypatch, capsys):
    fake = Hub(monkeypatch, {"": A})
    out = data.prepare_spec(_spec(), tmp_path)
    assert data.read_meta(out)["inputs"]["revision_sha"] == A
    assert {c["revision"] for c in fake.loads} == {A}
    loads = len(fake.loads)

    assert data.prepare_spec(_spec(), tmp_path) == out  # same commit: reused, not read
    assert len(fake.loads) == loads
    capsys.readouterr()

    fake.commits[""] = B
    assert data.prepare_spec(_spec(), tmp_path) == out  # same name, new contents
    err = capsys.readouterr().err.strip().splitlines()
    moved = [line for line in err if "preparing it anew" in line]
    assert len(moved) == 1 and A in moved[0] and B in moved[0] and out.name in moved[0]
    assert {c["revision"] for c in fake.loads[loads:]} == {B}
    meta = data.read_meta(out)
    assert meta["inputs"]["revision_sha"] == B and meta["inputs"]["revision"] == ""
    assert not out.with_name(f".{out.name}.partial").exists()


def test_offline_a_full_commit_needs_no_hub_and_an_unpinned_one_keeps_the_prepared(
        tmp_path, monkeypatch):
    fake = Hub(monkeypatch, {"": A})
    unpinned = data.prepare_spec(_spec(), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "unreachable", lambda url: pytest.fail("connected offline"))
    fake.asked.clear()
    loads = len(fake.loads)
    assert data.prepare_spec(_spec(), tmp_path) == unpinned  # its own commit, not re-read
    assert len(fake.loads) == loads
    pinned = data.prepare_spec(_spec(B), tmp_path)
    assert fake.asked == [] and fake.loads[-1]["revision"] == B
    assert data.read_meta(pinned)["inputs"]["revision_sha"] == B
    # BUDGET=epochs reads sizes without asking the hub, online or not.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert data.split_sizes_spec(_spec(), str(tmp_path))["train"] > 0
    assert fake.asked == []


def test_unknown_revision_and_unreachable_hub_are_one_line_each(tmp_path, monkeypatch):
    fake = Hub(monkeypatch, {"": A})
    with pytest.raises(data.DataError) as e:
        data.prepare_spec(_spec("no-such-branch"), tmp_path)
    assert "DATASET_REVISION='no-such-branch'" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(hub, "unreachable", lambda url: "huggingface.co:443: refused")
    fake.asked.clear()
    with pytest.raises(data.DataError) as e:
        data.prepare_spec(_spec("v1"), tmp_path)
    assert "cannot be reached" in str(e.value) and fake.asked == [] and fake.loads == []


def test_a_local_directory_refuses_a_revision(tmp_path, monkeypatch):
    fake = Hub(monkeypatch, {})
    local = tmp_path / "ds"
    local.mkdir()
    spec = data.DataSpec("hf", hf_name=str(local), tokenizer="char", workers=1, revision="v1")
    with pytest.raises(data.DataError) as e:
        data.prepare_spec(spec, tmp_path / "out")
    message = str(e.value)
    assert "\n" not in message and "DATASET_REVISION='v1'" in message
    assert f"HF_NAME={local}" in message and "empty" in message
    out = data.prepare_spec(data.DataSpec("hf", hf_name=str(local), tokenizer="char",
                                          workers=1), tmp_path / "out")
    assert fake.asked == [] and fake.loads[0]["revision"] is None
    assert "revision" not in json.loads((out / "meta.json").read_text())["inputs"]


def test_a_corpus_prepared_before_revisions_were_recorded_is_prepared_anew(
        tmp_path, monkeypatch, capsys):
    fake = Hub(monkeypatch, {"": A})
    out = data.prepare_spec(_spec(), tmp_path)
    meta = data.read_meta(out)
    for field in huggingface.REVISION_FIELDS:
        del meta["inputs"][field]
    meta["key"] = pipeline.corpus_key(_spec().check(), Corpus("old", [], meta["inputs"]))
    (out / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    loads = len(fake.loads)
    data.prepare_spec(_spec(), tmp_path)
    moved = [line for line in capsys.readouterr().err.splitlines() if "anew" in line]
    assert len(moved) == 1 and "an unrecorded commit" in moved[0] and A in moved[0]
    assert len(fake.loads) > loads and data.read_meta(out)["inputs"]["revision_sha"] == A
