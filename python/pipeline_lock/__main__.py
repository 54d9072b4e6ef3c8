"""``python -m pipeline_lock ARGS``: the binary itself, with its exit code."""

import os
import subprocess
import sys

from . import binary


def main() -> int:
    argv = [binary(), *sys.argv[1:]]
    if os.name == "posix":
        os.execv(argv[0], argv)
    return subprocess.call(argv)


if __name__ == "__main__":
    sys.exit(main())
