"""Training-batch loaders: DATA_LOADER choice -> class with Batches' interface.

"memmap" is batches.Batches (reads each batch from the token file). "preloaded" copies
each split to the device once and cuts batches there with one gather; it draws the
same offsets from the same generators, so a seed gives the same batches either way.
"""
import numpy as np
import torch

from gpt2.data.batches import SPLITS, Batches


class PreloadedBatches(Batches):
    """Batches from the whole split held on the device (int32, 4 bytes per token)."""

    def __init__(self, prepared_dir, block_size: int, batch_size: int, device="cpu", seed: int = 0):
        super().__init__(prepared_dir, block_size, batch_size, device, seed)
        self._tokens = {split: torch.from_numpy(self._read_all(self.tokens[split])).to(self.device)
                        for split in SPLITS}
        self._offsets = torch.arange(self.block_size + 1, device=self.device)

    @staticmethod
    def _read_all(split_tokens) -> np.ndarray:
        """The split's shards, concatenated, as int32 (the gather's index width)."""
        out = np.empty(len(split_tokens), dtype=np.int32)
        for path, start, n in zip(split_tokens.paths, split_tokens.offsets, split_tokens.sizes):
            out[start:start + n] = np.memmap(path, dtype=split_tokens.dtype, mode="r")[:n]
        split_tokens.check_tokens(out, [0])  # once, on the host: batches are cut on the device
        return out

    def read(self, split: str, starts: torch.Tensor):
        block = self._tokens[split][starts.to(self.device, non_blocking=True)[:, None] + self._offsets]
        block = block.long()
        return block[:, :-1], block[:, 1:]


LOADERS = {"memmap": Batches, "preloaded": PreloadedBatches}
