"""The loss, apart from the model: cross-entropy over the head's logits, label-smoothed
(LABEL_SMOOTHING), a chunk of positions at a time (LOSS_CHUNK_TOKENS), plus the bio MLPs'
activation penalty (BIO_SPARSITY_PENALTY).

GPT.forward(idx, targets, loss) hands its final hidden states to `loss`, so the loss runs
inside the module the trainer calls (DDP, torch.compile). Evaluation passes nothing and
gets PLAIN: plain cross-entropy and the logits, comparable across runs whatever they
trained with. The trainer passes training_loss(cfg).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def cross_entropy(padded_logits: torch.Tensor, targets: torch.Tensor, vocab: int,
                  smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of logits (..., padded vocab) against targets (-1 ignored)."""
    if smoothing:
        # Smoothing spreads mass over every column, so the padding must be cut off.
        return F.cross_entropy(padded_logits[..., :vocab].reshape(-1, vocab),
                               targets.reshape(-1), ignore_index=-1, label_smoothing=smoothing)
    # Padding columns get -inf: they never win, the softmax equals the unpadded one, and
    # the loss reads the contiguous padded logits without a copy.
    padded_logits[..., vocab:] = float("-inf")
    return F.cross_entropy(padded_logits.view(-1, padded_logits.size(-1)), targets.reshape(-1),
                           ignore_index=-1)


def chunked_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                          vocab: int, chunk: int, smoothing: float = 0.0) -> torch.Tensor:
    """cross_entropy(head(hidden)), `chunk` positions at a time. Each chunk's logits are
    recomputed in the backward (checkpoint), so at most one chunk of logits and its
    gradient are alive; the full logits never exist."""
    hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)

    def chunk_loss(h, t):
        logits = head(h)[:, :vocab]
        return F.cross_entropy(logits.float(), t, ignore_index=-1, reduction="sum",
                               label_smoothing=smoothing)

    total = sum(checkpoint(chunk_loss, hidden[i:i + chunk], targets[i:i + chunk],
                           use_reentrant=False)
                for i in range(0, hidden.size(0), chunk))
    return total / (targets != -1).sum()


def activation_mean(model) -> torch.Tensor:
    """Mean |activation| of the bio MLPs in the model's last forward pass (they keep it
    when GPTConfig.bio_sparsity_penalty is on)."""
    return torch.stack([block.mlp.abs_mean for block in model.transformer.h]).mean()


@dataclass(frozen=True)
class Loss:
    """What GPT.forward returns for hidden states and targets: (logits, loss), logits
    None when chunked (they never exist whole)."""
    label_smoothing: float = 0.0
    chunk_tokens: int = 0  # 0: the whole logits at once
    activation_penalty: float = 0.0  # weight of activation_mean

    def __call__(self, model, hidden: torch.Tensor, targets: torch.Tensor) -> tuple:
        vocab = model.config.vocab_size
        if self.chunk_tokens:
            logits, loss = None, chunked_cross_entropy(model.lm_head, hidden, targets, vocab,
                                                       self.chunk_tokens, self.label_smoothing)
        else:
            padded = model.lm_head(hidden)
            loss = cross_entropy(padded, targets, vocab, self.label_smoothing)
            logits = padded[..., :vocab]
        if self.activation_penalty:
            loss = loss + self.activation_penalty * activation_mean(model)
        return logits, loss


PLAIN = Loss()  # evaluation's loss, and the default of GPT.forward


def training_loss(cfg) -> Loss:
    """The loss the Config trains with."""
    return Loss(label_smoothing=cfg.LABEL_SMOOTHING, chunk_tokens=cfg.LOSS_CHUNK_TOKENS,
                activation_penalty=cfg.BIO_SPARSITY_PENALTY or 0.0)
