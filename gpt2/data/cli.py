"""python -m gpt2.data [.config] [--set NAME=VALUE]: prepare the dataset a config selects."""
import argparse
import sys

from gpt2.data.errors import DataError
from gpt2.data.prepare import prepare_config
from gpt2.data.shards import read_meta


def main(argv=None) -> int:
    """python -m gpt2.data [.config] [--set NAME=VALUE]: prepare the dataset a config selects
    (run it again after an interruption: finished shards are kept)."""
    from lib import config as cfglib

    parser = argparse.ArgumentParser(prog="python -m gpt2.data", description=main.__doc__)
    parser.add_argument("config", nargs="?",
                        help="config file (default: .config or $KCONFIG_CONFIG)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = cfglib.load(args.config, args.set)
        out_dir = prepare_config(cfg)
    except (cfglib.ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = read_meta(out_dir)
    print(f"{out_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val + "
          f"{meta['test_tokens']:,} test tokens, "
          f"vocabulary {meta['vocab_size']:,}")
    return 0
