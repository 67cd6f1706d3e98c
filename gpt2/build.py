"""How a Config becomes a model: the shape from the config, or the weights of INIT_FROM_DIR,
with pruning masks attached. The trainer, the sampler and the benchmark all build here."""
from dataclasses import replace

from gpt2 import init_dir
from gpt2.model import GPT, GPTConfig
from lib import config as cfglib
from lib import prune


# Architecture knobs: GPTConfig field -> the symbol that sets it (GPT-2's value is the
# GPTConfig default, which pretrained weights need).
ARCHITECTURE = {"norm": "NORM", "qk_norm": "QK_NORM", "positions": "POSITIONS",
                "mlp": "MLP", "fused_qkv": "FUSED_QKV"}


def model_config(cfg, vocab_size: int) -> GPTConfig:
    """The model's shape and architecture as the Config describes them."""
    if cfg.N_EMBD % cfg.N_HEAD:
        raise cfglib.ConfigError(f"CONFIG_N_EMBD={cfg.N_EMBD} is not a multiple of "
                                 f"CONFIG_N_HEAD={cfg.N_HEAD}")
    if cfg.POSITIONS == "rope" and (cfg.N_EMBD // cfg.N_HEAD) % 2:
        raise cfglib.ConfigError(f"CONFIG_POSITIONS_ROPE=y needs an even head size; N_EMBD / "
                                 f"N_HEAD is {cfg.N_EMBD // cfg.N_HEAD}: change N_HEAD or N_EMBD")
    optional = {"rope_base": cfg.ROPE_BASE, "gated_hidden_multiple": cfg.GATED_HIDDEN_MULTIPLE,
                "gated_match_params": cfg.GATED_MATCH_PARAMS,
                "bio_sparsity_penalty": cfg.BIO_SPARSITY_PENALTY, "gelu": cfg.GELU}
    return GPTConfig(block_size=cfg.BLOCK_SIZE, vocab_size=vocab_size, n_layer=cfg.N_LAYER,
                     n_head=cfg.N_HEAD, n_embd=cfg.N_EMBD, dropout=cfg.DROPOUT, bias=cfg.BIAS,
                     tie_weights=cfg.WEIGHT_TYING,
                     **{field: cfg[symbol] for field, symbol in ARCHITECTURE.items()},
                     **{k: v for k, v in optional.items() if v is not None},
                     checkpoint_blocks=cfg.ACTIVATION_CHECKPOINTING)


def build_model(cfg, vocab_size: int) -> GPT:
    shape = model_config(cfg, vocab_size)
    if not cfg.INIT_FROM_DIR:
        model = GPT(shape)
        prune.attach_masks(model, cfg)
        return model
    gpt2 = GPTConfig()
    differs = [f"{symbol}={cfg[symbol]}" for field, symbol in ARCHITECTURE.items()
               if getattr(shape, field) != getattr(gpt2, field)]
    if shape.gelu != gpt2.gelu:
        differs.append(f"GELU={cfg.GELU}")
    if differs:
        raise cfglib.ConfigError(
            f"CONFIG_INIT_FROM_DIR=\"{cfg.INIT_FROM_DIR}\": GPT-2 weights have GPT-2's "
            f"architecture, but {', '.join(differs)}; set NORM=layernorm, QK_NORM=n, "
            f"POSITIONS=learned, MLP=gelu, GELU=tanh and FUSED_QKV=y, or train from scratch")
    model = init_dir.load(cfg, (shape.n_layer, shape.n_head, shape.n_embd, shape.vocab_size,
                                shape.block_size))
    model.config = replace(model.config, checkpoint_blocks=shape.checkpoint_blocks)
    facts = (("BIAS", shape.bias, model.config.bias, "have biases", "have no biases"),
             ("WEIGHT_TYING", shape.tie_weights, model.config.tie_weights,
              "tie the head to the embedding", "have an untied head"))
    mismatched = [f"CONFIG_{name} is {'y' if ours else 'n'} but the weights "
                  f"{have if theirs else have_not}"
                  for name, ours, theirs, have, have_not in facts if ours != theirs]
    if mismatched:
        raise cfglib.ConfigError(
            f"CONFIG_INIT_FROM_DIR=\"{cfg.INIT_FROM_DIR}\": " + "; ".join(mismatched)
            + "; set them as the weights have them (GPT-2: BIAS=y, WEIGHT_TYING=y)")
    model.crop_block_size(shape.block_size)
    prune.attach_masks(model, cfg)
    return model
