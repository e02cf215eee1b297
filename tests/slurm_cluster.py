"""A real single-node slurm cluster for the tests: slurmctld and slurmd (Debian's `slurm-wlm`) with their own
configuration, state, spool and ports in a temporary folder, stopped and removed whatever happens.

The node declares 32 CPUs, 4 GPUs and 200 GB (`SlurmdParameters=config_overrides`; the GPUs are character
devices made with mknod, so slurm sets CUDA_VISIBLE_DEVICES as on a real GPU node) so that the scripts' own
directives (`--cpus-per-task=8`, `--gres=gpu:1`, `--mem=48G`) are accepted unchanged; what a job really gets is
this machine's cores, and no GPU a program could use. No munge, no cgroups: `auth/none`, `proctrack/linuxproc`,
`task/none`, run as root. Install: `apt-get install slurm-wlm` (root)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CONFIG = """ClusterName=duotest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=3600
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs=32 RealMemory=200000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


def missing() -> str | None:
    """Why no cluster can start here (None: it can)."""
    absent = [tool for tool in ("slurmctld", "slurmd", "sbatch", "scontrol", "srun") if shutil.which(tool) is None]
    if absent:
        return f"slurm is not installed ({', '.join(absent)} missing): `apt-get install slurm-wlm` as root"
    if os.geteuid() != 0:
        return "the test cluster runs slurmctld/slurmd as root (auth/none): run the tests as root"
    return None


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    """`env` holds SLURM_CONF for the client commands (sbatch, scontrol, srun) and for the jobs, which inherit it."""

    def __init__(self, root: Path):
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def start(self, timeout: float = 60) -> Cluster:
        ctld_port, d_port = free_ports(2)
        for folder in ("state", "spool", "gpus"):
            (self.root / folder).mkdir(parents=True)
        devices = []
        for i in range(4):
            device = self.root / "gpus" / f"gpu{i}"
            os.mknod(device, 0o600 | 0o020000, os.makedev(1, 3))      # a character device, as slurm wants
            devices.append(str(device))
        (self.root / "slurm.conf").write_text(CONFIG.format(node=self.node, ctld_port=ctld_port, d_port=d_port,
                                                             root=self.root))
        (self.root / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File={self.root}/gpus/gpu[0-3]\n")
        conf = str(self.root / "slurm.conf")
        for command in (["slurmctld", "-D", "-f", conf], ["slurmd", "-D", "-f", conf, "-N", self.node]):
            log = open(self.root / f"{command[0]}.out", "w")
            self.processes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if state.stdout.strip() in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test slurm cluster did not come up in {timeout:.0f} s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.root.glob("slurm*.log")) if p.is_file())

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True)
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # slurmstepd of jobs still running: they belong to no session of ours
        subprocess.run(["pkill", "-f", f"slurmstepd.*{self.root}"], capture_output=True)

    # ------------------------------------------------------------------------- jobs

    def jobs(self, job_id: str) -> dict[str, dict]:
        """Every job (array tasks one by one) of `job_id`: {'<id>' or '<id>_<task>': scontrol's fields}."""
        shown = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], env=self.env, capture_output=True,
                               text=True)
        out = {}
        for line in shown.stdout.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            task = fields.get("ArrayTaskId")
            name = f"{fields.get('ArrayJobId')}_{task}" if task and task.isdigit() else fields.get("JobId")
            out[name] = fields
        return out

    def wait(self, job_id: str, timeout: float) -> dict[str, dict]:
        """Wait until every job of `job_id` has finished; their fields."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs(job_id)
            if jobs and all(j["JobState"] in FINISHED for j in jobs.values()):
                return jobs
            time.sleep(1)
        raise AssertionError(f"slurm job {job_id} unfinished after {timeout:.0f} s: "
                             f"{ {k: v['JobState'] for k, v in self.jobs(job_id).items()} }")
