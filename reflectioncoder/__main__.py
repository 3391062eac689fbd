"""``python -m reflectioncoder COMMAND``: the console script without its entry point (a checkout
on sys.path, a venv whose scripts folder is not on PATH)."""

import sys

from reflectioncoder.cli import main

if __name__ == "__main__":
    sys.exit(main())
