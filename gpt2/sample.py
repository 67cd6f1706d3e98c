"""Generate text from the run a .config describes: python -m gpt2.sample [.config] [--set ...]

Loads the run directory's checkpoint (weights_only) and samples with the
SAMPLE_* knobs: prompt, length, count, temperature, top-k, top-p.
"""
import argparse
import sys

import torch

from gpt2 import data
from gpt2.build import build_model
from lib import checkpoint, runtime
from lib import config as cfglib
from lib.run import RunDir


def generate_text(model, prepared, cfg, device, count: int) -> list:
    """`count` samples of SAMPLE_LENGTH tokens from SAMPLE_PROMPT (a newline when empty)."""
    encode, decode = data.load_tokenizer(prepared, cfg.DATA_DIR)
    prompt = encode(cfg.SAMPLE_PROMPT or "\n")
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.SEED)
    was_training = model.training
    model.eval()
    try:
        texts = []
        for _ in range(count):
            out = model.generate(idx, cfg.SAMPLE_LENGTH, temperature=cfg.SAMPLE_TEMPERATURE,
                                 top_k=cfg.SAMPLE_TOP_K or None, top_p=cfg.SAMPLE_TOP_P,
                                 generator=generator)
            texts.append(decode(out[0].tolist()))
        return texts
    finally:
        model.train(was_training)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt2.sample", description=__doc__)
    parser.add_argument("config", nargs="?", help="config file (default: .config or $KCONFIG_CONFIG)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a SAMPLE_* symbol (or any other) for this command")
    args = parser.parse_args(argv)

    try:
        cfg = cfglib.load(args.config, args.set)
        # Sampling knobs do not change the run: find it by the config without them.
        base = cfglib.load(args.config)
        run = RunDir.for_config(base)
        if not run.ckpt.exists():
            raise cfglib.ConfigError(f"{run.ckpt}: no checkpoint for this configuration; "
                                     f"train it first with `make`")
        device = runtime.pick_device(cfg.DEVICE)
        prepared = data.prepare_config(cfg)
        model = build_model(cfg, data.vocab_size(prepared))
        model.load_state_dict(checkpoint.load(run.ckpt)["model"])
        model.to(device)
        with torch.inference_mode():
            for text in generate_text(model, prepared, cfg, device, cfg.SAMPLE_COUNT):
                print(text)
                print("---")
    except (cfglib.ConfigError, data.DataError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
