"""Command-line plumbing shared by every stage script.

One-line errors, alias flags and exit codes live here so each script stays a thin wrapper:
library code raises `UserError` with a message that names the offending file or flag, and
`run_main` turns it into `error: ...` on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence

from utils.errors import UserError, warn  # noqa: F401  (re-exported: the scripts' one import for both)

# Offline compute nodes: a pretrained lookup without this retries for ~47 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every flag's help names its default, unless the help already speaks of it."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and not isinstance(action, argparse._StoreTrueAction)):
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's one-line error format; --help names every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message} (see --help)\n")
        raise SystemExit(2)


def add_backbone_csv(parser: argparse.ArgumentParser, purpose: str) -> None:
    """The shared `--backbone_csv` flag (official alias `--backbone_csv_path`)."""
    parser.add_argument("--backbone_csv", "--backbone_csv_path", metavar="CSV",
                        help=f"{purpose} (default: the repository's configs/backbones.csv, whatever the working "
                             f"folder; a relative path not found in the working folder is read from the repository)")


def parse_bool(text: str) -> bool:
    """True/False for flags the official scripts take as `--flag True|False`."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def plain_name(text: str) -> str:
    """argparse type of every flag that names a model (or a label that becomes part of a file name): a plain
    name, as utils/files/model_names.check_plain_name defines it."""
    from utils.files.model_names import check_plain_name
    try:
        return check_plain_name(text, "the name")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("the name: ", "", 1)) from None


plain_name.__name__ = "plain name"


def _bounded(kind: type, low: float, text: str, high: float = float("inf"), allowed: tuple = ()):
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {text}, got {value!r}") from None
        if number in allowed:
            return number
        if not low <= number <= high or (kind is float and number == float("inf")):
            raise argparse.ArgumentTypeError(f"expected {text}, got {value!r}")
        return number
    parse.__name__ = text            # argparse names the type in its messages
    return parse


# argparse types for counts, sizes, seeds and rates: 0 or -1 is never silently replaced by a default. The pipeline
# YAML checks its values with these same functions (evaluate/run_pipeline.py), so it accepts what the stages accept.
positive_int = _bounded(int, 1, "a whole number >= 1")
non_negative_int = _bounded(int, 0, "a whole number >= 0")
positive_float = _bounded(float, float.fromhex("0x1p-1074"), "a finite number > 0")
non_negative_float = _bounded(float, 0.0, "a finite number >= 0")
# stage 7 --steps: finer than any curve or table shows; each step is one pass over the test split
MOST_CASCADE_STEPS = 1000
cascade_steps = _bounded(int, 1, f"a whole number from 1 to {MOST_CASCADE_STEPS} (20 is usual)", MOST_CASCADE_STEPS)
# --bootstrap B: 0 (off) or utils.maths.bootstrap's FEWEST_RESAMPLES..MOST_RESAMPLES (fewer leave a 95% interval's
# tails a handful of draws; tests/test_shared_checks.py keeps the two in step)
bootstrap_resamples = _bounded(int, 100, "0 (off) or a whole number from 100 to 100000 (1000 is usual)", 100_000,
                               allowed=(0,))


def cpu_count() -> int:
    """The CPUs this process may use. In a slurm job, the job's allocation (SLURM_CPUS_PER_TASK): a cluster that
    does not bind jobs to their cores shows every core of the node, and one that binds them shows the same number;
    elsewhere, the cores this process is bound to."""
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "") if os.environ.get("SLURM_JOB_ID") else ""
    if allocated.isdigit() and int(allocated) > 0:
        return int(allocated)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_main(main_impl: Callable[[Sequence[str] | None], int | None],
             argv: Sequence[str] | None = None) -> int:
    """Run a script's body, mapping `UserError` (and unreadable files) to a one-line error."""
    try:
        code = main_impl(argv)
    except UserError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"error: {message}\n")
        return 2
    except OSError as exc:
        # the file system said no (permission, a folder where a file belongs, a full disk): name the path;
        # writes are atomic, so nothing half-written was left behind
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"error: {where}{exc.strerror or exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; outputs written so far are complete, rerun to finish\n")
        return 130
    return int(code or 0)
