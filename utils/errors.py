"""The base layer every package of `utils` may import: the user-facing error and the warning line.

A `UserError` carries one line for the user (the file or flag, what is wrong, what to do); `run_main`
(utils/cli/parsing.py) prints it as `error: ...` and exits 2. `warn` prints `warning: ...` on stderr.
Nothing here imports another module of the project.
"""
from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input or configuration; the message is shown to the user as one line."""


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
