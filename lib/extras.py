"""The optional extras of pyproject.toml, and which .config choices need which.

The core requirements run the default recipe on a CPU; an extra brings the library one
choice needs. `make` installs the extras the .config selects (`python -m lib.configtool
extras --install`); run without make, a missing one is an error naming its extra.
"""
import importlib.util

# (choice, value) -> (extra, the module it brings)
NEEDS = {
    ("DATASET", "finewebedu"): ("hub", "datasets"),
    ("DATASET", "openwebtext"): ("hub", "datasets"),
    ("DATASET", "hf"): ("hub", "datasets"),
    ("DATASET", "text-files"): ("hub", "datasets"),
    ("MATRIX_EXECUTOR", "slurm"): ("slurm", "submitit"),
    ("TRACKER", "trackio"): ("trackers", "trackio"),
    ("TRACKER", "wandb"): ("trackers", "wandb"),
    ("TRACKER", "tensorboard"): ("trackers", "tensorboard"),
}


def extra_of(module: str):
    """The extra that brings `module`, or None for a core requirement."""
    return next((extra for extra, mod in NEEDS.values() if mod == module), None)


def install_hint(module: str, package: str) -> str:
    """The pip command that installs what brings `module`."""
    extra = extra_of(module.split(".")[0]) or extra_of(package)
    return f"pip install -e '.[{extra}]'" if extra else f"pip install {package}"


def selected(cfg) -> dict:
    """{extra: module} for every extra the config's choices need."""
    return {extra: module for (choice, value), (extra, module) in NEEDS.items()
            if cfg.get(choice) == value}


def missing(cfg) -> list:
    """The selected extras whose module cannot be found in this Python, sorted."""
    return sorted(extra for extra, module in selected(cfg).items()
                  if importlib.util.find_spec(module) is None)
