"""hp_tune joins a real Ray cluster started the way `ray start` starts one (token authentication on,
as Ray 2.60 does whenever a token exists), and fails fast and clearly when it cannot."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow                    # a real `ray start` head: ~1.5 min
RAY = Path(sys.executable).with_name("ray")
TINY = ["--model", "resnet10t", "--dataset", "mnist5k", "--weights", "none", "--lp_samples", 1, "--num_samples", 2,
        "--epochs_lp", 1, "--epochs_ff", 1, "--subset", 64, "--image_size", 32, "--batch_size", 32, "--num_workers", 0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on a free port, in its own process group and temp dir (so `ray stop`
    elsewhere never meets it, and it meets no other Ray); the head's user has a token, as after any
    earlier `ray.init()` on that machine."""
    home = tmp_path_factory.mktemp("head_home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("3f9c2a7e5b1d48e6a0c4f2b8d6e1a9c7")
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")          # Ray's socket paths must stay short
    port = _free_port()
    log = open(home / "head.log", "w")
    head = subprocess.Popen([str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"], cwd=home, env=_env(home),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, (home / "head.log").read_text()
                time.sleep(0.5)
        time.sleep(2)                                # the raylet registers after the GCS listens
        yield port, home
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(10)                            # measured 33 s for `ray start --block` to stop under load
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        subprocess.run(["rm", "-rf", temp_dir])
    assert "Token authentication is enabled" in (home / "head.log").read_text()


def _hp_tune(port: int, home: Path, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train" / "hp_tune.py"), *map(str, TINY),
                           "--ray_address", f"127.0.0.1:{port}", "--output_dir", str(output)], cwd=output.parent,
                          env=_env(home), capture_output=True, text=True, timeout=600)


def test_hp_tune_joins_a_ray_start_cluster(ray_head, tmp_path):
    port, home = ray_head
    started = time.time()
    result = _hp_tune(port, home, tmp_path / "checkpoints")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Connected to Ray cluster" in result.stderr and "Started a local Ray instance" not in result.stderr
    root = tmp_path / "checkpoints" / "mnist5k"
    trials = pd.read_csv(root / "soup" / "resnet10t_trials.csv")
    assert len(trials) == 2 and all((root / "soup" / c).exists() for c in trials.checkpoint)
    assert (root / "ff" / "resnet10t.pth").exists() and (root / "lp" / "resnet10t.pth").exists()
    assert (root / "ray_results" / "resnet10t_ff").is_dir()       # trial storage under --output_dir, shared by nodes
    print(f"joined and searched in {time.time() - started:.0f} s")


def test_a_driver_without_the_token_fails_fast_with_advice(ray_head, tmp_path):
    port, _ = ray_head
    stranger = tmp_path / "home"                  # another user's home: no ~/.ray/auth_token
    stranger.mkdir()
    (tmp_path / "out").mkdir()
    started = time.time()
    result = _hp_tune(port, stranger, tmp_path / "out" / "checkpoints")
    elapsed = time.time() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith(f"error: --ray_address 127.0.0.1:{port}: could not join") and "RAY_AUTH_TOKEN" in lines[-1]
    assert elapsed < 60, elapsed


def test_nothing_listening_is_an_immediate_error(tmp_path):
    port = _free_port()
    started = time.time()
    result = _hp_tune(port, tmp_path, tmp_path / "checkpoints")
    assert result.returncode == 2 and f"no Ray head answers at 127.0.0.1:{port}" in result.stderr.strip().splitlines()[-1]
    assert time.time() - started < 30
