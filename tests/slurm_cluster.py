"""A throwaway SLURM cluster on this machine, from Debian's packages, for the tests.

One slurmctld and one slurmd per simulated node, all on 127.0.0.1, started by hand (there is
no systemd) and stopped by PID. Settings make scheduling and requeues take seconds. Each node
claims 16 CPUs and 64 GB (config_overrides) and the partition is named `cpu`, as on a real
cluster, so the shipped scripts' own #SBATCH requests and the README's lines run unchanged.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]

CONF = """ClusterName=kowikitest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=20
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=n[1-{nodes}] NodeHostname={host} NodeAddr=127.0.0.1 Port=[{port0}-{port1}] CPUs=16 RealMemory=65536 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def ensure_installed() -> str | None:
    """Install the packages if missing; returns why SLURM cannot run here, or None."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed and this is not a root Debian machine to apt-get it on"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            return f"'{' '.join(cmd)}' failed"
    return None


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 2):
        self.root, self.nodes, self.procs = root, nodes, []
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> None:
        d = self.root
        (d / "state").mkdir(parents=True, exist_ok=True)
        for n in range(1, self.nodes + 1):
            (d / f"spool-n{n}").mkdir(exist_ok=True)
        self.conf.write_text(CONF.format(host=self.host, d=d, nodes=self.nodes, ctld_port=16817, port0=17001,
                                         port1=17000 + self.nodes))
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        self._spawn(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "-F", "--force"])
        time.sleep(0.5)
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for n in range(1, self.nodes + 1):
            self._spawn(["slurmd", "-D", "-N", f"n{n}", "-f", str(self.conf)])
        self.wait_idle()

    def _spawn(self, cmd) -> None:
        log = open(self.root / f"{Path(cmd[0]).name}-{len(self.procs)}.out", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def wait_idle(self, timeout: float = 60) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            out = subprocess.run(["sinfo", "-h", "-o", "%T %D"], env=self.env, capture_output=True, text=True).stdout
            if out.strip() and all(line.split()[0] in ("idle", "mixed") for line in out.strip().splitlines()) \
                    and sum(int(line.split()[1]) for line in out.strip().splitlines()) == self.nodes:
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM nodes never became idle: {out!r}; see {self.root}/*.log")

    def sbatch(self, *args, env: dict | None = None) -> str:
        proc = subprocess.run(["sbatch", "--parsable", *map(str, args)], env=dict(self.env, **(env or {})),
                              capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise RuntimeError(f"sbatch failed: {proc.stderr}")
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env, capture_output=True, text=True).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait(self, job_id: str, timeout: float = 600, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                               "NODE_FAIL", "OUT_OF_MEMORY")) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            info = self.job(job_id)
            if info.get("JobState") in until or info.get("Reason") == "DependencyNeverSatisfied":
                return info  # a failed upstream job: the caller shows the logs
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout}s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
