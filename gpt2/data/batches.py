"""The batch sampler: random (x, y) blocks from a prepared dataset's memory-mapped shards,
reproducible from a seed and resumable from its state."""
import numpy as np
import torch

from gpt2.data.errors import DataError
from gpt2.data.shards import SplitTokens, read_meta

# The splits batches are drawn from; the test split is only ever read whole, at the end.
SPLITS = ("train", "val")


class Batches:
    """Random (x, y) blocks from a prepared dataset, reproducible from a seed.

    Each split has its own generator, so how often the validation split is
    sampled does not change the training batches. A block may span two shards:
    the split reads as one sequence.
    """

    def __init__(self, prepared_dir, block_size: int, batch_size: int, device="cpu", seed: int = 0):
        self.block_size = int(block_size)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        meta = read_meta(prepared_dir)
        self.tokens = {s: SplitTokens(prepared_dir, s, meta) for s in SPLITS}
        for s in SPLITS:
            n = len(self.tokens[s])
            if self.block_size + 1 > n:
                raise DataError(f"block_size {self.block_size} + 1 exceeds the {n} tokens of the "
                                f"{s} split of {prepared_dir}")
        train_seed, val_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
        self._generators = {
            "train": torch.Generator().manual_seed(int(train_seed)),
            "val": torch.Generator().manual_seed(int(val_seed)),
        }

    @property
    def train_tokens(self) -> int:
        return len(self.tokens["train"])

    @property
    def val_tokens(self) -> int:
        return len(self.tokens["val"])

    def starts(self, split: str) -> torch.Tensor:
        """The next batch's block starts in `split` (advances its generator)."""
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return torch.randint(len(self.tokens[split]) - self.block_size, (self.batch_size,),
                             generator=self._generators[split])

    def get(self, split: str):
        return self.read(split, self.starts(split))

    def step(self, split: str, count: int, rank: int = 0, processes: int = 1) -> list:
        """The `count` micro-batches of one optimizer step, drawn in order as `count` calls
        of get() would draw them; of those, the contiguous share count/processes of `rank`.
        The processes of a run together see exactly the batches one process would."""
        starts = [self.starts(split) for _ in range(count)]
        share = count // processes
        return [self.read(split, s) for s in starts[rank * share:(rank + 1) * share]]

    def read(self, split: str, starts: torch.Tensor):
        """(x, y) of the blocks that begin at `starts`, on the device."""
        block = torch.from_numpy(self.tokens[split].windows(starts.numpy(), self.block_size + 1))
        x, y = block[:, :-1].contiguous(), block[:, 1:].contiguous()
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        """The data position: each split's generator state (uint8 tensors)."""
        return {s: g.get_state() for s, g in self._generators.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(SPLITS):
            raise DataError(f"Batches state must have the keys {SPLITS}, got {sorted(state)}")
        for s in SPLITS:
            self._generators[s].set_state(state[s].to(torch.uint8).cpu())
