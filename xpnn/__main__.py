"""``python -m xpnn`` and the ``xpnn`` command.

The command's modules (NumPy and the rest) are imported here, inside a handler, so Ctrl-C
while they load ends with one "interrupted" line and exit code 130, as it does later on.
"""
from __future__ import annotations

import sys


def run() -> int:
    """Entry point of the ``xpnn`` command: import the CLI, then run it."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("\nxpnn: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
