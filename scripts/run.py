"""What `make` runs: the test matrix when .config has MATRIX=y, otherwise one training run.

  python -m scripts.run [.config] [--set NAME=VALUE ...]
"""
import sys

from gpt2 import train
from lib import config as cfglib
from scripts import matrix


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = train.parse_args(argv)
    try:
        cfg = cfglib.load(args.config, args.overrides)
    except cfglib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return (matrix.main if cfg.MATRIX else train.main)(argv)


if __name__ == "__main__":
    sys.exit(main())
