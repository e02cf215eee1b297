"""utils/cli/console.py: a step's output goes to its log; only `show` reaches the screen."""
import subprocess
import sys


def test_console_capture_sends_everything_to_the_log_and_show_to_the_screen(tmp_path):
    script = (
        "import os, subprocess, sys\n"
        "from utils.cli import console\n"
        f"with console.captured({str(tmp_path / 'step.log')!r}):\n"
        "    print('a python print')\n"
        "    print('to stderr', file=sys.stderr)\n"
        "    os.write(1, b'native write\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"a child process\")'])\n"
        "    console.show('a trial line')\n"
        "print('after the step')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["a trial line", "after the step"] and result.stderr == ""
    log = (tmp_path / "step.log").read_text().splitlines()
    assert set(log) == {"a python print", "to stderr", "native write", "a child process", "a trial line"}
