"""The run's logs: rank 0 writes train.log and, through tqdm, stderr; the other ranks
write errors only, marked with their rank."""
import logging
import sys

from tqdm import tqdm

from lib.run import RunDir


def quiet_logging(rank: int) -> logging.Logger:
    """Ranks other than 0 write no log; their errors go to stderr, marked with the rank."""
    log = logging.getLogger(f"kmatrix.train.rank{rank}")
    log.handlers.clear()
    log.setLevel(logging.ERROR)
    log.propagate = False
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
    log.addHandler(to_stderr)
    return log


def setup_logging(run: RunDir) -> logging.Logger:
    log = logging.getLogger("kmatrix.train")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    to_file = logging.FileHandler(run.log)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    class ToTqdm(logging.Handler):
        def emit(self, record):
            tqdm.write(self.format(record), file=sys.stderr)

    log.addHandler(to_file)
    log.addHandler(ToTqdm())
    return log
