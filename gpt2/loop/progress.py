"""Where training stands: saved in every checkpoint as dataclasses.asdict(progress) (plain
ints, floats, strings and dicts, which torch.load(weights_only=True) reads) and restored
with Progress(**saved). What belongs to one session only (startup time, the step clock)
stays out of it."""
import math
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""
    iter: int = 0
    tokens_seen: int = 0
    train_time_s: float = 0.0
    best_val_loss: float = math.inf
    last_eval: dict = field(default_factory=dict)
    eval_iter: int = None  # the iteration last_eval belongs to
    test: dict = None  # the test split's figures, measured once after the final evaluation
    init_hash: str = None  # gpt2/pairing.py
    data_hash: str = None
    compile_s: float = 0.0  # lib/steptime.py: warm-up beyond steady steps, all sessions
    steady_step_s: float = None
