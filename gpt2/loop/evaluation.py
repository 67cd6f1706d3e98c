"""Evaluation: loss, perplexity and next-token accuracy over fixed windows of each split."""
import math

import torch

from gpt2 import data
from lib.distributed import Distributed


def eval_windows(prepared, cfg, device, batch=None) -> dict:
    """{split: data.EvalWindows}, fixed for the run: EVAL_ITERS batches at most, the whole
    validation split with EVAL_WHOLE_SPLIT; read `batch` windows at a time (default
    BATCH_SIZE: the count stays the asked config's whatever micro-batch trains)."""
    most = cfg.EVAL_ITERS * cfg.BATCH_SIZE
    return {split: data.EvalWindows(prepared, split, cfg.BLOCK_SIZE, batch or cfg.BATCH_SIZE,
                                    None if whole else most, device)
            for split, whole in (("train", False), ("val", cfg.EVAL_WHOLE_SPLIT))}


@torch.no_grad()
def evaluate(model, windows: dict, autocast, ranks: Distributed = Distributed()) -> dict:
    """Loss, perplexity and next-token accuracy over each split's fixed windows (means over
    every predicted token). Several processes share the batches and sum their results,
    so every rank returns the same figures."""
    model.eval()
    result = {}
    for split, batches in windows.items():
        loss_sum = correct = 0
        for k, (x, y) in enumerate(batches):
            if k % ranks.world_size != ranks.rank:
                continue
            with autocast:
                logits, loss = model(x, y)
            loss_sum = loss_sum + loss.float() * y.numel()
            correct = correct + (logits.argmax(-1) == y).sum()
        if ranks.world_size > 1:
            loss_sum = ranks.sum(torch.as_tensor(loss_sum, dtype=torch.float32, device=x.device))
            correct = ranks.sum(torch.as_tensor(correct, device=x.device))
        result[f"{split}_loss"] = (loss_sum / batches.tokens).item()
        result[f"{split}_acc"] = (correct / batches.tokens).item()
        if split != "train":
            result[f"{split}_ppl"] = math.exp(min(result[f"{split}_loss"], 700.0))
    model.train()
    return result
