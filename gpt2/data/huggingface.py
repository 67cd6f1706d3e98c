"""Hugging Face datasets: FineWeb-Edu, OpenWebText and any named dataset, through the
`datasets` library. Offline-first: the Hugging Face cache ($HF_HOME) answers first; with
HF_HUB_OFFLINE=1 (or HF_DATASETS_OFFLINE=1) only the cache is read. A corpus read
partly (DATA_MAX_TOKENS) is streamed when online, so nothing beyond the budget is
downloaded. A hub corpus is read at one commit (pin(): DATASET_REVISION, resolved by the
hub), recorded in its inputs, so a moved branch prepares it anew.
"""
import os
import sys
from pathlib import Path

import gpt2.data.hub as hub
import gpt2.data.paths as paths
from gpt2.data.corpus import Corpus, Stream, texts_of
from gpt2.data.errors import DataError
from lib import extras

FINEWEBEDU = "HuggingFaceFW/fineweb-edu"
OPENWEBTEXT = "Skylion007/openwebtext"
ROWS_PER_READ = 1000


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hf_home() -> str:
    return os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")


def _fetch_hint(name: str, config: str, split: str) -> str:
    args = ", ".join(repr(a) for a in (name, config) if a) + f", split={split!r}"
    # FineWeb-Edu keeps its sample-10BT config's files under sample/10BT/.
    part = (f"--include '{config.replace('-', '/', 1)}/*'" if name == FINEWEBEDU and config
            else "--include to take a part")
    return (
        f"To fetch it, on a machine with a network run\n"
        f"  HF_HOME=/some/dir python -c \"import datasets; datasets.load_dataset({args})\"\n"
        f"then copy /some/dir here and set HF_HOME to it (HF_HUB_OFFLINE=1 keeps it offline). "
        f"Or download its data files (huggingface-cli download --repo-type dataset {name} "
        f"--local-dir DIR, {part}) and prepare them with "
        f"DATASET=text-files, TEXT_FILES_PATH=DIR.")


LOCAL_ROUTE = ("or prepare local files instead: DATASET=text-files with TEXT_FILES_PATH, "
               "or DATASET=hf with HF_NAME=<a local dataset directory>")


def import_datasets(what: str):
    """The datasets library, or a DataError naming the extra that brings it."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{what} is read with the datasets package, which is not installed "
                        f"({e}): {extras.install_hint('datasets', 'datasets')} (`make` "
                        f"installs it into the project's .venv)") from None
    return datasets


def load(name: str, config: str, split: str, streaming: bool, what: str, revision=None):
    """datasets.load_dataset, every failure to find the data one DataError saying what is
    missing and how to fetch it. A hub name is not tried when the hub cannot be reached
    (one connection attempt, no retries). `revision`: the hub commit, branch or tag read."""
    datasets = import_datasets(what)

    local = is_local(name)
    if not local and not offline():
        hub.check_reachable(what, hf_home(), LOCAL_ROUTE)
    try:
        return datasets.load_dataset(name, config or None, split=split,
                                     streaming=streaming and not offline(),
                                     revision=None if local else revision)
    except (ConnectionError, FileNotFoundError, OSError, ValueError,
            datasets.exceptions.DatasetNotFoundError) as e:
        if offline() and not local:
            raise DataError(
                f"Cannot load {what}: it is not in the Hugging Face cache {hf_home()} and "
                f"HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set, so nothing was downloaded "
                f"({type(e).__name__}); unset it on a machine with network access, set HF_HOME "
                f"to a cache that holds it, {LOCAL_ROUTE}") from None
        mode = "the hub does not have it" if not local else "it cannot be read"
        raise DataError(
            f"Cannot load {what}: Hugging Face dataset {name!r}"
            f"{f', config {config!r}' if config else ''}, split {split!r} is not in the cache "
            f"{hf_home()} and {mode} ({type(e).__name__}: {e}).\n"
            + _fetch_hint(name, config, split)) from e


def is_local(name: str) -> bool:
    """HF_NAME names a local directory (or a path: './x', '/x', '~/x'), not a hub name."""
    return (name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_symlink()
            or Path(name).expanduser().exists())


def stream(name: str, config: str, split: str, text_field: str, streaming: bool,
           target_split, inputs: dict) -> Stream:
    """`inputs`: the corpus's inputs, read when the stream opens, after pin() has set the
    commit to read."""
    what = f"{name}{f' ({config})' if config else ''} split {split}"

    def open_at(skip: int):
        ds = load(name, config, split, streaming, what,
                  inputs.get("revision_sha") or inputs.get("revision") or None)
        columns = ds.column_names
        if columns is not None and text_field not in columns:
            raise DataError(f"{what} has no field {text_field!r} (TEXT_FIELD); its fields: "
                            f"{', '.join(columns)}")
        if columns is not None:
            ds = ds.select_columns([text_field])
        total = len(ds) if hasattr(ds, "__len__") else _known_rows(ds, split)
        if skip:
            ds = ds.skip(skip)
        return texts_of(ds.iter(batch_size=ROWS_PER_READ), text_field, what), total
    return Stream(what, target_split, open_at)


def _known_rows(ds, split: str):
    try:
        return ds.info.splits[split].num_examples
    except (AttributeError, KeyError, TypeError):
        return None


def named(spec) -> Corpus:
    """HF_NAME (a hub name or a local directory), HF_CONFIG, HF_SPLIT, HF_VAL_SPLIT,
    HF_TEST_SPLIT (a split not named is drawn from HF_SPLIT)."""
    if not spec.hf_name:
        raise DataError("DATASET=hf needs HF_NAME: a Hugging Face dataset name such as "
                        "HuggingFaceFW/fineweb-edu, or a local dataset directory")
    local = is_local(spec.hf_name)
    if local:
        paths.existing(spec.hf_name, "HF_NAME")
        paths.directory(spec.hf_name, "HF_NAME")
        if spec.revision:
            raise DataError(f"DATASET_REVISION={spec.revision!r} names a hub revision, but "
                            f"HF_NAME={spec.hf_name} is a local directory, which has none: "
                            f"set DATASET_REVISION empty")
    inputs = {"hf_name": spec.hf_name, "hf_config": spec.hf_config, "hf_split": spec.hf_split,
              "hf_val_split": spec.hf_val_split, "hf_test_split": spec.hf_test_split,
              "text_field": spec.text_field}
    if not local:
        inputs.update(revision=spec.revision, revision_sha=None)
    streaming = spec.max_tokens > 0
    streams = [stream(spec.hf_name, spec.hf_config, spec.hf_split, spec.text_field, streaming,
                      "train" if spec.hf_val_split and spec.hf_test_split else None, inputs)]
    if spec.hf_val_split:
        streams.append(stream(spec.hf_name, spec.hf_config, spec.hf_val_split, spec.text_field,
                              streaming, "val", inputs))
    if spec.hf_test_split:
        streams.append(stream(spec.hf_name, spec.hf_config, spec.hf_test_split, spec.text_field,
                              streaming, "test", inputs))
    label = "hf-" + "-".join(p for p in (spec.hf_name.replace("/", "--"), spec.hf_config,
                                         spec.hf_split) if p)
    return Corpus(label, streams, inputs)


def finewebedu(spec) -> Corpus:
    """HuggingFaceFW/fineweb-edu, the sample named by FINEWEBEDU_CONFIG; one split
    (train), so the validation split is drawn from it."""
    inputs = {"hf_name": FINEWEBEDU, "hf_config": spec.hf_config, "hf_split": "train",
              "revision": spec.revision, "revision_sha": None}
    return Corpus(f"finewebedu-{spec.hf_config}",
                  [stream(FINEWEBEDU, spec.hf_config, "train", "text", spec.max_tokens > 0, None,
                          inputs)], inputs)


def openwebtext(spec) -> Corpus:
    """Skylion007/openwebtext (8M web documents, about 9B GPT-2 tokens); one split."""
    inputs = {"hf_name": OPENWEBTEXT, "hf_split": "train", "revision": spec.revision,
              "revision_sha": None}
    return Corpus("openwebtext",
                  [stream(OPENWEBTEXT, "", "train", "text", spec.max_tokens > 0, None, inputs)],
                  inputs)


REVISION_FIELDS = ("revision", "revision_sha")


def _source(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in REVISION_FIELDS}


def pin(corpus: Corpus, recorded, out_name: str, resolve: bool) -> None:
    """Set the commit a hub corpus reads (corpus.inputs' revision_sha, which enters its
    key): a full commit hash is itself; otherwise, when `resolve` and online, the commit
    the hub gives for the revision, and one line when it differs from the one `recorded`
    (the prepared corpus's inputs, or None), which is then prepared anew. Offline, or
    when not resolving, the prepared corpus of the same source is taken as it is."""
    inputs = corpus.inputs
    if "revision" not in inputs:
        return  # a local directory: no revisions
    name, revision = inputs["hf_name"], inputs["revision"]
    same_source = isinstance(recorded, dict) and _source(recorded) == _source(inputs)
    if hub.FULL_COMMIT.fullmatch(revision):
        inputs["revision_sha"] = revision
        return
    if not resolve or offline():
        if same_source:
            inputs.clear()
            inputs.update(recorded)
        return
    sha = hub.resolve(name, revision, f"{name} at revision {revision or '(default branch)'}",
                      hf_home(), LOCAL_ROUTE)
    inputs["revision_sha"] = sha
    if same_source and sha is not None and recorded.get("revision_sha") != sha:
        old = recorded.get("revision_sha") or "an unrecorded commit"
        print(f"{out_name}: {name} {revision or 'default branch'} is now commit {sha}, the "
              f"prepared corpus was of {old}: preparing it anew", file=sys.stderr)
