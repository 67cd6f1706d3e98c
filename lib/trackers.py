"""Experiment trackers (TRACKER choice): the metrics writer passes each record it writes to
metrics.jsonl on to the selected one; nothing else calls a tracker. Each tracker's
package is optional (the `trackers` extra): check() turns a missing one into a ConfigError
naming the knob and the pip command, before the run directory is touched. Each tracker
says where it writes (where()); the run's log gets those lines when it starts and when it
ends."""
import math
import secrets
from shlex import quote
from pathlib import Path

from lib.config import ConfigError, require
from lib.fsutil import atomic_write_text

STEP_KEYS = ("kind", "iter")  # the record's kind prefixes its keys; iter is the step


def _scalars(record: dict) -> dict:
    """{"train/loss": 3.2, ...}: the record's finite numbers, named <kind>/<key>."""
    kind = record.get("kind", "metrics")
    return {f"{kind}/{key}": value for key, value in record.items()
            if key not in STEP_KEYS and isinstance(value, (int, float))
            and not isinstance(value, bool) and math.isfinite(value)}


def _wandb_run_id(directory: Path) -> str:
    """The W&B run id the run directory keeps, made at its first start, so that a resumed
    run continues its W&B run instead of starting another."""
    path = directory / "wandb" / "kmatrix-run-id"
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)  # W&B ids: letters and digits
    atomic_write_text(path, run_id + "\n")
    return run_id


class Wandb:
    """Weights & Biases, online or offline as TRACKER_WANDB_MODE says (not WANDB_MODE)."""

    def __init__(self, module, cfg, directory: Path, project: str, name: str):
        self.module, self.mode = module, cfg.TRACKER_WANDB_MODE
        try:
            self.run = module.init(project=project, name=name, config=dict(cfg),
                                   dir=str(directory), mode=self.mode, resume="allow",
                                   id=_wandb_run_id(directory))
        except module.errors.Error as e:
            raise ConfigError(f"CONFIG_TRACKER_WANDB_MODE_{self.mode.upper()}=y: wandb could "
                              f"not start the run ({e}): `wandb login` (or WANDB_API_KEY) "
                              f"and the network, or select TRACKER_WANDB_MODE_OFFLINE or "
                              f"TRACKER_NONE") from None
        self.sync_dir = Path(self.run.settings.sync_dir)
        self.url = self.run.url

    def log(self, record: dict) -> None:
        self.module.log(_scalars(record), step=record.get("iter"))

    def close(self) -> None:
        self.module.finish()

    def where(self) -> list:
        if self.mode == "offline":
            return [f"wandb: offline run in {self.sync_dir}",
                    f"wandb: upload it with: wandb sync {quote(str(self.sync_dir))}"]
        return [f"wandb: {self.url}", f"wandb: local copy in {self.sync_dir}"]


class Trackio:
    """trackio, in its local store ($TRACKIO_DIR, else $HF_HOME/trackio)."""

    def __init__(self, module, cfg, directory: Path, project: str, name: str):
        self.module, self.project = module, project
        self.run = module.init(project=project, name=name, config=dict(cfg), resume="allow")
        from trackio.sqlite_storage import SQLiteStorage  # the store trackio writes to
        self.store = SQLiteStorage.get_project_db_path(project)

    def log(self, record: dict) -> None:
        self.module.log(_scalars(record), step=record.get("iter"))

    def close(self) -> None:
        self.module.finish()

    def where(self) -> list:
        lines = [f"trackio: project {self.project!r} in {self.store}",
                 f"trackio: open its dashboard with: trackio show --project {quote(self.project)}"]
        if self.run.url:  # a Space or a server (TRACKIO_SPACE_ID, TRACKIO_SERVER_URL)
            lines.append(f"trackio: also at {self.run.url}")
        return lines


class TensorBoard:
    def __init__(self, module, cfg, directory: Path, project: str, name: str):
        self.log_dir = directory / "tensorboard"
        self.writer = module.SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", "\n".join(f"    {k} = {v!r}"
                                                 for k, v in sorted(dict(cfg).items())))

    def log(self, record: dict) -> None:
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record.get("iter"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def where(self) -> list:
        return [f"tensorboard: event files in {self.log_dir}",
                f"tensorboard: view with: tensorboard --logdir {quote(str(self.log_dir))}"]


class Announced:
    """A tracker that says where it writes, through the run's logger, when it starts and
    when it ends."""

    def __init__(self, tracker, logger):
        self.tracker, self.logger = tracker, logger
        self._say()

    def _say(self) -> None:
        for line in self.tracker.where():
            self.logger.info(line)

    def log(self, record: dict) -> None:
        self.tracker.log(record)

    def close(self) -> None:
        self.tracker.close()
        self._say()


# TRACKER choice -> (module to import, pip package, class); none is no tracker at all.
TRACKERS = {
    "trackio": ("trackio", "trackio", Trackio),
    "wandb": ("wandb", "wandb", Wandb),
    "tensorboard": ("torch.utils.tensorboard", "tensorboard", TensorBoard),
}


def _import(choice: str):
    module, package, _ = TRACKERS[choice]
    return require(module, f"TRACKER_{choice.upper()}", package, "select TRACKER_NONE")


def check(cfg) -> None:
    """Raise ConfigError now if the selected tracker cannot be imported."""
    if cfg.TRACKER != "none":
        _import(cfg.TRACKER)


def start(cfg, run_dir: Path, run_name: str, logger=None):
    """The selected tracker, started for this run (saying where it writes through `logger`
    when given); None for TRACKER_NONE."""
    if cfg.TRACKER == "none":
        return None
    module = _import(cfg.TRACKER)
    _, _, cls = TRACKERS[cfg.TRACKER]
    tracker = cls(module, cfg, Path(run_dir), cfg.TRACKER_PROJECT or cfg.RECIPE,
                  cfg.TRACKER_RUN_NAME or run_name)
    return Announced(tracker, logger) if logger is not None else tracker
