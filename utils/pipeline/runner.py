"""Running a pipeline's steps on this machine: each step in this process (its output to a log, a start and an end
line on the screen), searches that leave cores idle side by side in their own processes, steps whose outputs
exist or whose inputs did not change reused, and everything a step started stopped with the pipeline."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from utils.cli import console
from utils.errors import UserError
from utils.files import step_stamps
from utils.files.model_names import existing_path
from utils.paths import REPO_ROOT
from utils.pipeline.plan import Plan, Step


@dataclass
class Options:
    refresh: bool = False          # rerun evaluation steps even where nothing changed
    verbose: bool = False          # every step's output on the screen instead of its log


def step_label(argv: list) -> str:
    """`_<model>` for the steps of one model (training, IVON, Laplace, the FT trials' predictions), so that their
    logs do not share a name."""
    if "--name_prefix" in argv:
        return f"_{argv[argv.index('--name_prefix') + 1]}trials"
    for flag in ("--save_name", "--model", "--model_path"):
        if flag in argv:
            return "_" + Path(str(argv[argv.index(flag) + 1])).stem
    return ""


def start_line(prefix: str, step: Step) -> str:
    return f"{prefix} {Path(step.script).stem}{step_label(step.argv).replace('_', ' ', 1)} ..."


def results_table(plan: Plan) -> str:
    """The results table of the report a reused report step wrote (the screen ends with it either way)."""
    for name in ("REPORT.md", f"REPORT_{plan.dataset}.md"):
        path = plan.results / name
        if path.exists():
            section = path.read_text(errors="replace").split("\n## Results", 1)[-1].split("\n## ", 1)[0]
            return "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))
    return ""


def run_steps(plan: Plan, all_steps: list[Step], options: Options, main_of: Callable[[str], Callable]) -> None:
    """Every step in order (`main_of(script)`: the script's main(argv), run in this process); trainings whose
    checkpoint exists and evaluation steps whose command, code and files are as at the end of the last complete
    run (utils/files/step_stamps.py) are reused."""
    stamps = step_stamps.Stamps(plan.root / "logs" / step_stamps.STAMP_FILE)
    code = step_stamps.code_digest(REPO_ROOT)
    stamped = {}                          # the steps to stamp when the run completes
    waiting = []                          # searches waiting to run side by side
    for number, step in enumerate(all_steps, start=1):
        prefix = f"[{number:>2}/{len(all_steps)} {step.stage:<14}]"
        log = plan.root / "logs" / f"{number:02d}_{step.stage}{step_label(step.argv)}.log"
        if step.done_when is not None and existing_path(step.done_when).exists():       # names in any case
            print(f"{prefix} reused: {step.done_when} exists")
            continue
        if step.side_by_side:
            waiting.append((prefix, log, step))
            continue
        run_side_by_side(waiting, plan.side_by_side() if waiting else 1, options.verbose)
        waiting = []
        argv = step.members(step.argv) if step.members else step.argv
        if step.done_when is None:
            key, paths = step_stamps.Stamps.key(step.script, argv, code), step_stamps.step_paths(argv)
            stamped[key] = paths
            if not options.refresh and stamps.unchanged(key, paths):
                print(f"{prefix} reused: nothing it reads or writes changed since the last complete run "
                      f"(--refresh reruns it)")
                if step.stage == "report":
                    print(results_table(plan), end="")
                continue
        run_step(prefix, log, Step(step.stage, argv, script=step.script), options.verbose, main_of)
    run_side_by_side(waiting, plan.side_by_side() if waiting else 1, options.verbose)
    stamps.record(stamped)


def run_step(prefix: str, log: Path, step: Step, verbose: bool, main_of: Callable[[str], Callable]) -> None:
    """One stage, in this process: its command line and output to the screen (verbose) or to `log`, with a
    start and an end line."""
    began = time.time()
    main = main_of(step.script)
    if verbose:
        print(f"{prefix} {step.command_line()}", flush=True)
        code = main([str(a) for a in step.argv])
    else:
        print(start_line(prefix, step), flush=True)
        log.unlink(missing_ok=True)
        with console.captured(log):
            print(step.command_line(), flush=True)
            code = main([str(a) for a in step.argv])
    check_step(prefix, log, step, code, began, verbose)


@dataclass
class _Running:
    process: subprocess.Popen
    output: object
    prefix: str
    log: Path
    step: Step
    screen: Path
    began: float


def run_side_by_side(group: list[tuple[str, Path, Step]], width: int, verbose: bool) -> None:
    """Searches that each leave cores idle (one trial of a small model), `width` at once, each in its own
    process with its own local Ray instance; each one's trial lines and end line appear when it ends. After a
    failure no further search starts; an interrupted or terminated pipeline stops the ones running."""
    running, failed, queue = [], None, list(group)
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        while (queue and failed is None) or running:
            while queue and failed is None and len(running) < width:
                running.append(_launch(*queue.pop(0), verbose))
            time.sleep(0.5)
            for entry in [e for e in running if e.process.poll() is not None]:
                running.remove(entry)
                if entry.output is not None:
                    entry.output.close()
                if entry.screen.exists():
                    if not verbose:
                        print(entry.screen.read_text(), end="", flush=True)
                    entry.screen.unlink()
                try:
                    check_step(entry.prefix, entry.log, entry.step, entry.process.returncode, entry.began, verbose)
                except UserError as error:
                    failed = failed or error
    finally:
        signal.signal(signal.SIGTERM, previous)
        for entry in running:                              # only after an interrupt: stop them with the pipeline
            _stop(entry.process)
    if failed:
        raise UserError(f"{failed}" + (f" ({len(queue)} other search(es) not started)" if queue else ""))


def _launch(prefix: str, log: Path, step: Step, verbose: bool) -> _Running:
    print(start_line(prefix, step) + " (side by side)", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    screen = log.with_suffix(".screen")
    screen.unlink(missing_ok=True)
    output = None if verbose else open(log, "w")
    if output is not None:
        output.write(step.command_line() + "\n")
        output.flush()
    # the project's script by its path (a train/ or utils/ folder in the working folder must not stand in for
    # ours), in a process group of its own so that stopping the pipeline stops it and its Ray instance
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / step.script), *map(str, step.argv)], stdout=output,
                               stderr=subprocess.STDOUT if output else None, start_new_session=True,
                               env={**os.environ, console.SCREEN_FILE_ENV: str(screen)})
    return _Running(process, output, prefix, log, step, screen, time.time())


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def check_step(prefix: str, log: Path, step: Step, code: int, began: float, verbose: bool) -> None:
    """The step's end line (what it wrote, how long, its warnings), or its log's tail and an error."""
    if not verbose and not code:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        written = [line for line in lines if line.startswith("wrote ")]
        warnings = sum(line.startswith("warning:") for line in lines)
        outcome = (written or lines[1:] or ["done"])[-1]
        print(f"{prefix} {outcome[:150]}{' ...' if len(outcome) > 150 else ''} ({time.time() - began:.0f} s"
              + (f"; {warnings} warning(s): see {log}" if warnings else "") + ")", flush=True)
    if code:
        tail = log.read_text(errors="replace").splitlines()[-15:] if not verbose else []
        print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
        where = "" if verbose else f" (its full output: {log})"
        raise UserError(f"stage '{Path(step.script).stem}' failed (exit {code}){where}; fix it and rerun: finished "
                        f"stages are reused")
