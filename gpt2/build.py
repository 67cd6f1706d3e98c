"""How a Config becomes a model: the shape from the config, or the weights of INIT_FROM_DIR,
with pruning masks attached. The trainer, the sampler and the benchmark all build here."""
from gpt2.model import GPT, GPTConfig, load_pretrained
from lib import config as cfglib
from lib import prune


def build_model(cfg, vocab_size: int) -> GPT:
    shape = GPTConfig(block_size=cfg.BLOCK_SIZE, vocab_size=vocab_size, n_layer=cfg.N_LAYER,
                      n_head=cfg.N_HEAD, n_embd=cfg.N_EMBD, dropout=cfg.DROPOUT, bias=cfg.BIAS,
                      tie_weights=cfg.WEIGHT_TYING)
    if cfg.N_EMBD % cfg.N_HEAD:
        raise cfglib.ConfigError(f"CONFIG_N_EMBD={cfg.N_EMBD} is not a multiple of "
                                 f"CONFIG_N_HEAD={cfg.N_HEAD}")
    if not cfg.INIT_FROM_DIR:
        model = GPT(shape)
        prune.attach_masks(model, cfg)
        return model
    model = load_pretrained(cfg.INIT_FROM_DIR, dropout=cfg.DROPOUT)
    got = (model.config.n_layer, model.config.n_head, model.config.n_embd, model.config.vocab_size)
    want = (shape.n_layer, shape.n_head, shape.n_embd, shape.vocab_size)
    if got != want or model.config.block_size < shape.block_size:
        raise cfglib.ConfigError(
            f"CONFIG_INIT_FROM_DIR=\"{cfg.INIT_FROM_DIR}\": its shape (layers, heads, width, vocab) "
            f"{got} does not match the configuration's {want}; choose the matching MODEL_SIZE")
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
