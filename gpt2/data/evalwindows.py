"""The evaluation windows: fixed non-overlapping blocks of one split."""
import numpy as np
import torch

from gpt2.data.errors import DataError
from gpt2.data.shards import SPLITS, SplitTokens


class EvalWindows:
    """Fixed evaluation windows of one split: non-overlapping blocks of block_size tokens
    (inputs at k * block_size, targets one token on), so each token is predicted at most
    once. max_windows caps the count (None: every window the split holds); a cap below
    that picks windows spread evenly over the split. They depend only on the split's size
    and these arguments: identical at every evaluation and in every run."""

    def __init__(self, prepared_dir, split: str, block_size: int, batch_size: int,
                 max_windows=None, device="cpu"):
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.split_tokens = SplitTokens(prepared_dir, split)
        self.block_size, self.batch_size = int(block_size), int(batch_size)
        self.device = torch.device(device)
        n = len(self.split_tokens)
        available = (n - 1) // self.block_size
        if available < 1:
            raise DataError(f"block_size {self.block_size} + 1 exceeds the {n} tokens of the "
                            f"{split} split of {prepared_dir}")
        count = available if max_windows is None else min(int(max_windows), available)
        picked = np.linspace(0, available - 1, count).round().astype(np.int64)
        self.starts = picked * self.block_size

    @property
    def tokens(self) -> int:
        """Tokens predicted per pass over the windows."""
        return len(self.starts) * self.block_size

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        """(x, y) batches of batch_size windows (the last one may be smaller)."""
        for i in range(0, len(self.starts), self.batch_size):
            block = torch.from_numpy(self.split_tokens.windows(self.starts[i:i + self.batch_size],
                                                               self.block_size + 1))
            x, y = block[:, :-1].contiguous(), block[:, 1:].contiguous()
            yield x.to(self.device), y.to(self.device)
