"""Workers as Slurm jobs, against real Slurm daemons (munged, slurmctld, slurmd on this machine;
`.ci/slurm-up` starts them) and the real PostgreSQL server: nothing lost or labelled twice when
a job is cancelled mid-trial or warned of its time limit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.errors import ArlError
from arl.ledger.programs import read_folder
from arl.runners import slurm
from arl.runners.trials import start_search, submit
from tests.needs import require
from tests.test_scale import edited, env, task

__all__ = ["env", "task"]  # the fixtures, shared with tests/test_scale.py

ROOT = Path(__file__).resolve().parents[1]
ARL = [sys.executable, "-m", "arl.runners.cli"]
#: Seconds a requeued job's first run takes to be forgotten by slurmd.
REQUEUE_SETTLE_S = 5.0


def _slurm_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm's commands (sinfo, sbatch) are not installed; .ci/slurm-up installs and starts Slurm"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s; is slurmctld running? (.ci/slurm-up starts it)"
    states = done.stdout.split()
    if done.returncode != 0 or not any(s in ("idle", "mix", "alloc") for s in states):
        why = " ".join((done.stderr or done.stdout).split()) or "no node up"
        return f"no Slurm node answers here ({why}); .ci/slurm-up starts munged, slurmctld and slurmd"
    return None


@pytest.fixture
def cluster():
    require("SLURM", _slurm_problem())


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


def arl(*args, env, check=True):
    done = subprocess.run([*ARL, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def events_of(ledger, kind):
    return [e for _, e in ledger.iter_events() if isinstance(e, kind)]


def gone(job):
    out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T"], capture_output=True, text=True).stdout
    return not out.strip()


# -- without Slurm: what a job is asked for and told ---------------------------------------------------


def test_devices_come_from_the_allocation_and_are_never_guessed():
    assert slurm.allocated_devices({}, 0) == []
    assert slurm.allocated_devices({"CUDA_VISIBLE_DEVICES": "0,1"}, 0) == []  # a CPU worker uses none
    assert slurm.allocated_devices({"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_JOB_GPUS": "6,7"}, 2) == ["2", "3"]
    assert slurm.allocated_devices({"SLURM_STEP_GPUS": "5"}, 1) == ["5"]
    assert slurm.allocated_devices({"SLURM_JOB_GPUS": "4,5"}, 2) == ["4", "5"]
    with pytest.raises(ArlError, match="set none of CUDA_VISIBLE_DEVICES.*--gpus-per-worker 0"):
        slurm.allocated_devices({"SLURM_JOB_ID": "9"}, 1)  # asked for a GPU, Slurm named none
    with pytest.raises(ArlError, match="set none of"):
        slurm.allocated_devices({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 1)
    with pytest.raises(ArlError, match="names 1 GPU.*submitted for 2"):
        slurm.allocated_devices({"CUDA_VISIBLE_DEVICES": "3"}, 2)


def test_the_runner_name_carries_the_job_and_the_node():
    env = {"SLURM_JOB_ID": "1042", "SLURM_ARRAY_JOB_ID": "1040", "SLURM_ARRAY_TASK_ID": "2",
           "SLURMD_NODENAME": "gpu07"}
    assert slurm.runner_name(env) == "slurm-1040_2@gpu07"
    assert slurm.runner_name({**env, "SLURM_RESTART_COUNT": "1"}) == "slurm-1040_2.r1@gpu07"
    assert slurm.runner_name({"SLURM_JOB_ID": "77", "SLURMD_NODENAME": "n1"}) == "slurm-77@n1"
    with pytest.raises(ArlError, match="SLURM_JOB_ID is not set"):
        slurm.runner_name({})


def test_a_submission_is_checked_before_slurm_sees_it(tmp_path):
    pg = "postgresql://arl@db.cluster/arl"
    argv = slurm.sbatch_argv(slurm.Submission(
        store=pg, workers=3, gpus_per_worker=2, partition="gpu", account="lab", time="4:00:00",
        qos="high", constraint="a100", warn_s=300, sbatch_args=("--mem=32G",)), "LEDGER")
    assert argv[:2] == ["sbatch", "--parsable"]
    for want in ("--array=0-2", "--gres=gpu:2", "--partition=gpu", "--account=lab", "--time=4:00:00",
                 "--qos=high", "--constraint=a100", "--signal=B:USR1@300", "--requeue", "--mem=32G",
                 "--comment=arl-ledger:LEDGER"):
        assert want in argv
    assert not any(a.startswith("--gres") for a in slurm.sbatch_argv(slurm.Submission(store=pg, workers=1), "L"))
    script = slurm.batch_script(slurm.Submission(store=pg, workers=1, gpus_per_worker=1, requeue=True))
    assert "\nexec " in script and "slurm worker" in script and "--requeue" in script
    bad = {
        f"sqlite:///{tmp_path}/l.db": "share one PostgreSQL ledger",
    }
    for store, why in bad.items():
        with pytest.raises(ArlError, match=why):
            slurm.sbatch_argv(slurm.Submission(store=store, workers=2), "L")
    for kwargs, why in [(dict(workers=0), "at least one worker"), (dict(workers=1, gpus_per_worker=-1), "0 \\(CPU"),
                        (dict(workers=1, sbatch_args=("--array=0-99",)), "arl sets --array"),
                        (dict(workers=1, sbatch_args=("mem=4G",)), "not an sbatch option"),
                        (dict(workers=1, warn_s=-5), "0 or more")]:
        with pytest.raises(ArlError, match=why):
            slurm.sbatch_argv(slurm.Submission(store=pg, **kwargs), "L")


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path, env):
    done = arl("slurm", "submit", "--store", f"sqlite:///{tmp_path}/l.db", "--workers", "2", env=env, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "PostgreSQL ledger" in done.stderr
    done = arl("slurm", "worker", "--store", f"sqlite:///{tmp_path}/l.db", env={**env, "SLURM_JOB_ID": ""},
               check=False)
    assert done.returncode == 2 and "SLURM_JOB_ID is not set" in done.stderr
    Ledger.open(f"sqlite:///{tmp_path}/l.db").close()
    done = arl("slurm", "status", "--store", f"sqlite:///{tmp_path}/l.db", env={**env, "PATH": str(tmp_path)},
               check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "squeue is not on PATH: run this on a Slurm login node" in done.stderr


# -- against the real daemons ------------------------------------------------------------------------------


def test_a_cancelled_job_gives_its_trial_back_and_every_trial_is_labelled_once(cluster, pg_url, env, task,
                                                                               tmp_path):
    with Ledger.open(pg_url) as ledger:
        search = start_search(ledger, task, name="on-slurm")
        base = read_folder(task.recipe_dir)
        # Every trial runs two seeds of 1.2 s: long enough to be cancelled mid-run.
        submit(ledger, task, search, 0, agent="baseline", surface="", program=edited(task, SLEEP_S=1.2))
        for seq in range(1, 6):
            submit(ledger, task, search, seq, agent="t", surface="fit", parent_program=base,
                   program=edited(task, SHRINK=round(0.8 + seq * 0.04, 2), SLEEP_S=1.2))
        done = arl("slurm", "submit", "--store", pg_url, "--workers", "2", "--log-dir", str(tmp_path), env=env)
        job = re.search(r"submitted job array (\d+)", done.stdout)[1]
        try:
            def running_in(task_id):
                for e in events_of(ledger, ev.TrialClaimed):
                    if e.runner.startswith(f"slurm-{job}_{task_id}@"):
                        if isinstance(ledger.stream(e.originator_id)[-1], ev.TrialClaimed):
                            return e.originator_id
                return None

            # The first worker's job is cancelled while its recipe runs (claimed, no result yet).
            trial = wait_for(lambda: running_in(0), what=f"a trial running in job {job}_0")
            subprocess.run(["scancel", f"{job}_0"], check=True)
            wait_for(lambda: gone(f"{job}_0"), what="the cancelled job to end")

            # The other job goes on; both status commands name it, its node and its trial.
            def shown():
                status = arl("slurm", "status", "--store", pg_url, env=env).stdout
                row = re.search(rf"{job}_1 +RUNNING +\S+ .*#\d+ \((\w{{8}})\) of on-slurm", status)
                return row and any(e.originator_id.startswith(row[1]) and e.runner.startswith(f"slurm-{job}_1@")
                                   for e in events_of(ledger, ev.TrialClaimed))

            wait_for(shown, what="arl slurm status to show the trial job 1 runs")
            wait_for(lambda: re.search(rf"running: .*#\d+ on slurm-{job}_1@",
                                       arl("status", "--store", pg_url, env=env).stdout),
                     what="arl status to name the Slurm runner")

            def all_labelled():
                return len({e.originator_id for e in events_of(ledger, ev.TrialLabeled)}) == 6

            wait_for(all_labelled, what="six labels")
            stranger = arl("slurm", "cancel", "--store", pg_url, "999999", env=env, check=False)
            assert stranger.returncode == 2 and "999999 are not arl workers" in stranger.stderr
            labels = events_of(ledger, ev.TrialLabeled)
            stream = ledger.stream(trial)
            claims = events_of(ledger, ev.TrialClaimed)
        finally:
            cancelled = arl("slurm", "cancel", "--store", pg_url, env=env).stdout
            wait_for(lambda: gone(job), what="the array to end")
    assert f"cancelled {job}" in cancelled
    assert len(labels) == 6 and len({e.originator_id for e in labels}) == 6  # each trial once
    kinds = [type(e).__name__ for e in stream]
    assert kinds == ["TrialProposed", "TrialSubmitted", "TrialClaimed", "LeaseExpired", "TrialClaimed",
                     "RunFinished", "TrialEvaluated", "TrialLabeled"], kinds
    released = next(e for e in stream if isinstance(e, ev.LeaseExpired))
    assert re.fullmatch(rf"released by slurm-{job}_0@\S+: shutting down", released.reason), released.reason
    assert {e.runner.split("@")[0] for e in claims} == {f"slurm-{job}_0", f"slurm-{job}_1"}
    assert all(e.host == e.runner.split("@")[1] for e in claims)  # the node, as Slurm names it
    assert not any(e.label.value in ("crash", "infra_error") for e in labels), [e.reason for e in labels]


def test_a_worker_warned_of_its_time_limit_gives_back_requeues_and_rejoins(cluster, pg_url, env, task, tmp_path):
    with Ledger.open(pg_url) as ledger:
        search = start_search(ledger, task, name="requeue")
        trial = submit(ledger, task, search, 0, agent="baseline", surface="",
                       program=edited(task, SLEEP_S=1.5), seeds=(0, 1))
        done = arl("slurm", "submit", "--store", pg_url, "--workers", "1", "--gpus-per-worker", "1", "--requeue",
                   "--log-dir", str(tmp_path), env=env)
        job = re.search(r"submitted job array (\d+)", done.stdout)[1]
        try:
            wait_for(lambda: isinstance(ledger.stream(trial)[-1], ev.TrialClaimed), what="the claim")
            time.sleep(0.5)
            # What Slurm sends --warn seconds before the time limit (--signal=B:USR1@…).
            subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_0"], check=True)
            wait_for(lambda: isinstance(ledger.stream(trial)[-1], ev.LeaseExpired), what="the trial given back")
            # Slurm holds a requeued job two minutes (Reason=BeginTime); once slurmd has let go
            # of the job's first run (it refuses to launch a job id it is still killing), start it now.
            wait_for(lambda: "PENDING" in subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                                                          text=True).stdout, what="the job to be requeued")
            time.sleep(REQUEUE_SETTLE_S)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            wait_for(lambda: any(isinstance(e, ev.TrialLabeled) for e in ledger.stream(trial)), timeout=180,
                     what="the requeued job to label the trial")
            stream = ledger.stream(trial)
        finally:
            arl("slurm", "cancel", "--store", pg_url, env=env)
            wait_for(lambda: gone(job), what="the job to end")
    log = "".join(p.read_text() for p in tmp_path.glob(f"arl-worker-{job}_0.out"))
    kinds = [type(e).__name__ for e in stream]
    assert kinds[:4] == ["TrialProposed", "TrialSubmitted", "TrialClaimed", "LeaseExpired"], kinds
    assert kinds.count("TrialLabeled") == 1
    first, again = [e for e in stream if isinstance(e, ev.TrialClaimed)]
    assert first.runner.startswith(f"slurm-{job}_0@") and again.runner.startswith(f"slurm-{job}_0.r1@")
    assert "GPU 0 (allocated by Slurm)" in log  # the GPU Slurm allocated (a stand-in device on this machine)
    assert "job requeued" in log
