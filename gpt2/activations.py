"""The activation memory of one micro-batch: a formula of the tensors autograd keeps, used
by `make estimate` (scripts/estimate.py) and by the batch-size finder on the CPU
(gpt2/batch_fit.py). Its accuracy is checked against a measured CPU run in
tests/test_estimate.py."""
from gpt2.budget import batch_size
from gpt2.model import MLPS

FP32 = 4
HALF = 2


def activation_bytes(cfg, shape) -> dict:
    """Bytes autograd keeps for one micro-batch: {"blocks": all blocks, "checkpointed":
    with ACTIVATION_CHECKPOINTING, "head": final norm and loss}.

    Per token and block (d = width, h = MLP hidden), the tensors saved for the backward:
    attention 7d (norm input and output, q k v, the attention output and its contiguous
    copy; RoPE +2d, QK-norm +2d; the math kernel also the heads x T softmax), MLP 2d + the
    MLP kind's saved_hidden x h; dropout masks one byte each. Under autocast the norms'
    inputs and outputs stay fp32 and their half-precision copies are kept too. With
    checkpointing only each block's input is kept, plus one block recomputed at a time.
    The backward adds the gradients it is working on: about one block, two with
    checkpointing (see the comment at the end)."""
    d, h, heads, t = shape.n_embd, shape.mlp_hidden, shape.n_head, shape.block_size
    tokens = batch_size(cfg) * t
    mixed = cfg.PRECISION != "fp32"
    half = HALF if mixed else FP32
    norm_fp32 = 4 * d  # two norms' inputs and outputs
    attn = 3 * d + 2 * d + (2 * d if shape.positions == "rope" else 0) + (
        2 * d if shape.qk_norm else 0)
    if cfg.ATTENTION_BACKEND == "math":
        attn += heads * t
    mlp = MLPS[shape.mlp].saved_hidden * h
    per_token = norm_fp32 * FP32 + (attn + mlp + (2 * d if mixed else 0)) * half
    if shape.dropout:
        per_token += 2 * d + (heads * t if cfg.ATTENTION_BACKEND == "math" else 0)
    block = per_token * tokens
    vocab = shape.padded_vocab_size
    if cfg.LOSS_CHUNK_TOKENS:
        loss = 3 * min(cfg.LOSS_CHUNK_TOKENS, tokens) * vocab * FP32
    else:  # the logits, log-softmax's output (fp32), a slice copy for smoothing
        loss = tokens * vocab * (FP32 + (half if mixed else 0) + FP32
                                 + (FP32 if cfg.LABEL_SMOOTHING else 0))
    head = 2 * d * tokens * FP32 + loss
    # The backward holds the gradients of one block's intermediates at a time, about one
    # more block's worth; with checkpointing the recomputed block and its gradients come on
    # top of the block the forward was building (3 blocks fit the CPU measurements).
    return {"blocks": block * (shape.n_layer + 1), "checkpointed": d * tokens * FP32
            * shape.n_layer + 3 * block, "head": head, "per_block": block}
