import sys

from gpt2.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
