"""Run a stage script and SIGKILL it at the Nth atomic rename of its outputs, as a cluster's OOM killer or
a pre-empted job would: `python tests/kill_at.py before_rename:2 evaluate/2_temp_scale.py ARGS...`.

The kill is injected here, around `os.replace` (which every atomic write ends with), so production code
carries no test hook. `before_rename` dies with the temporary file written but not renamed,
`after_rename` right after the rename.
"""
import os
import runpy
import signal
import sys

point, _, count = sys.argv[1].partition(":")
target = int(count or 1)
renames = 0
real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    global renames
    if not str(src).endswith(".tmp"):
        return real_replace(src, dst, *args, **kwargs)
    renames += 1
    if renames == target and point == "before_rename":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if renames == target and point == "after_rename":
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
