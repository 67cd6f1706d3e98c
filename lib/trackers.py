"""Experiment trackers (TRACKER choice): the metrics writer passes each record it writes to
metrics.jsonl on to the selected one; nothing else calls a tracker. Each tracker's
package is optional: check() turns a missing one into a ConfigError naming the knob and
the package, before the run directory is touched."""
import math
from pathlib import Path

from lib.config import require

STEP_KEYS = ("kind", "iter")  # the record's kind prefixes its keys; iter is the step


def _scalars(record: dict) -> dict:
    """{"train/loss": 3.2, ...}: the record's finite numbers, named <kind>/<key>."""
    kind = record.get("kind", "metrics")
    return {f"{kind}/{key}": value for key, value in record.items()
            if key not in STEP_KEYS and isinstance(value, (int, float))
            and not isinstance(value, bool) and math.isfinite(value)}


class WandbLike:
    """wandb and trackio share one API: init(project, name, config), log(dict, step),
    finish()."""

    def __init__(self, module, project: str, name: str, config: dict, directory: Path):
        self.module = module
        kwargs = {"dir": str(directory)} if module.__name__ == "wandb" else {}
        self.run = module.init(project=project, name=name, config=config, resume="allow",
                               **kwargs)

    def log(self, record: dict) -> None:
        self.module.log(_scalars(record), step=record.get("iter"))

    def close(self) -> None:
        self.module.finish()


class TensorBoard:
    def __init__(self, module, project: str, name: str, config: dict, directory: Path):
        self.writer = module.SummaryWriter(log_dir=str(directory / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k} = {v!r}"
                                                 for k, v in sorted(config.items())))

    def log(self, record: dict) -> None:
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record.get("iter"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# TRACKER choice -> (module to import, pip package, class); none is no tracker at all.
TRACKERS = {
    "trackio": ("trackio", "trackio", WandbLike),
    "wandb": ("wandb", "wandb", WandbLike),
    "tensorboard": ("torch.utils.tensorboard", "tensorboard", TensorBoard),
}


def _import(choice: str):
    module, package, _ = TRACKERS[choice]
    return require(module, f"TRACKER_{choice.upper()}", package, "select TRACKER_NONE")


def check(cfg) -> None:
    """Raise ConfigError now if the selected tracker cannot be imported."""
    if cfg.TRACKER != "none":
        _import(cfg.TRACKER)


def start(cfg, run_dir: Path, run_name: str):
    """The selected tracker, started for this run; None for TRACKER_NONE."""
    if cfg.TRACKER == "none":
        return None
    module = _import(cfg.TRACKER)
    _, _, cls = TRACKERS[cfg.TRACKER]
    return cls(module, cfg.TRACKER_PROJECT or cfg.RECIPE, cfg.TRACKER_RUN_NAME or run_name,
               dict(cfg), Path(run_dir))
