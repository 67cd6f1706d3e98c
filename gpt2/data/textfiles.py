"""Local text files: a file, a directory (searched recursively) or a glob of .txt, .jsonl
(.json) or .parquet files, read through the `datasets` builders of the same names, the
code path of a hub dataset. A .txt file is one document; a .jsonl line or a parquet row
is one, its text in TEXT_FIELD. Files are read in sorted path order.
"""
import glob
from pathlib import Path

import gpt2.data.decoding as decoding
import gpt2.data.paths as paths
from gpt2.data.corpus import Corpus, Stream, texts_of
from gpt2.data.errors import DataError
from gpt2.data.huggingface import ROWS_PER_READ, import_datasets

# file suffix -> (datasets builder, its options)
BUILDERS = {
    ".txt": ("text", {"sample_by": "document"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


def resolve(pattern: str, symbol: str) -> list:
    """The files `pattern` names, sorted; one suffix of BUILDERS for all of them."""
    path = Path(pattern).expanduser()
    if not glob.has_magic(str(path)):
        path = paths.existing(pattern, symbol)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS)
        for p in found:
            paths.unreadable_entry(p, symbol, pattern)
        files = [p for p in found if p.is_file()]
    else:
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        for p in found:
            paths.unreadable_entry(p, symbol, pattern)
        files = [p for p in found if p.is_file()]
    _no_file_twice(files, symbol, pattern)
    if not files:
        raise DataError(f"{symbol}={pattern!r} names no file (a file, a directory or a glob of "
                        f"{', '.join(BUILDERS)} files, relative to where you run make)")
    suffixes = sorted({p.suffix for p in files})
    if len(suffixes) > 1 or suffixes[0] not in BUILDERS:
        raise DataError(f"{symbol}={pattern!r} names files of the kinds {', '.join(suffixes)}; "
                        f"give files of one kind: {', '.join(BUILDERS)}")
    return [p.absolute() for p in files]


def _no_file_twice(files: list, symbol: str, pattern: str) -> None:
    """Two names of one file (a glob through a symbolic link back up the tree)."""
    seen = {}
    for p in files:
        real = p.resolve()
        if real in seen:
            raise DataError(f"{symbol}={pattern!r} names {real} twice ({seen[real]} and {p}): "
                            f"a symbolic link leads back into the tree; narrow the pattern")
        seen[real] = p


def stream(files: list, symbol: str, text_field: str, target_split,
           decode: str = "strict") -> Stream:
    builder, options = BUILDERS[files[0].suffix]
    options = {**options, **decoding.builder_options(files[0].suffix, decode)}
    field = "text" if builder == "text" else text_field
    what = f"{symbol} ({len(files)} {files[0].suffix} file{'s' if len(files) > 1 else ''})"

    def open_at(skip: int):
        texts, total = _open_at(skip)
        return decoding.guarded(texts, files, symbol), total

    def _open_at(skip: int):
        datasets = import_datasets(what)

        try:
            ds = datasets.load_dataset(builder, data_files=[str(p) for p in files],
                                       split="train", streaming=True, **options)
        except (OSError, ValueError) as e:
            decoding.raise_if_invalid(files, symbol)
            raise DataError(f"Cannot read {what}: {e}") from e
        if ds.column_names is not None:
            if field not in ds.column_names:
                raise DataError(f"{what} has no field {field!r} (TEXT_FIELD); its fields: "
                                f"{', '.join(ds.column_names)}")
            ds = ds.select_columns([field])
        if skip:
            ds = ds.skip(skip)
        total = len(files) if builder == "text" else None
        # A .txt row is a whole file: read one at a time, so memory follows the largest file.
        rows = ds.iter(batch_size=1 if builder == "text" else ROWS_PER_READ)
        return texts_of(rows, field, what), total
    return Stream(what, target_split, open_at)


def _fingerprint(files: list) -> dict:
    return {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def corpus(spec) -> Corpus:
    """TEXT_FILES_PATH, and TEXT_FILES_VAL_PATH / TEXT_FILES_TEST_PATH as the validation /
    test split when set (a split not named is drawn from TEXT_FILES_PATH)."""
    if not spec.text_files:
        raise DataError("DATASET=text-files needs TEXT_FILES_PATH: a file, a directory or a "
                        "glob of .txt, .jsonl or .parquet files")
    train = resolve(spec.text_files, "TEXT_FILES_PATH")
    streams = [stream(train, "TEXT_FILES_PATH", spec.text_field,
                      "train" if spec.text_files_val and spec.text_files_test else None,
                      spec.text_decode)]
    inputs = {"train": _fingerprint(train), "text_field": spec.text_field}
    if spec.text_files_val:
        val = resolve(spec.text_files_val, "TEXT_FILES_VAL_PATH")
        streams.append(stream(val, "TEXT_FILES_VAL_PATH", spec.text_field, "val",
                              spec.text_decode))
        inputs["val"] = _fingerprint(val)
    if spec.text_files_test:
        test = resolve(spec.text_files_test, "TEXT_FILES_TEST_PATH")
        streams.append(stream(test, "TEXT_FILES_TEST_PATH", spec.text_field, "test",
                              spec.text_decode))
        inputs["test"] = _fingerprint(test)
    if spec.text_decode != "strict":  # the policy changes only files with bad bytes
        inputs["decode"] = spec.text_decode
    name = Path(spec.text_files.rstrip("/")).name.replace("*", "").strip(".-_") or "files"
    return Corpus(f"text-files-{name}", streams, inputs)
