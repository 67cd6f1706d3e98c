"""The training loop's parts, each a small object or function with one job, which
gpt2/train.py's Trainer.fit calls in turn: where training stands (progress.py, saved with
dataclasses.asdict), the log window (log_window.py), checkpoint cadence and saving
(checkpointer.py), the progress bar (bar.py), evaluation (evaluation.py), the run's logs
(logs.py) and summary.json's figures (summary.py)."""


class TrainingFailed(Exception):
    """Training cannot go on (non-finite loss, out of memory); the message says why."""
