"""The paper's three GPU tasks searched end to end, on CPU ranks, through `arl run` and `arl worker`.

Each search runs a stand-in checkout (``tests.checkouts``: the upstream hyperparameter
forms and log lines, no model) through the adapter's own launcher and evaluator, with
the default agents, on ``--devices cpu:N``: the baseline is scored, later trials are
scored, and the search stops by itself. Devices the machine lacks, trials no worker can
run and paths not given are said in one line, never waited on or reused silently.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arl.ledger import Ledger
from arl.ledger.events import Label
from arl.ledger.projections import Projector
from tests import checkouts
from tests.needs import require

#: A search that has not finished by then is hung (each trial takes seconds on an idle machine).
SEARCH_TIMEOUT_S = 900


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A clean environment: own cache, no config file, no path variables of an earlier shell."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ARL_RECIPE_FROM_", "ARL_DATA_", "ARL_STORE"))}
    clean.update(ARL_CACHE=str(tmp_path / "cache"), ARL_CONFIG="")
    return clean


def _arl(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arl.runners.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def _scored(url: str) -> tuple[list, str]:
    """The search's trials (seq order) and why it stopped."""
    with Ledger.open(url, read_only=True) as ledger:
        state = Projector(ledger, name="test").catch_up()
        (search,) = state.searches.values()
        return sorted(state.trials_of(search.search_id), key=lambda r: r.seq), search.stop_reason or ""


def _assert_searched(url: str, out: subprocess.CompletedProcess, *, later: int = 2) -> None:
    assert out.returncode == 0, out.stderr[-3000:]
    rows, stopped = _scored(url)
    base = rows[0]
    assert base.label is Label.BASELINE and base.score is not None, (base.label, base.reason)
    scored = [r for r in rows[1:] if r.label in (Label.KEEP, Label.DISCARD) and r.score is not None]
    assert len(scored) >= later, [(r.seq, r.label, r.reason) for r in rows]
    assert stopped, "the search did not record why it stopped"


def _needs_torch() -> None:
    """The stand-ins start their ranks with torch.distributed.run."""
    require("torch", None if importlib.util.find_spec("torch") else
            "torch is not installed (pip install torch==2.13.0, then the [tasks] extra)")


def _search(tmp_path: Path, env: dict[str, str], task: str, devices: str) -> tuple[str, subprocess.CompletedProcess]:
    _needs_torch()
    checkout, data = {"parameter-golf": checkouts.parameter_golf, "nanochat-d12": checkouts.nanochat,
                      "airbench96": checkouts.airbench}[task](tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    out = _arl("run", task, "--store", url, "--recipe-from", str(checkout), "--data", str(data),
               "--devices", devices, "--trials", "2", env=env, cwd=tmp_path, timeout=SEARCH_TIMEOUT_S)
    _assert_searched(url, out)
    assert f"checkout {checkout} (from --recipe-from)" in out.stderr and f"data     {data} (from --data)" in out.stderr
    return url, out


def test_parameter_golf_searches_on_8_cpu_ranks(tmp_path, env):
    url, out = _search(tmp_path, env, "parameter-golf", "cpu:8")
    assert "devices  8 CPU rank(s) (--devices cpu:8), 8 per trial" in out.stderr
    rows, _ = _scored(url)
    with Ledger.open(url, read_only=True) as ledger:
        evaluated = [e for e in ledger.stream(rows[0].trial_id) if type(e).__name__ == "TrialEvaluated"][0]
    assert evaluated.metrics["world_size"] == 8.0  # the log's world_size: 8 gloo ranks ran


@pytest.mark.parametrize("task, devices, header", [
    ("nanochat-d12", "cpu:2", "2 per trial (a dry run: the task needs 8 GPUs)"),
    ("airbench96", "cpu:1", "1 CPU rank(s) (--devices cpu:1), 1 per trial"),
])
def test_nanochat_and_airbench_search_on_cpu_ranks(task, devices, header, tmp_path, env):
    _url, out = _search(tmp_path, env, task, devices)
    assert header in out.stderr


# -- devices that cannot be had, said in one line ------------------------------------------------


def _no_gpu_here(env: dict[str, str]) -> None:
    """The refusals below are for a machine without GPUs: on one with them, hide them."""
    env["CUDA_VISIBLE_DEVICES"] = ""


@pytest.mark.parametrize("devices, message", [
    ("0-7", "this machine has no GPU 0,1,2,3,4,5,6,7"),
    ("cpu:0", "give at least one CPU rank"),
    ("0,0", "lists a device twice"),
    ("gpu0", "is not a GPU index"),
])
def test_devices_the_machine_lacks_are_refused_in_one_line(devices, message, tmp_path, env):
    _no_gpu_here(env)
    checkout, data = checkouts.parameter_golf(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for argv in (["run", "parameter-golf", "--store", url, "--recipe-from", str(checkout), "--data", str(data)],
                 ["worker", "--store", url, "--exit-when-idle"],
                 ["task", "check", "parameter-golf", "--recipe-from", str(checkout), "--data", str(data)]):
        out = _arl(*argv, "--devices", devices, env=env, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, (argv, out.stderr)
    assert not (tmp_path / "ledger.db").exists() or _no_search(url)  # nothing was recorded


def _no_search(url: str) -> bool:
    with Ledger.open(url, read_only=True) as ledger:
        return not Projector(ledger, name="test").catch_up().searches


def test_a_gpu_task_with_no_gpu_visible_says_so_and_how_to_dry_run(tmp_path, env):
    _no_gpu_here(env)
    checkout, data = checkouts.parameter_golf(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    out = _arl("run", "parameter-golf", "--store", url, "--recipe-from", str(checkout), "--data", str(data),
               env=env, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "needs 8 GPU(s)" in out.stderr and "no GPU visible" in out.stderr and "--devices cpu:8" in out.stderr
    assert "--workers 0" in out.stderr
    bench, images = checkouts.airbench(tmp_path)
    out = _arl("run", "airbench96", "--store", url, "--recipe-from", str(bench), "--data", str(images),
               "--devices", "cpu:2", "--workers", "3", env=env, cwd=tmp_path)
    assert out.returncode == 2 and "--workers 3" in out.stderr and "give --workers 2 or fewer" in out.stderr
    assert _no_search(url)


# -- paths: option, environment, config, record; said, never reused unsaid -------------------------


def test_a_data_folder_given_before_is_not_reused_silently(tmp_path, env):
    checkout, data = checkouts.parameter_golf(tmp_path)
    ok = _arl("task", "check", "parameter-golf", "--no-run", "--recipe-from", str(checkout), "--data", str(data),
              env=env, cwd=tmp_path)
    assert ok.returncode == 0 and f"data     {data} (from --data)" in ok.stdout, ok.stderr
    again = _arl("task", "check", "parameter-golf", "--no-run", "--recipe-from", str(checkout), env=env, cwd=tmp_path)
    assert again.returncode == 2 and "none was given" in again.stderr, again.stdout + again.stderr
    by_env = _arl("task", "check", "parameter-golf", "--no-run", env={
        **env, "ARL_RECIPE_FROM_PARAMETER_GOLF": str(checkout), "ARL_DATA_PARAMETER_GOLF": str(data)}, cwd=tmp_path)
    assert by_env.returncode == 0, by_env.stderr
    assert f"checkout {checkout} (from ARL_RECIPE_FROM_PARAMETER_GOLF)" in by_env.stdout
    config = tmp_path / "arl.toml"
    config.write_text(f'[tasks.parameter-golf]\nrecipe_from = "{checkout}"\ndata = "{data}"\n')
    by_config = _arl("task", "check", "parameter-golf", "--no-run", env={**env, "ARL_CONFIG": str(config)},
                     cwd=tmp_path)
    assert by_config.returncode == 0 and f"(from {config} [tasks.parameter-golf] data)" in by_config.stdout


# -- nothing waits silently ----------------------------------------------------------------------


def test_a_trial_no_worker_takes_is_said_in_the_progress_line_and_in_status(tmp_path, env):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    driver = subprocess.Popen([sys.executable, "-m", "arl.runners.cli", "run", "golf-mini", "--store", url,
                               "--workers", "0", "--trials", "1", "--name", "nobody"],
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                              # Ctrl-C as a terminal sends it: a suite started in the background
                              # (as CI may be) hands its children SIGINT ignored otherwise
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = driver.stderr.readline()
            if "unclaimed for" in line:
                break
        assert "trial #0 unclaimed for" in line and "no worker has taken it" in line, line
        status = _arl("status", "nobody", "--store", url, env=env, cwd=tmp_path)
        assert "waiting: trial #0 unclaimed for" in status.stdout, status.stdout + status.stderr
    finally:
        driver.send_signal(signal.SIGINT)
        try:
            driver.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()  # never left running past the test
            raise


def test_a_worker_too_small_for_a_trial_says_so_and_a_search_runs_on_separate_workers(tmp_path, env, pg_url):
    """PostgreSQL, `arl run --workers 0` and two `arl worker` processes: one without devices (it says
    it cannot run the trials), one with CPU ranks (it runs them all)."""
    _needs_torch()
    url = pg_url
    checkout, data = checkouts.parameter_golf(tmp_path)
    with Ledger.open(url):
        pass  # the store's tables exist before two workers open it at once
    workers = []
    try:
        for devices in ([], ["--devices", "cpu:2"]):
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "arl.runners.cli", "worker", "--store", url, "--name",
                 "cpu" if devices else "bare", *devices], stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env))
        out = _arl("run", "parameter-golf", "--store", url, "--workers", "0", "--recipe-from", str(checkout),
                   "--data", str(data), "--trials", "2", env=env, cwd=tmp_path, timeout=SEARCH_TIMEOUT_S)
        _assert_searched(url, out)
        rows, _ = _scored(url)
        with Ledger.open(url, read_only=True) as ledger:
            runners = {e.runner for r in rows for e in ledger.stream(r.trial_id) if type(e).__name__ == "TrialClaimed"}
        assert runners == {"cpu/0"} or runners <= {"cpu/0", "cpu/1"}, runners
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        errs = [w.communicate(timeout=60)[1] for w in workers]
    assert "cannot run trial #0" in errs[0] and "needs 8 GPU(s)" in errs[0], errs[0]
    assert "2 CPU rank(s) (--devices cpu:2)" in errs[1] and "uses checkout" in errs[1], errs[1]


def test_a_pool_gives_each_trial_its_own_devices_and_cpu_ranks_stand_in_for_gpus():
    from arl.runners.devices import CPU, DevicePool, Devices, parse, per_trial, shortfall, trial_env

    pool = DevicePool(Devices("cuda", ("0", "1", "2", "3"), "given"))
    a, b = pool.take(2), pool.take(2)
    assert a == ["0", "1"] and b == ["2", "3"] and pool.take(1) is None  # no device serves two trials
    pool.give(b)
    assert pool.take(3) is None and pool.take(2) == ["2", "3"]
    cpu = parse("cpu:2")
    assert cpu.kind == CPU and cpu.ids == ("cpu0", "cpu1") and per_trial(8, cpu) == 2 and shortfall(8, cpu) is None
    assert trial_env(CPU, ["cpu0", "cpu1"]) == {"CUDA_VISIBLE_DEVICES": "", "ARL_GPUS": "0", "ARL_RANKS": "2",
                                                 "ARL_DEVICE": "cpu"}
    assert trial_env("cuda", ["4", "5"])["CUDA_VISIBLE_DEVICES"] == "4,5"
    four = Devices("cuda", ("0", "1", "2", "3"), "given")
    assert per_trial(8, four) == 8 and "needs 8 GPU(s)" in shortfall(8, four)
