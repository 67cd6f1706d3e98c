"""GPT-2 in one file: the model and sampling.

Module and parameter names follow Hugging Face's GPT2LMHeadModel
(transformer.wte, transformer.h.0.attn.c_attn, ..., lm_head), so checkpoints
map onto this model key for key (gpt2/hf_weights.py loads them). Each architecture choice (NORM, POSITIONS, FUSED_QKV,
MLP, GELU) picks a small class or function from its registry; the loss options live in
gpt2/losses.py.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gpt2 import losses

# Matmuls are faster when the vocab dimension is a multiple of this.
VOCAB_PAD_MULTIPLE = 64

LAYER_NORM_EPS = 1e-5
INIT_STD = 0.02


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    # Architecture knobs; the defaults are GPT-2's own, so HF weights load exactly.
    norm: str = "layernorm"  # key of NORMS
    qk_norm: bool = False
    positions: str = "learned"  # key of POSITIONS
    rope_base: float = 10000.0
    mlp: str = "gelu"  # key of MLPS
    gelu: str = "tanh"  # key of GELUS: the GELU of the "gelu" and "geglu" MLPs
    gated_hidden_multiple: int = 64  # gated MLPs: 2/3 * 4d rounded up to a multiple of this
    gated_match_params: bool = True  # gated MLPs: 2/3 * 4d (same weights as 4d ungated), else 4d
    # > 0: the bio MLPs keep their mean |activation| for gpt2/losses.py's penalty
    bio_sparsity_penalty: float = 0.0
    fused_qkv: bool = True
    checkpoint_blocks: bool = False  # recompute each block's activations in the backward

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for field_name, value, allowed in (("norm", self.norm, NORMS), ("mlp", self.mlp, MLPS),
                                           ("positions", self.positions, POSITIONS),
                                           ("gelu", self.gelu, GELUS)):
            if value not in allowed:
                raise ValueError(f"{field_name} {value!r} is not one of {', '.join(allowed)}")
        if self.bio_sparsity_penalty and self.mlp != "bio":
            raise ValueError(f"bio_sparsity_penalty needs mlp 'bio', not {self.mlp!r}")
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"RoPE needs an even head size, got {self.n_embd // self.n_head}")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the MLP: 4d, or for a gated MLP (two input matrices) 2/3 of it
        rounded up to gated_hidden_multiple, which keeps the weight count of 4d ungated."""
        if not MLPS[self.mlp].gated or not self.gated_match_params:
            return 4 * self.n_embd
        multiple = self.gated_hidden_multiple
        return math.ceil(2 * 4 * self.n_embd / 3 / multiple) * multiple


# --- normalisation ----------------------------------------------------------

def _layer_norm(width: int, bias: bool) -> nn.Module:
    return nn.LayerNorm(width, eps=LAYER_NORM_EPS, bias=bias)


def _rms_norm(width: int, bias: bool) -> nn.Module:
    # RMSNorm has a gain only: x / sqrt(mean(x^2) + eps) * weight.
    return nn.RMSNorm(width, eps=LAYER_NORM_EPS)


def _no_norm(width: int, bias: bool) -> nn.Module:
    return nn.Identity()


NORMS = {"layernorm": _layer_norm, "rmsnorm": _rms_norm}


# --- positions --------------------------------------------------------------

class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021): rotate each pair (i, i + head_dim/2) of q and k by the angle
    position * base^(-2i/head_dim), so q.k depends on positions only through their
    difference. The tables are buffers outside the state dict (they follow from the shape)."""

    def __init__(self, head_dim: int, block_size: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n_head, T, head_dim) -> the same, rotated by position."""
        seq_len = x.size(-2)
        cos, sin = self.cos[:seq_len].to(x.dtype), self.sin[:seq_len].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class LearnedPositions:
    """GPT-2's table of position vectors (transformer.wpe), added to the token embeddings."""

    @staticmethod
    def embeddings(config: GPTConfig) -> dict:
        return {"wpe": nn.Embedding(config.block_size, config.n_embd)}

    @staticmethod
    def rotation(config: GPTConfig) -> nn.Module:
        return nn.Identity()


class RotaryPositions:
    """RoPE: no table; every attention layer rotates its queries and keys."""

    @staticmethod
    def embeddings(config: GPTConfig) -> dict:
        return {}

    @staticmethod
    def rotation(config: GPTConfig) -> nn.Module:
        return RotaryEmbedding(config.n_embd // config.n_head, config.block_size, config.rope_base)


# POSITIONS choice -> where the model gets its positions from.
POSITIONS = {"learned": LearnedPositions, "rope": RotaryPositions}


# --- attention --------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    """Multi-head causal attention; subclasses say how x becomes q, k and v (their
    projections are made first, which keeps GPT-2's parameter order and so its init)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        head_dim = config.n_embd // config.n_head
        self.make_projections(config)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        norm = NORMS[config.norm] if config.qk_norm else _no_norm
        self.q_norm, self.k_norm = norm(head_dim, config.bias), norm(head_dim, config.bias)
        self.rotary = POSITIONS[config.positions].rotation(config)

    def make_projections(self, config: GPTConfig) -> None:
        raise NotImplementedError

    def qkv(self, x: torch.Tensor) -> tuple:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, n_embd = x.shape
        head_dim = n_embd // self.n_head
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(batch, seq_len, self.n_head, head_dim).transpose(1, 2)
                   for t in self.qkv(x))
        q, k = self.rotary(self.q_norm(q)), self.rotary(self.k_norm(k))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(batch, seq_len, n_embd)
        return self.resid_dropout(self.c_proj(y))


class FusedQKVAttention(CausalSelfAttention):
    """GPT-2's c_attn: one n_embd x 3 n_embd matmul for queries, keys and values."""

    def make_projections(self, config: GPTConfig) -> None:
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)

    def qkv(self, x: torch.Tensor) -> tuple:
        return self.c_attn(x).split(self.n_embd, dim=2)


class SeparateQKVAttention(CausalSelfAttention):
    """Three projections c_q, c_k, c_v (pruning ranks them apart); the same maths."""

    def make_projections(self, config: GPTConfig) -> None:
        self.c_q, self.c_k, self.c_v = (nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
                                        for _ in range(3))

    def qkv(self, x: torch.Tensor) -> tuple:
        return self.c_q(x), self.c_k(x), self.c_v(x)


# FUSED_QKV -> the attention class.
ATTENTIONS = {True: FusedQKVAttention, False: SeparateQKVAttention}


# --- MLP --------------------------------------------------------------------

def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def _gelu_exact(x):
    return F.gelu(x, approximate="none")


# GELU choice -> the function: tanh as GPT-2 and Hugging Face's gelu_new, exact (erf) as
# nanoGPT's nn.GELU().
GELUS = {"tanh": _gelu_tanh, "exact": _gelu_exact}


def _relu_squared(x):
    return F.relu(x).square()


class MLP(nn.Module):
    """Linear -> activation -> Linear (GELU as GPT-2, or ReLU^2)."""
    gated = False

    def __init__(self, config: GPTConfig, activation):
        super().__init__()
        hidden = config.mlp_hidden
        self.activation = activation
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.c_fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.hidden(x)))


class GatedMLP(MLP):
    """GLU variants (Shazeer 2020): activation(x W_gate) * (x W_up), then the projection.
    c_fc holds [W_gate; W_up] in one matrix, so one matmul computes both."""
    gated = True

    def __init__(self, config: GPTConfig, activation):
        super().__init__(config, activation)
        self.c_fc = nn.Linear(config.n_embd, 2 * config.mlp_hidden, bias=config.bias)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.activation(gate) * up


class BioMLP(MLP):
    """The "bio" activation sin(w * x + phi) * tanh(x), with a learnable frequency w and
    phase phi per hidden channel (starting at 1 and 0). With a sparsity penalty the block
    keeps the mean |activation| of its last forward pass for the loss, and the share of
    activations below BIO_SPARSITY_THRESHOLD for the metrics."""
    gated = False

    def __init__(self, config: GPTConfig, activation=None):
        super().__init__(config, activation)
        hidden = config.mlp_hidden
        self.bio_w = nn.Parameter(torch.ones(hidden))
        self.bio_phi = nn.Parameter(torch.zeros(hidden))
        self.track = config.bio_sparsity_penalty > 0
        self.abs_mean = self.sparsity = None

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        a = torch.sin(self.bio_w * h + self.bio_phi) * torch.tanh(h)
        if self.track:
            self.abs_mean = a.abs().mean()
            self.sparsity = (a.detach().abs() < BIO_SPARSITY_THRESHOLD).float().mean()
        return a


BIO_SPARSITY_THRESHOLD = 1e-2  # |activation| below this counts as silent in the logged share


@dataclass(frozen=True)
class MLPKind:
    build: type
    activation: object = None
    gated: bool = False
    # Tensors of the hidden width autograd keeps per token for the backward (for
    # `make estimate`): GELU keeps c_fc's output and its own; ReLU^2 one more (relu's
    # output); gated ones [gate; up] (2), the activated gate and the product; bio the
    # pre-activation, sin's argument, sin, tanh and the product.
    saved_hidden: int = 2
    # The activation is GELU in the form GPTConfig.gelu names (GELUS), not `activation`.
    gelu: bool = False


MLPS = {
    "gelu": MLPKind(MLP, gelu=True),
    "relu2": MLPKind(MLP, _relu_squared, saved_hidden=3),
    "swiglu": MLPKind(GatedMLP, F.silu, gated=True, saved_hidden=4),
    "geglu": MLPKind(GatedMLP, gated=True, saved_hidden=4, gelu=True),
    "bio": MLPKind(BioMLP, saved_hidden=5),
}


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = NORMS[config.norm](config.n_embd, config.bias)
        self.attn = ATTENTIONS[config.fused_qkv](config)
        self.ln_2 = NORMS[config.norm](config.n_embd, config.bias)
        kind = MLPS[config.mlp]
        self.mlp = kind.build(config, GELUS[config.gelu] if kind.gelu else kind.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _same_attention_kernels():
    """Checkpoint contexts: the backward's recomputation runs under the attention kernels
    the forward ran under (ATTENTION_BACKEND's sdpa_kernel is not active in the backward),
    so it saves tensors of the same shapes."""
    from torch.nn.attention import _cur_sdpa_kernel_backends, sdpa_kernel
    return contextlib.nullcontext(), sdpa_kernel(_cur_sdpa_kernel_backends())


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        vocab = config.padded_vocab_size
        modules = dict(wte=nn.Embedding(vocab, config.n_embd),
                       **POSITIONS[config.positions].embeddings(config))
        self.transformer = nn.ModuleDict(
            dict(
                **modules,
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=NORMS[config.norm](config.n_embd, config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, vocab, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # GPT-2 scales the projections that write into the residual stream so
        # its variance does not grow with depth (two such writes per layer).
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)
        # Padding rows are never looked up and their logits are sliced away.
        with torch.no_grad():
            self.transformer.wte.weight[self.config.vocab_size :].zero_()
            self.lm_head.weight[self.config.vocab_size :].zero_()

    def crop_block_size(self, block_size: int) -> None:
        """Shorten the context, e.g. of pretrained GPT-2's 1024 positions, to block_size."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow the context from {self.config.block_size} to {block_size}")
        self.config = replace(self.config, block_size=block_size)
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].clone())

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. non_embedding leaves out the position embedding,
        and the token embedding too unless it doubles as the output layer."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                total -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                total -= self.transformer.wte.weight.numel()
        return total

    def flops_per_token(self) -> int:
        """Training FLOPs per token, 6N + 12 L H Q T (PaLM appendix B, as nanoGPT's
        estimate_mfu): N the parameters without the position embedding, Q the head size,
        T the context. Recomputation (activation checkpointing) is not counted, as MFU
        does not count it."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss: losses.Loss = losses.PLAIN) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx: (B, T) token ids. With targets (B, T; -1 is ignored): what `loss` returns
        for the final hidden states, by default the logits (B, T, vocab_size) and the mean
        cross-entropy; the trainer passes its training loss (gpt2/losses.py). Without:
        logits for the last position only, (B, 1, vocab_size), and None."""
        seq_len = idx.size(1)
        assert seq_len <= self.config.block_size, (
            f"sequence length {seq_len} exceeds block_size {self.config.block_size}"
        )
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(seq_len, dtype=torch.long, device=idx.device))
        x = self.transformer.drop(x)
        recompute = self.config.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.transformer.h:
            x = (checkpoint(block, x, use_reentrant=False, context_fn=_same_attention_kernels)
                 if recompute else block(x))
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :])[..., :self.config.vocab_size], None
        return loss(self, x, targets)

    def stats(self) -> dict:
        """Figures the model keeps about its last training forward pass (for metrics);
        reading them synchronises with the device."""
        if not self.config.bio_sparsity_penalty:
            return {}
        shares = [b.mlp.sparsity for b in self.transformer.h if b.mlp.sparsity is not None]
        return {"activation_sparsity": torch.stack(shares).mean().item()} if shares else {}

    @torch.inference_mode()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (B, T) and return it.
        temperature 0 is greedy; top_k <= 0 / None and top_p >= 1 / None are off."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        block_size = self.config.block_size
        for _ in range(max_new_tokens):
            context = idx if idx.size(1) <= block_size else idx[:, -block_size:]
            logits, _ = self(context)
            logits = logits[:, -1, :]
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k > 0:
                    logits = _keep_top_k(logits, top_k)
                if top_p is not None and top_p < 1.0:
                    logits = _keep_top_p(logits, top_p)
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_token), dim=1)
        return idx


def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth_largest = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[:, [-1]]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def _keep_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = F.softmax(sorted_logits, dim=-1)
    # Probability mass strictly before each token; the most likely token
    # (mass 0 before it) always survives.
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
