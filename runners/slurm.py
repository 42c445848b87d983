"""Workers as Slurm jobs: submit a job array of ``arl worker``s, list them, cancel them.

Plain ``sbatch``, ``squeue`` and ``scancel`` (every Slurm cluster has them; nothing to
install on the login node but arl). Each array task is one worker on the GPUs Slurm gave
its job: the batch script ``exec``s ``arl slurm worker``, so the worker is the job's batch
process and receives Slurm's signals itself — SIGTERM on ``scancel`` or preemption, and
SIGUSR1 ``--warn`` seconds before the time limit (``--signal=B:USR1@…``). On either it gives
its trial back at once (``LeaseExpired``, "released by …"), its recipe is killed, and it
exits; with ``--requeue`` a worker warned of its time limit asks Slurm to requeue its job,
which then rejoins as a new runner (the restart count is in its name).

A worker's runner name carries its Slurm job and node, ``slurm-<job>_<task>[.r<n>]@<node>``,
so the ledger (``TrialClaimed.runner`` and ``.host``), ``arl status`` and ``arl slurm
status`` all say which job runs which trial. The jobs of one ledger are found by their
comment, ``arl-ledger:<ledger id>``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from arl.ledger.errors import ArlError
from arl.ledger.projections import State
from arl.ledger.store import Ledger, StoreURL
from arl.tasks.adapters import parse_devices

#: The job name of every worker job arl submits.
JOB_NAME = "arl-worker"
#: Where Slurm puts the GPUs it allocated, in the order they are trusted: CUDA_VISIBLE_DEVICES
#: is what CUDA programs must be given (relative to the devices a cgroup lets the job see);
#: the SLURM_* lists name the same GPUs by the node's indices.
DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
#: Seconds before the time limit at which Slurm warns a worker (SIGUSR1) by default.
WARN_S = 120


class SlurmError(ArlError):
    """Slurm refused or is not there."""


@dataclass(frozen=True)
class Submission:
    """What ``arl slurm submit`` asks of Slurm."""

    store: str
    workers: int
    gpus_per_worker: int = 0
    cpus_per_worker: int = 1
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    qos: str | None = None
    constraint: str | None = None
    warn_s: int = WARN_S
    requeue: bool = False
    log_dir: Path = Path(".")
    sbatch_args: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()


def _check(sub: Submission) -> None:
    url = StoreURL.parse(sub.store)
    if url.kind != "postgresql":
        raise SlurmError(
            f"--store {url.display()} is a file on one machine; workers on a cluster share one "
            "PostgreSQL ledger: pass --store postgresql://USER@HOST/DB (a server the nodes reach)")
    if sub.workers < 1:
        raise SlurmError(f"--workers {sub.workers}: submit at least one worker")
    if sub.gpus_per_worker < 0:
        raise SlurmError(f"--gpus-per-worker {sub.gpus_per_worker}: give 0 (CPU workers) or more")
    if sub.cpus_per_worker < 1:
        raise SlurmError(f"--cpus-per-worker {sub.cpus_per_worker}: a worker needs at least one CPU")
    if sub.warn_s < 0:
        raise SlurmError(f"--warn {sub.warn_s}: seconds before the time limit, 0 or more")
    for arg in sub.sbatch_args:
        if not arg.startswith("-"):
            raise SlurmError(f"--sbatch-arg {arg!r} is not an sbatch option; write it as --sbatch-arg=--OPTION=VALUE")
        if arg.split("=")[0] in ("--array", "-a", "--wrap", "--parsable", "--comment", "--job-name", "-J"):
            raise SlurmError(f"--sbatch-arg {arg}: arl sets {arg.split('=')[0]} itself; leave it out")


def loopback_note(store: str) -> str | None:
    """A warning when the store names this machine: on a compute node, that is the node itself."""
    url = StoreURL.parse(store)
    if url.kind == "postgresql" and url.host in ("localhost", "127.0.0.1", "::1"):
        return (f"--store names {url.host}: each compute node will look for PostgreSQL on itself; "
                "fine on a one-node cluster, else give the database server's host name")
    return None


def sbatch_argv(sub: Submission, ledger_id: str) -> list[str]:
    """The ``sbatch`` command line of a submission (the script goes on its stdin)."""
    _check(sub)
    log = Path(sub.log_dir).resolve() / "arl-worker-%A_%a.out"
    argv = ["sbatch", "--parsable", f"--job-name={JOB_NAME}", f"--array=0-{sub.workers - 1}",
            f"--comment=arl-ledger:{ledger_id}", "--ntasks=1", f"--cpus-per-task={sub.cpus_per_worker}",
            f"--output={log}", "--open-mode=append", f"--signal=B:USR1@{sub.warn_s}", "--requeue"]
    if sub.gpus_per_worker:
        argv.append(f"--gres=gpu:{sub.gpus_per_worker}")
    for flag, value in (("partition", sub.partition), ("account", sub.account), ("time", sub.time),
                        ("qos", sub.qos), ("constraint", sub.constraint)):
        if value:
            argv.append(f"--{flag}={value}")
    return argv + list(sub.sbatch_args)


def batch_script(sub: Submission) -> str:
    """The job script: one ``arl slurm worker`` that is the job's batch process (``exec``)."""
    command = [sys.executable, "-m", "arl.runners.cli", "slurm", "worker", "--store", sub.store,
               "--gpus-per-worker", str(sub.gpus_per_worker), *(["--requeue"] if sub.requeue else []),
               "--", *sub.worker_args]
    return "\n".join([
        "#!/bin/bash",
        "# Written by `arl slurm submit`: one arl worker on this job's allocation.",
        "# exec: the worker itself receives Slurm's SIGTERM (scancel, preemption) and SIGUSR1",
        "# (the time-limit warning) and gives its trial back.",
        "exec " + " ".join(shlex.quote(c) for c in command),
        "",
    ])


def submit(sub: Submission) -> str:
    """Submit the workers as one job array; returns its job id."""
    _check(sub)
    with Ledger.open(sub.store) as ledger:
        ledger_id = ledger.ledger_id()
    Path(sub.log_dir).mkdir(parents=True, exist_ok=True)
    done = _slurm(sbatch_argv(sub, ledger_id), stdin=batch_script(sub))
    return done.strip().split(";")[0]


def _slurm(argv: Sequence[str], stdin: str | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} is not on PATH: run this on a Slurm login node "
                         "(or load the cluster's slurm module)")
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        why = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise SlurmError(f"{argv[0]} refused: {why}")
    return done.stdout


# -- inside a job -----------------------------------------------------------------------------


def allocated_devices(environ: Mapping[str, str], gpus: int) -> list[str]:
    """The GPUs Slurm allocated this job, from its environment; never guessed.

    0 GPUs asked: a CPU worker (nothing allocated is used). Else the first of
    :data:`DEVICE_VARS` that Slurm set, which must name exactly ``gpus`` devices.
    """
    if gpus == 0:
        return []
    for var in DEVICE_VARS:
        text = environ.get(var, "").strip()
        if text and text not in ("NoDevFiles", "none"):
            devices = parse_devices(text)
            if len(devices) != gpus:
                raise SlurmError(f"{var}={text} names {len(devices)} GPU(s) but this worker was submitted "
                                 f"for {gpus}; resubmit with --gpus-per-worker {len(devices)} or fix the "
                                 "cluster's gres settings")
            return devices
    raise SlurmError(f"this job was submitted for {gpus} GPU(s) but Slurm set none of "
                     f"{', '.join(DEVICE_VARS)}: the allocation has no GPUs arl can name; check the "
                     "partition's GPUs (sinfo -o '%P %G') or submit with --gpus-per-worker 0")


def runner_name(environ: Mapping[str, str]) -> str:
    """``slurm-<job>_<task>[.r<restarts>]@<node>``: the worker's identity in the ledger."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        raise SlurmError("SLURM_JOB_ID is not set: `arl slurm worker` runs inside a job that "
                         "`arl slurm submit` made; use `arl worker` outside Slurm")
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    ident = f"{array}_{task}" if array and task else job
    restarts = int(environ.get("SLURM_RESTART_COUNT") or 0)
    node = environ.get("SLURMD_NODENAME") or os.uname().nodename
    return f"slurm-{ident}" + (f".r{restarts}" if restarts else "") + f"@{node}"


def requeue_self(environ: Mapping[str, str]) -> None:
    """Ask Slurm to run this job again (after its trial was given back)."""
    _slurm(["scontrol", "requeue", environ["SLURM_JOB_ID"]])


# -- status and cancel --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    job: str          # as squeue names it: 123_4, or 123_[5-7] for tasks not started
    state: str        # RUNNING, PENDING, COMPLETING, …
    node: str
    elapsed: str
    limit: str
    trials: tuple[str, ...] = ()   # "#SEQ (trial id prefix) of search NAME" for each trial it runs


def jobs_of(ledger: Ledger) -> list[tuple[str, str, str, str, str]]:
    """This ledger's worker jobs in Slurm's queue: (job, state, node, elapsed, limit)."""
    out = _slurm(["squeue", "-h", "-r", f"--name={JOB_NAME}", "-o", "%i|%T|%N|%M|%l|%k"])
    mine = f"arl-ledger:{ledger.ledger_id()}"
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 6 and parts[5].strip() == mine:
            rows.append((parts[0], parts[1], parts[2], parts[3], parts[4]))
    return rows


def running_trials(state: State) -> dict[str, list[str]]:
    """Trials held by Slurm workers, by the job named in the runner: ``{"123_4": ["#7 (ab12cd34) of s"]}``."""
    held: dict[str, list[str]] = {}
    for row in state.trials.values():
        runner = row.runner or ""
        if row.label is not None or row.status not in ("claimed", "finished", "evaluated"):
            continue
        if not runner.startswith("slurm-"):
            continue
        job = runner[len("slurm-"):].split("@")[0].split(".r")[0]
        name = state.searches[row.search_id].name if row.search_id in state.searches else row.search_id[:8]
        held.setdefault(job, []).append(f"#{row.seq} ({row.trial_id[:8]}) of {name}")
    return held


def status(ledger: Ledger, state: State) -> list[JobRow]:
    held = running_trials(state)
    return [JobRow(job, st, node, elapsed, limit, tuple(held.get(job, ())))
            for job, st, node, elapsed, limit in jobs_of(ledger)]


def render_status(rows: Sequence[JobRow], where: str) -> str:
    if not rows:
        return f"no arl worker jobs of {where} in Slurm's queue (arl slurm submit --store … starts some)"
    lines = [f"{'JOB':14} {'STATE':11} {'NODE':12} {'ELAPSED':>10} {'LIMIT':>10}  TRIAL"]
    for r in rows:
        lines.append(f"{r.job:14} {r.state:11} {r.node or '-':12} {r.elapsed:>10} {r.limit:>10}  "
                     + (", ".join(r.trials) or "-"))
    running = sum(r.state == "RUNNING" for r in rows)
    lines.append(f"{len(rows)} job(s), {running} running, {sum(bool(r.trials) for r in rows)} with a trial; "
                 f"ledger {where}")
    return "\n".join(lines)


def cancel(ledger: Ledger, jobs: Sequence[str] = ()) -> list[str]:
    """scancel this ledger's worker jobs (or only ``jobs``, which must be among them); returns those cancelled.

    Each worker gets SIGTERM and gives its trial back before it exits.
    """
    mine = [j for j, *_ in jobs_of(ledger)]
    if jobs:
        known = {j.split("_")[0] for j in mine} | set(mine)
        strangers = [j for j in jobs if j not in known]
        if strangers:
            raise SlurmError(f"job(s) {', '.join(strangers)} are not arl workers of {ledger.url.display()} "
                             f"in Slurm's queue (see arl slurm status); nothing cancelled")
        targets = list(jobs)
    else:
        targets = sorted({j.split("_")[0] for j in mine})
    if targets:
        _slurm(["scancel", *targets])
    return targets
