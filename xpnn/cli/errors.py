"""What goes wrong in a command: CLIError, a problem the user can fix, and the one line any
error is printed as."""
from __future__ import annotations

from .. import backend


class CLIError(Exception):
    """A problem the user can fix; main() prints it as one line and exits with 2."""


def one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, backend.DeviceError):
        text += " On the command line: --device cpu, or --device auto to use a GPU only when there is one."
    return text or type(exc).__name__
