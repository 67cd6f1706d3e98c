"""Hugging Face GPT-2 weights into our GPT: a state dict copied in place (Conv1D weights
transposed), or a whole model built from a local directory (config.json and safetensors or
pytorch_model.bin; no network)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt2.model import GPT, GPTConfig

# HF stores these as Conv1D, whose weight is (in, out): the transpose of nn.Linear's.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers in older HF checkpoints, not weights.
_HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def load_hf_state_dict(model: GPT, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face GPT2LMHeadModel state dict into model, in place."""
    source = _hf_names(state_dict)
    hf_lm_head = source.pop("lm_head.weight", None)
    # The output layer is handled separately: HF often omits it when tied.
    targets = {k: v for k, v in model.state_dict(keep_vars=True).items() if k != "lm_head.weight"}
    missing = sorted(targets.keys() - source.keys())
    unexpected = sorted(source.keys() - targets.keys())
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match the model: missing keys {missing}, unexpected keys {unexpected}"
        )
    converted = _hf_converted(model, source, targets, hf_lm_head)
    vocab, wte_name = model.config.vocab_size, "transformer.wte.weight"
    with torch.no_grad():
        for name, target in targets.items():
            if name == wte_name:
                target[:vocab].copy_(converted[name])
            else:
                target.copy_(converted[name])
        if not model.config.tie_weights:
            lm_head = hf_lm_head if hf_lm_head is not None else converted[wte_name]
            model.lm_head.weight[:vocab].copy_(lm_head)


def _hf_names(state_dict: dict) -> dict:
    """The HF tensors under our names (transformer.-prefixed), buffers left out."""
    source = {}
    for key, tensor in state_dict.items():
        if key.endswith(_HF_BUFFER_SUFFIXES):
            continue
        name = key if key == "lm_head.weight" or key.startswith("transformer.") else "transformer." + key
        source[name] = tensor
    return source


def _hf_converted(model: GPT, source: dict, targets: dict, hf_lm_head) -> dict:
    """source's tensors in our layout (Conv1D transposed), after checking every shape and,
    for a tied model, that the checkpoint's head is its embedding."""
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
    return converted


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
