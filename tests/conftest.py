import importlib
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per process (inherited by the stages, Ray trials and slurm jobs the tests start): two xdist workers
# each running processes with a thread per core oversubscribe the cores, and OpenMP's spinning threads then
# slow everything down. Measured on 2 cores: the tiny demo and the slurm pipeline test side by side took 572 s
# with torch's default threads, 182 s with one (each alone: 150 s and 171 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# The files that hold the longest tests (seconds in one fresh-clone `make test` here: the slurm tests ~560, the
# README sequence ~380, the tiny demo ~270, Ray training ~150, a real Ray head ~60) are handed out first, so that no
# worker starts one of them while the other has nothing left (with --no-loadscope-reorder in pyproject.toml,
# xdist hands out files in this order).
LONGEST_FIRST = ("test_slurm.py", "test_pipeline.py", "test_readme.py", "test_training.py", "test_cluster.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first; DUOS_TEST_SHUFFLE=<seed> runs the tests in a shuffled order instead: no test may
    depend on another's."""
    seed = os.environ.get("DUOS_TEST_SHUFFLE")
    if seed:
        import random
        random.Random(int(seed)).shuffle(items)
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))          # stable: each file's own order kept


# Where a stage run with its default, relative paths writes (ignored by git, so listed by name)
OUTPUT_FOLDERS = ("runs", "checkpoints", "predictions", "calibrated", "results", "logs")


def _untracked() -> set[str] | None:
    """Files in the repository that git neither tracks nor ignores, and the output folders present (None without
    git or outside a git checkout: the check is then off)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--directory"], cwd=REPO,
                                capture_output=True, text=True)      # --directory: an empty folder counts too
    except OSError:
        return None
    if listed.returncode != 0:
        return None
    return set(listed.stdout.splitlines()) | {f"{name}/" for name in OUTPUT_FOLDERS if (REPO / name).exists()}


def pytest_sessionstart(session):
    session.config.untracked_before = _untracked()


def pytest_sessionfinish(session, exitstatus):
    """The suite writes only into temporary folders: a file it left in the repository fails the run (a test
    whose working folder was the repository's, such as a stage run in-process with a relative path)."""
    before = getattr(session.config, "untracked_before", None)
    if hasattr(session.config, "workerinput") or before is None:      # judged once, by the xdist controller
        return
    left = sorted((_untracked() or set()) - before)
    if left:
        print(f"\nerror: the tests left {len(left)} file(s) in the repository: {', '.join(left[:10])}",
              file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def stage(capsys):
    """Run a stage script's main(argv) in-process: stage('evaluate/2_temp_scale.py', *args) -> (code, out, err)."""
    def run(script: str, *args) -> tuple[int, str, str]:
        module = importlib.import_module(script[:-3].replace("/", "."))
        try:
            code = module.main([str(a) for a in args])
        except SystemExit as exc:          # argparse errors and --help
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


def run_cli(script: str, *args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a stage exactly as a user does: `python <script> args...` in a fresh interpreter."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def snapshot(*folders: Path) -> dict:
    """Every file under the folders with its bytes, to prove a failing stage changed nothing."""
    state = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")) if Path(folder).exists() else []:
            if path.is_file():
                state[str(path)] = path.read_bytes()
    return state


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (each start costs ~5 s and ~1.4 GB)."""
    import ray
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
