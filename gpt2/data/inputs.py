"""Raw inputs of the Shakespeare datasets and the GPT-2 BPE files: looked up in the
configured directory (Kconfig DATA_DIR), then $KMATRIX_DATA, then ../shared/data beside
the project, then a download cache, and only then downloaded from their public source.
"""
import os
import urllib.request
from pathlib import Path

import gpt2.data.paths as paths
from gpt2.data.errors import DataError
from lib.fsutil import atomic_write_bytes
from lib.hashing import sha256

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"

TEXT_FILE = "tinyshakespeare/input.txt"
ENCODER_JSON = "gpt2/encoder.json"
VOCAB_BPE = "gpt2/vocab.bpe"

_GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
# relative path -> (download URL, pinned sha256 or None)
SOURCES = {
    TEXT_FILE: (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        None,
    ),
    # The hashes tiktoken itself pins for the official GPT-2 files.
    ENCODER_JSON: (
        _GPT2_URL + "encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    VOCAB_BPE: (
        _GPT2_URL + "vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
DOWNLOAD_TIMEOUT_S = 60.0


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kmatrix" / "data"


def _search_dirs(data_dir: str) -> list[tuple[str, Path]]:
    """(label, directory) in lookup order."""
    dirs = []
    if data_dir:
        dirs.append(("DATA_DIR", paths.directory(data_dir, "DATA_DIR")))
    if os.environ.get("KMATRIX_DATA"):
        dirs.append(("$KMATRIX_DATA", Path(os.environ["KMATRIX_DATA"]).expanduser()))
    dirs.append(("shared data beside the project", SHARED_DATA_DIR))
    dirs.append(("download cache", _cache_dir()))
    return dirs


def download(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """The network access of this module, in one place (tests replace it)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _save_download(relpath: str, payload: bytes, dirs: list[tuple[str, Path]]) -> Path:
    errors = []
    for _, directory in dirs:
        target = directory / relpath
        try:
            atomic_write_bytes(target, payload)
            return target
        except OSError as e:
            errors.append(f"  {target.absolute()}: {e}")
    raise DataError(f"Downloaded {relpath} but could not save it anywhere:\n" + "\n".join(errors))


def find_input(relpath: str, data_dir: str = "") -> Path:
    """Path of a raw input file (a key of SOURCES), downloading it if needed."""
    url, expected_sha256 = SOURCES[relpath]
    dirs = _search_dirs(data_dir)
    looked = []
    for label, directory in dirs:
        candidate = paths.file_in(directory, relpath, label)
        if candidate is not None:
            return candidate
        looked.append(f"  {(directory / relpath).absolute()}  ({label})")

    if os.environ.get("KMATRIX_OFFLINE"):
        failure = f"downloading {url} was skipped (KMATRIX_OFFLINE is set)"
    else:
        try:
            payload = download(url)
        except Exception as e:  # any network failure ends in the one message below
            failure = f"downloading {url} failed: {e!r}"
        else:
            if expected_sha256 and sha256(payload) != expected_sha256:
                failure = f"the file downloaded from {url} has the wrong sha256"
            else:
                return _save_download(relpath, payload, dirs)

    raise DataError(
        f"Cannot find {relpath}. Looked in:\n" + "\n".join(looked) + "\n"
        f"and {failure}.\n"
        f"To provide it, set the Kconfig symbol DATA_DIR (make menuconfig, menu Data) "
        f"or the environment variable KMATRIX_DATA to a directory holding {relpath}."
    )
