"""Training-batch loaders: DATA_LOADER choice -> class with Batches' interface.

"memmap" is data.Batches (reads each batch from the token file). "preloaded" copies
each split to the device once and cuts batches there with one gather; it draws the
same offsets from the same generators, so a seed gives the same batches either way.
"""
import numpy as np
import torch

from gpt2.data import SPLITS, Batches, DataError


class PreloadedBatches(Batches):
    """Batches from the whole split held on the device (int32, 4 bytes per token)."""

    def __init__(self, prepared_dir, block_size: int, batch_size: int, device="cpu", seed: int = 0):
        super().__init__(prepared_dir, block_size, batch_size, device, seed)
        self._tokens = {}
        for split in SPLITS:
            data = np.fromfile(self.prepared_dir / f"{split}.bin", dtype=np.uint16)
            self._tokens[split] = torch.from_numpy(data.astype(np.int32)).to(self.device)
        self._offsets = torch.arange(self.block_size + 1, device=self.device)

    def get(self, split: str):
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}")
        tokens = self._tokens[split]
        starts = torch.randint(len(tokens) - self.block_size, (self.batch_size,),
                               generator=self._generators[split])
        block = tokens[starts.to(self.device, non_blocking=True)[:, None] + self._offsets].long()
        return block[:, :-1], block[:, 1:]


LOADERS = {"memmap": Batches, "preloaded": PreloadedBatches}
