"""GPT-2 in one file: the model, sampling, and loading Hugging Face weights.

Module and parameter names follow Hugging Face's GPT2LMHeadModel
(transformer.wte, transformer.h.0.attn.c_attn, ..., lm_head), so checkpoints
map onto this model key for key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

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

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, n_embd = x.shape
        head_dim = n_embd // self.n_head
        q, k, v = self.c_attn(x).split(n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q = q.view(batch, seq_len, self.n_head, head_dim).transpose(1, 2)
        k = k.view(batch, seq_len, self.n_head, head_dim).transpose(1, 2)
        v = v.view(batch, seq_len, self.n_head, head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(batch, seq_len, n_embd)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        vocab = config.padded_vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias),
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
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].clone())

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. non_embedding leaves out the position embedding,
        and the token embedding too unless it doubles as the output layer."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                total -= self.transformer.wte.weight.numel()
        return total

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids. With targets (B, T): logits (B, T, vocab_size)
        and mean cross-entropy (targets of -1 are ignored). Without: logits for
        the last position only, (B, 1, vocab_size), and None."""
        seq_len = idx.size(1)
        assert seq_len <= self.config.block_size, (
            f"sequence length {seq_len} exceeds block_size {self.config.block_size}"
        )
        positions = torch.arange(seq_len, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)

        vocab = self.config.vocab_size
        if targets is None:
            logits = self.lm_head(x[:, [-1], :])[..., :vocab]
            return logits, None
        logits = self.lm_head(x)
        # Padding columns get -inf: they never win, the softmax equals the unpadded
        # one, and the loss reads the contiguous padded logits without a copy.
        logits[..., vocab:] = float("-inf")
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return logits[..., :vocab], loss

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


# --- Hugging Face weights -------------------------------------------------

# HF stores these as Conv1D, whose weight is (in, out): the transpose of nn.Linear's.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers in older HF checkpoints, not weights.
_HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def load_hf_state_dict(model: GPT, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face GPT2LMHeadModel state dict into model, in place."""
    source = {}
    for key, tensor in state_dict.items():
        if key.endswith(_HF_BUFFER_SUFFIXES):
            continue
        name = key if key == "lm_head.weight" or key.startswith("transformer.") else "transformer." + key
        source[name] = tensor
    hf_lm_head = source.pop("lm_head.weight", None)

    # The output layer is handled separately: HF often omits it when tied.
    targets = {k: v for k, v in model.state_dict(keep_vars=True).items() if k != "lm_head.weight"}
    missing = sorted(targets.keys() - source.keys())
    unexpected = sorted(source.keys() - targets.keys())
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match the model: missing keys {missing}, unexpected keys {unexpected}"
        )

    vocab = model.config.vocab_size
    wte_name = "transformer.wte.weight"
    converted = {}
    mismatches = []
    for name, target in targets.items():
        tensor = source[name]
        if name.endswith(_CONV1D_SUFFIXES):
            tensor = tensor.t()
        expected = (vocab, target.shape[1]) if name == wte_name else tuple(target.shape)
        if tuple(tensor.shape) != expected:
            mismatches.append(f"{name}: checkpoint {tuple(tensor.shape)}, model expects {expected}")
        converted[name] = tensor
    if hf_lm_head is not None and tuple(hf_lm_head.shape) != (vocab, model.config.n_embd):
        mismatches.append(
            f"lm_head.weight: checkpoint {tuple(hf_lm_head.shape)}, "
            f"model expects {(vocab, model.config.n_embd)}"
        )
    if mismatches:
        raise ValueError("shape mismatch: " + "; ".join(mismatches))

    if model.config.tie_weights and hf_lm_head is not None and not torch.equal(
        hf_lm_head.to(converted[wte_name].dtype), converted[wte_name]
    ):
        raise ValueError(
            "checkpoint's lm_head.weight differs from transformer.wte.weight; "
            "build the model with tie_weights=False to load it"
        )

    with torch.no_grad():
        for name, target in targets.items():
            if name == wte_name:
                target[:vocab].copy_(converted[name])
            else:
                target.copy_(converted[name])
        if not model.config.tie_weights:
            lm_head = hf_lm_head if hf_lm_head is not None else converted[wte_name]
            model.lm_head.weight[:vocab].copy_(lm_head)


def load_pretrained(path: str | Path, dropout: float = 0.0) -> GPT:
    """Build a GPT from a local Hugging Face GPT-2 directory (no network)."""
    directory = Path(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    hf_config = json.loads(config_file.read_text())

    n_embd = hf_config["n_embd"]
    n_inner = hf_config.get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        raise ValueError(f"n_inner {n_inner} is not 4 * n_embd; this model only supports 4 * n_embd")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"activation_function {activation!r} is not the tanh GELU this model uses")

    config = GPTConfig(
        block_size=hf_config["n_positions"],
        vocab_size=hf_config["vocab_size"],
        n_layer=hf_config["n_layer"],
        n_head=hf_config["n_head"],
        n_embd=n_embd,
        dropout=dropout,
        bias=True,
        tie_weights=hf_config.get("tie_word_embeddings", True),
    )
    model = GPT(config)
    load_hf_state_dict(model, _read_hf_weights(directory))
    return model


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    pickled = directory / "pytorch_model.bin"
    if single.is_file():
        from safetensors.torch import load_file

        return load_file(single)
    if index.is_file():
        from safetensors.torch import load_file

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights = {}
        for shard in shards:
            weights.update(load_file(directory / shard))
        return weights
    if pickled.is_file():
        return torch.load(pickled, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"no weights in {directory}: expected model.safetensors, "
        "model.safetensors.index.json or pytorch_model.bin"
    )
