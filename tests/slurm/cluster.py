"""A throw-away single-node SLURM for the tests: munged, slurmctld and slurmd, as root, in one temp folder.

    python tests/slurm/cluster.py     # start one by hand: prints `export SLURM_CONF=...`, Ctrl-C stops it

Debian's ``slurm-wlm`` (22.05) and ``munge``, which ``.ci/run`` installs. Everything the daemons
read or write (munge key and socket, the generated ``slurm.conf``, state, spool, logs, pid files)
lives in one new folder, and the ports are free ones picked at start, so two test sessions can each
run their own cluster on one host. :meth:`Cluster.stop` cancels the jobs, stops only the daemons it
started and removes only its folder. Every wait has a deadline; a cluster that should work and does
not raises :class:`ClusterError` with the daemons' log tails, one that cannot run here (not root,
binaries missing) raises :class:`Unavailable` and the tests skip.

Settings that are not SLURM's defaults, and why:

- ``proctrack/linuxproc``, ``task/none``: no cgroups (containers and CI machines seldom delegate them).
- one node, this host as ``slurmd -C`` measures it (CPUs, memory), CPU only, ``NodeAddr=127.0.0.1``.
- ``AuthInfo=cred_expire=10``: SLURM 22.05 holds a requeued batch job until its old launch credential
  has expired (``batch_requeue_fini``: begin time = now + credential lifetime + 1, 120 s by default),
  so slurmd never takes a stale launch for the new one. 10 s keeps that rule and restarts a requeued
  job about 11 s later. (Slurm 25.11 adds ``SchedulerParameters=requeue_delay=`` for this.)
- ``bf_interval=1,sched_interval=1``: a pending job whose begin time has passed starts within a second,
  not at the next 30-60 s scheduling pass.
- ``MinJobAge=30``: a finished job leaves ``scontrol`` soon; ``jobcomp/filetxt`` keeps one line per
  run of every job (a requeued job has several), which :meth:`Cluster.runs` reads.
- ``KillWait=15``: after SLURM's SIGTERM (cancel, preemption) the ranks have 15 s to checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sbatch", "srun", "scontrol", "scancel", "sinfo", "squeue")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# Job states after which a job never runs again (a requeued job goes back to PENDING instead).
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}
START_TIMEOUT = 60.0
CLIENT_TIMEOUT = 30.0
POLL = 0.2


class Unavailable(Exception):
    """This host cannot run the cluster (not root, binaries missing): tests that need it skip."""


class ClusterError(RuntimeError):
    """The cluster should work here and did not; the message ends with the daemons' log tails."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def unavailable_reason() -> str | None:
    """Why this host cannot start the cluster, or None when it can."""
    if os.geteuid() != 0:
        return "needs root: munged, slurmctld and slurmd run as root"
    missing = [b for b in DAEMONS + CLIENTS if _binary(b) is None]
    if missing:
        return f"missing {' '.join(missing)} (Debian: apt-get install slurm-wlm munge; .ci/run does it)"
    node = node_name()
    try:
        socket.gethostbyname(node)
    except OSError:
        return f"this host's name {node!r} does not resolve (jobs find their first node by name)"
    return None


def node_name() -> str:
    return socket.gethostname().split(".")[0]


def node_hardware() -> str:
    """``CPUs=.. Boards=.. ... RealMemory=..`` of this host, as slurmd itself measures it."""
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    fields = [t for t in first.split() if t.split("=", 1)[0] in keys]
    if out.returncode != 0 or len(fields) != len(keys):
        raise ClusterError(f"`slurmd -C` did not describe this host: {out.stdout.strip()} {out.stderr.strip()}")
    return " ".join(fields)


def render_conf(root: Path, node: str, hardware: str, ctld_port: int, slurmd_port: int) -> str:
    """slurm.conf of a one-node cluster whose every path is under ``root`` (see the module docstring)."""
    return f"""\
ClusterName=sonotest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=30
KillWait=15
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """A running single-node cluster; a context manager that stops it on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.node = node_name()
        self.daemons: dict[str, subprocess.Popen] = {}

    # --- start -----------------------------------------------------------------------------------
    def _spawn(self, name: str, args: Sequence[str]) -> None:
        log = (self.root / "log" / f"{name}.out").open("w")
        self.daemons[name] = subprocess.Popen(
            [_binary(name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=self.env(),
            start_new_session=True,  # a Ctrl-C meant for pytest reaches the daemons only through stop()
        )
        log.close()

    def _start(self, timeout: float) -> None:
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))  # munge's own key format: 1 KiB of random bytes, owner-only
        key.chmod(0o400)
        sock = self.root / "munge" / "munge.socket"
        m = self.root / "munge"
        files = [f"--socket={sock}", f"--key-file={key}", f"--pid-file={m}/pid", f"--log-file={m}/munged.log"]
        self._spawn("munged", ["--foreground", "--force", *files, f"--seed-file={m}/seed"])
        self.wait_for(lambda: sock.exists(), timeout, "munged's socket")
        (self.root / "plugstack.conf").write_text("")  # no SPANK plugins from /etc/slurm
        self.conf.write_text(render_conf(self.root, self.node, node_hardware(), free_port(), free_port()))
        self._spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        self.wait_for(lambda: self.run("scontrol", "ping", check=False).returncode == 0, timeout, "slurmctld UP")
        self._spawn("slurmd", ["-D", "-f", str(self.conf), "-N", self.node])
        self.wait_for(lambda: self.node_state() == "idle", timeout, f"node {self.node} idle in sinfo")

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str, output: Path | None = None) -> None:
        """Poll ``ready`` until it holds; a stopped daemon or the deadline raises :class:`ClusterError`
        with ``output``'s tail (a job's output file) and the daemons' logs."""
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [f"{n} (exit {p.returncode})" for n, p in self.daemons.items() if p.poll() is not None]
            problem = f"{', '.join(dead)} stopped" if dead else None
            if problem is None and time.monotonic() > deadline:
                problem = f"not within {timeout:.0f} s"
            if problem:
                raise ClusterError(f"waiting for {what}: {problem}\n{self.output_tail(output)}{self.log_tails()}")
            time.sleep(POLL)

    # --- use -------------------------------------------------------------------------------------
    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at this cluster, plus ``extra``."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = SEARCH_PATH
        env.update(extra)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = CLIENT_TIMEOUT, **kwargs
    ) -> subprocess.CompletedProcess:
        """A client command (``scontrol``, ``sbatch``, ...) against this cluster."""
        kwargs.setdefault("env", self.env())
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"`{' '.join(args)}` took over {timeout:.0f} s\n{self.log_tails()}") from None
        if check and proc.returncode != 0:
            raise ClusterError(
                f"`{' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}\n{self.log_tails()}"
            )
        return proc

    def node_state(self) -> str:
        proc = self.run("sinfo", "--noheader", "--Node", f"--nodes={self.node}", "--format=%T", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def sbatch(self, *args: str, **kwargs) -> int:
        """Submit a batch job (``args`` as on sbatch's command line); its job id."""
        out = self.run("sbatch", "--parsable", *args, **kwargs).stdout.strip()
        return int(out.split(";")[0])

    def job(self, job_id: int) -> dict[str, str] | None:
        """``scontrol show job`` as a dict (``JobState``, ``Reason``, ``Restarts``, ``ExitCode``, ...);
        None once SLURM has forgotten the job."""
        proc = self.run("scontrol", "--oneliner", "show", "job", str(job_id), check=False)
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return None
            raise ClusterError(f"scontrol show job {job_id}: {proc.stderr.strip()}\n{self.log_tails()}")
        return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))

    def runs(self, job_id: int) -> list[dict[str, str]]:
        """One record per finished run of the job (``JobState``, ``ExitCode``, ``StartTime``, ...), oldest
        first, from the job-completion log: a job requeued twice has three."""
        return self.runs_where(JobId=str(job_id))

    def runs_where(self, **fields: str) -> list[dict[str, str]]:
        """The job-completion records (oldest first) whose fields have these values."""
        path = self.root / "log" / "jobcomp.txt"
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        recs = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines]
        return [r for r in recs if all(r.get(k) == v for k, v in fields.items())]

    def array_runs(self, array_job_id: int) -> dict[int, list[dict[str, str]]]:
        """The finished runs of every task of an array job, by task index (oldest run first)."""
        out: dict[int, list[dict[str, str]]] = {}
        for rec in self.runs_where(ArrayJobId=str(array_job_id)):
            out.setdefault(int(rec["ArrayTaskId"]), []).append(rec)
        return dict(sorted(out.items()))

    def wait_job(self, job_id: int, timeout: float, output: Path | None = None) -> dict[str, str]:
        """The record of the job's last run once it will never run again (state in :data:`FINISHED`).
        A held job or the deadline raises :class:`ClusterError` with ``output``'s tail and the logs."""

        def done() -> bool:
            rec = self.job(job_id)
            reason = rec.get("Reason", "") if rec is not None else ""
            if "held" in reason.lower() or reason == "DependencyNeverSatisfied":  # it would never run
                tails = self.output_tail(output) + self.log_tails()
                raise ClusterError(f"job {job_id} will not run ({reason})\n{tails}")
            state = rec["JobState"] if rec is not None else None
            runs = self.runs(job_id)  # the last run's line may come a moment after the state
            return (state is None or state in FINISHED) and bool(runs) and runs[-1].get("JobState") in FINISHED

        self.wait_for(done, timeout, f"job {job_id} to finish", output)
        return self.runs(job_id)[-1]

    def output_tail(self, output: Path | None, lines: int = 40) -> str:
        if output is None or not output.is_file():
            return ""
        text = output.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {output} (last {lines} lines)\n" + "\n".join(text) + "\n"

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of every daemon log, for failure messages."""
        parts = []
        for path in sorted(self.root.glob("*/*.log")) + sorted((self.root / "log").glob("*.out")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.relative_to(self.root)} (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    # --- stop ------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job, stop the daemons this object started, remove its folder."""
        ctld = self.daemons.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            jobs = self.run("squeue", "--noheader", "--format=%A", check=False).stdout.split()
            if jobs:
                self.run("scancel", "--full", *jobs, check=False)
                end = time.monotonic() + timeout
                while self.run("squeue", "--noheader", check=False).stdout.strip() and time.monotonic() < end:
                    time.sleep(POLL)
        for name in reversed(list(self.daemons)):
            proc = self.daemons[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
        self.daemons.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(timeout: float = START_TIMEOUT) -> Cluster:
    """Start a cluster in a new temp folder; :class:`Unavailable` when this host cannot run one."""
    reason = unavailable_reason()
    if reason:
        raise Unavailable(reason)
    root = Path(tempfile.mkdtemp(prefix="sonodistill-slurm-"))
    root.chmod(0o755)  # munged wants every folder above its socket searchable by all
    cluster = Cluster(root)
    try:
        cluster._start(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the cluster on kill as on Ctrl-C
    try:
        cluster = start()
    except (Unavailable, ClusterError) as exc:
        print(f"error: slurm: {exc}", file=sys.stderr)
        return 2
    with cluster:
        print(f"export SLURM_CONF={cluster.conf}\n# node {cluster.node} idle; Ctrl-C stops the cluster", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
