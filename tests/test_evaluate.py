"""train.evaluate against a directly computed token-weighted cross-entropy and accuracy."""
import math

import pytest
import torch
import torch.nn.functional as F

from gpt2 import data, train
from gpt2.build import build_model
from lib import config as cfglib


def test_evaluate_is_the_token_weighted_cross_entropy_and_accuracy(tiny_config):
    """11 windows in batches of 8: a short last batch of 3, so a mean of batch means would
    differ. Dropout and label smoothing are on: evaluation must use neither."""
    cfg = cfglib.load(tiny_config("DROPOUT=0.3", "LABEL_SMOOTHING=0.1"))
    prepared = data.prepare(cfg.DATASET, cfg.DATA_DIR, cfg.RESULTS_DIR + "/_data",
                            cfg.TRAIN_SPLIT)
    vocab = data.vocab_size(prepared)
    windows = {split: data.EvalWindows(prepared, split, cfg.BLOCK_SIZE, 8, 11)
               for split in ("train", "val")}
    assert [len(y) for _, y in windows["val"]] == [8, 3]
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    got = train.evaluate(model, windows, torch.autocast("cpu", enabled=False))
    assert model.training  # evaluate hands the model back in training mode

    model.eval()
    with torch.no_grad():
        for split, batches in windows.items():
            nll, hits, count = 0.0, 0, 0
            for x, y in batches:
                for row in range(len(x)):  # one window at a time: no batching to trust
                    logits, _ = model(x[row:row + 1], y[row:row + 1])
                    logits = logits[0, :, :vocab].double()
                    nll += F.cross_entropy(logits, y[row], reduction="sum").item()
                    hits += int((logits.argmax(-1) == y[row]).sum())
                    count += y[row].numel()
            assert count == 11 * cfg.BLOCK_SIZE
            assert got[f"{split}_loss"] == pytest.approx(nll / count, rel=1e-5)
            assert got[f"{split}_acc"] == pytest.approx(hits / count, abs=1.5 / count)  # a near-tie may flip
    assert got["val_ppl"] == pytest.approx(math.exp(got["val_loss"]), rel=1e-12)
    batch_means = []
    with torch.no_grad():
        for x, y in windows["val"]:
            batch_means.append(model(x, y)[1].item())
    assert abs(sum(batch_means) / 2 - got["val_loss"]) > 1e-4  # the short batch weighs less
