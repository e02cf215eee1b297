"""The terminal, apart from a stage's own output: `run_pipeline` sends each stage's full output to a log file
and keeps the screen for one line per stage, one per Ray Tune trial, progress bars and the final table.

A stage prints as usual; what must reach the screen even when its output goes to a log (a trial's result,
the results table) goes through `show`. Outside `captured` (a stage run on its own) `show` is `print`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, Iterator

_screen: IO[str] | None = None        # the terminal while a stage's output is captured
# a stage run in a child process (run_pipeline's side-by-side trainings) collects its `show` lines in this
# file, for the pipeline to put on the screen
SCREEN_FILE_ENV = "DUO_SCREEN_FILE"


def show(*parts, **options) -> None:
    """Print to the screen (and to the stage's log when one is being written)."""
    print(*parts, **options)
    if _screen is not None:
        print(*parts, **{**options, "file": _screen, "flush": True})
    elif os.environ.get(SCREEN_FILE_ENV):
        with open(os.environ[SCREEN_FILE_ENV], "a") as screen_file:
            print(*parts, **{**options, "file": screen_file})


def progress_stream() -> IO[str] | None:
    """Where a progress bar may draw: the terminal, or None when there is none (a log, a pipe, a slurm job)."""
    stream = _screen if _screen is not None else sys.stderr
    try:
        return stream if stream.isatty() else None
    except (AttributeError, ValueError):
        return None


@contextlib.contextmanager
def captured(log_path: str | Path) -> Iterator[Path]:
    """Send everything written to stdout and stderr, by Python and by child processes or native code
    (file descriptors 1 and 2), to `log_path` (appended) until the block ends; `show` still reaches the
    terminal. Nested use keeps the outer terminal."""
    global _screen
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    outer = _screen
    screen = outer if outer is not None else os.fdopen(os.dup(saved[0]), "w", buffering=1)
    try:
        with open(log_path, "ab", buffering=0) as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            _screen = screen
            try:
                yield log_path
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                _screen = outer
    finally:
        for fd in saved:
            os.close(fd)
        if outer is None:
            screen.close()
