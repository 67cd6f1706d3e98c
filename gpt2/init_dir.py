"""INIT_FROM_DIR checked before anything is read: the directory, its config.json and its
weights file each resolve (no symlink loop) to what they must be (a directory, files),
and the shape config.json declares matches the configuration's. Every problem is one
ConfigError naming the knob, where the value led, and the way out."""
import json
import os
from pathlib import Path

from gpt2.hf_weights import load_pretrained
from gpt2.model import GPT
from lib import config as cfglib

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
FIX = ("set INIT_FROM_DIR to a directory holding config.json and model.safetensors (the "
       "Hugging Face GPT-2 layout), relative to where you run make or absolute, or leave it "
       "empty to train from scratch")


def _error(value: str, resolved, problem: str) -> cfglib.ConfigError:
    led = f" (it leads to {resolved})" if resolved is not None and str(resolved) != value else ""
    return cfglib.ConfigError(f'CONFIG_INIT_FROM_DIR="{value}"{led}: {problem}; {FIX}')


def _resolve(value: str, path: Path, what: str) -> Path:
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        raise _error(value, os.path.abspath(path), f"{what} does not exist") from None
    except (RuntimeError, OSError) as e:  # a symlink loop: RuntimeError before Python 3.13
        raise _error(value, os.path.abspath(path), f"{what} cannot be resolved "
                                             f"({(str(e).splitlines() or [''])[0]})") from None


def checked_dir(value: str) -> Path:
    """The directory INIT_FROM_DIR names, resolved, with config.json and a weights file."""
    directory = _resolve(value, Path(value).expanduser(), "the directory")
    if not directory.is_dir():
        raise _error(value, directory, "it is a file, not a directory")
    config = _resolve(value, directory / "config.json", "its config.json")
    if not config.is_file():
        raise _error(value, directory, f"{config} is a directory where a file is expected")
    present = [name for name in WEIGHT_FILES if (directory / name).exists()
               or (directory / name).is_symlink()]
    if not present:
        raise _error(value, directory, f"it holds no weights ({', '.join(WEIGHT_FILES)})")
    for name in present:
        weights = _resolve(value, directory / name, f"its {name}")
        if not weights.is_file():
            raise _error(value, directory, f"{weights} is a directory where a file is expected")
    return directory


def declared_shape(value: str, directory: Path) -> tuple:
    """(layers, heads, width, vocabulary, positions) as config.json declares them."""
    try:
        hf = json.loads((directory / "config.json").read_text())
        return tuple(int(hf[key]) for key in ("n_layer", "n_head", "n_embd", "vocab_size",
                                              "n_positions"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _error(value, directory, f"its config.json is not a GPT-2 configuration "
                                       f"({type(e).__name__}: {e})") from None


def load(cfg, want: tuple) -> GPT:
    """The model INIT_FROM_DIR holds; `want` is the configuration's (layers, heads, width,
    vocabulary, BLOCK_SIZE), which the weights must match (positions: at least)."""
    value = cfg.INIT_FROM_DIR
    directory = checked_dir(value)
    got = declared_shape(value, directory)
    if got[:4] != want[:4] or got[4] < want[4]:
        raise _error(value, directory, f"the weights' shape (layers, heads, width, vocab, "
                                       f"positions) is {got}, the configuration's (N_LAYER, "
                                       f"N_HEAD, N_EMBD, vocab, BLOCK_SIZE) is {want}: choose "
                                       f"the matching MODEL_SIZE, BLOCK_SIZE at most "
                                       f"{got[4]}, and DATASET for the vocabulary")
    try:
        return load_pretrained(directory, dropout=cfg.DROPOUT)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0][:400]
        raise _error(value, directory, f"its weights do not load into the shape its "
                                       f"config.json declares, {got} ({first})") from None
