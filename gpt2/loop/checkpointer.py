"""Checkpoint cadence and saving: every CHECKPOINT_INTERVAL iterations, at the last step
and when stopping, at most once per iteration (lib/checkpoint.py holds the format)."""
from lib import checkpoint


class Checkpointer:
    """Saves `state()` (the trainer's state dict, built on the main process only) plus the
    log window's state (which every process computes: it is a mean over them) to `path`."""

    def __init__(self, path, interval: int, is_main: bool, state, window):
        self.path, self.interval, self.is_main = path, interval, is_main
        self.state, self.window = state, window
        self.saved_iter = None  # the iteration the checkpoint at `path` holds

    def due(self, iteration: int, final: bool) -> bool:
        return iteration % self.interval == 0 or final

    def save(self, iteration: int, again: bool = False) -> None:
        """Save unless the checkpoint already holds `iteration` (`again`: save anyway,
        after something that iteration's checkpoint lacks, like the final evaluation)."""
        if self.saved_iter == iteration and not again:
            return
        window = self.window.state_dict()
        if self.is_main:
            checkpoint.save(self.path, {**self.state(), "log_window": window})
        self.saved_iter = iteration
