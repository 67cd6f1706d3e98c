"""python -m gpt2.data [.config] [--set NAME=VALUE] [--verify]: prepare the dataset a
config selects, or verify its prepared shards."""
import argparse
import sys

import gpt2.data.verify as verify
from gpt2.data.errors import DataError
from gpt2.data.prepare import data_root, prepare_config, prepared_dir, spec_from_config
from gpt2.data.prepare import check_split_sizes_config
from gpt2.data.shards import read_meta


def main(argv=None) -> int:
    """python -m gpt2.data [.config] [--set NAME=VALUE]: prepare the dataset a config selects
    (run it again after an interruption: finished shards are kept)."""
    from lib import config as cfglib

    parser = argparse.ArgumentParser(prog="python -m gpt2.data", description=main.__doc__)
    parser.add_argument("config", nargs="?",
                        help="config file (default: .config or $KCONFIG_CONFIG)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--verify", action="store_true",
                        help="prepare nothing: check every prepared shard's size, sha256 and "
                             "token ids (make data-verify)")
    args = parser.parse_args(argv)
    try:
        cfg = cfglib.load(args.config, args.set)
        if args.verify:
            return _verify(prepared_dir(spec_from_config(cfg), data_root(cfg)))
        out_dir = prepare_config(cfg)
        check_split_sizes_config(cfg, out_dir)  # each split holds a BLOCK_SIZE window
    except (cfglib.ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = read_meta(out_dir)
    print(f"{out_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val + "
          f"{meta['test_tokens']:,} test tokens, "
          f"vocabulary {meta['vocab_size']:,}")
    return 0


def _verify(out_dir) -> int:
    """One line per damaged shard on stderr and status 2, or one line of what was checked."""
    found, shards, tokens = verify.problems(out_dir)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if found:
        print(f"error: {len(found)} of {shards} shards of {out_dir} are damaged: delete it "
              f"and run make data", file=sys.stderr)
        return 2
    print(f"{out_dir}: {shards} shards, {tokens:,} tokens: sizes, sha256 and token ids verified")
    return 0
