"""Stop at a safe point: SIGINT, SIGTERM, SIGHUP (a closed terminal or ssh session) and
SIGUSR1 (which batch schedulers send ahead of a time limit) only set a flag; the trainer
reads it between steps, checkpoints and exits 130. A second signal while it saves
changes nothing, so it cannot cost the checkpoint (kill -9 still ends the process at
once)."""
import contextlib
import signal

# The signals by which a user (Ctrl-C, kill, a closed terminal) or a batch scheduler stops
# work: the trainer checkpoints and exits 130, the matrix runner passes them on, and a cell
# they end is interrupted, not failed. The one list; everything else imports it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


@contextlib.contextmanager
def handled_by(handler):
    """While inside, every stop signal calls handler(signum, frame); the old handlers after."""
    old = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


class StopRequest:
    """Context manager: while inside, the stop signals are noted instead of acted on."""

    def __init__(self):
        self.signum = None
        self.count = 0
        self._old = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _note(self, signum, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
