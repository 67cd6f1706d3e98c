"""The training loop's parts, each a small object that owns its state: where training
stands (progress.py), the log window (log_window.py), checkpoint cadence and saving
(checkpointer.py) and the progress bar (bar.py). gpt2/train.py's Trainer.fit calls them."""


class TrainingFailed(Exception):
    """Training cannot go on (non-finite loss, out of memory); the message says why."""
