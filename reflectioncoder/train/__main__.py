"""``python -m reflectioncoder.train [train's arguments]`` (``torchrun ... -m
reflectioncoder.train --config ...``): ``reflectioncoder train``, for those who name the module
that trains rather than the command line's (``-m reflectioncoder.cli train``)."""

import sys

from reflectioncoder.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
