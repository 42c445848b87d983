"""The process runner: limits enforced from outside, a scrubbed environment, hidden folders."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from arl.runners import sandbox
from arl.runners.sandbox import bwrap_path, run_process
from tests.needs import require


def _no_bwrap() -> str | None:
    return None if bwrap_path() else ("bubblewrap is missing or unusable here (apt-get install bubblewrap; "
                                      "user namespaces must be allowed)")


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper is dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_wallclock_and_memory_limits_kill_the_whole_group(tmp_path):
    # The child writes its pid where the test can read it: killing the recipe must kill it too.
    naptime = f"{30 + os.getpid() % 1000 / 1000:.3f}"  # tells this test's child from any other sleep
    code = ("import subprocess, sys, time\n"
            f"child = subprocess.Popen(['sleep', '{naptime}'])\n"
            "open('child.pid', 'w').write(str(child.pid))\n"
            "time.sleep(30)\n")
    slow = run_process(["{python}", "-c", code], cwd=tmp_path, timeout_s=3, memory_mb=500)
    assert slow.killed_for == "wallclock" and slow.signal == 9 and slow.wall_s < 10
    child = (tmp_path / "child.pid").read_text()
    if slow.sandbox == "bwrap":  # a pid of the sandbox's own namespace, or the host's
        assert not any(_alive(int(p)) and Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep\x00" + naptime.encode())
                       for p in os.listdir("/proc") if p.isdigit())
    else:
        assert not _alive(int(child))
    hog = run_process(["{python}", "-c", "b = bytearray(700 * 2**20); import time; time.sleep(10)"],
                      cwd=tmp_path, timeout_s=20, memory_mb=200)
    assert hog.killed_for == "memory" and hog.peak_rss_mb > 200


def test_cpu_time_is_measured_from_outside_the_sandbox(tmp_path):
    # The recipe burns half a second of CPU by its own clock and says so; the runner's figure,
    # from wait4, must count at least that (under bubblewrap it used to count 0.002 s of it).
    code = ("import os, time\n"
            "while time.process_time() < 0.5: pass\n"
            "t = os.times(); print(t.user + t.system)\n")
    p = run_process(["{python}", "-c", code], cwd=tmp_path, timeout_s=60, memory_mb=500)
    assert p.exit_code == 0, p.stderr_tail
    inside = float(p.stdout_tail.split()[-1])
    assert inside >= 0.45 and p.cpu_s >= inside - 0.05, (p.sandbox, inside, p.cpu_s)
    # a killed recipe's CPU counts too (sampled from /proc: its sandbox dies before reaping it).
    # It writes a file once its own clock passed 0.6 s and spins on; the test then cancels it.
    code = ("import time\n"
            "while time.process_time() < 0.6: pass\n"
            "open('used', 'w').write('0.6')\n"
            "while True: pass\n")
    cancel = threading.Event()

    def cancel_when_used() -> None:
        while not (tmp_path / "used").exists() and not cancel.is_set():
            cancel.wait(0.02)
        cancel.set()

    threading.Thread(target=cancel_when_used, daemon=True).start()
    killed = run_process(["{python}", "-c", code], cwd=tmp_path, timeout_s=120, memory_mb=500, cancel=cancel)
    assert killed.killed_for == "cancelled" and (tmp_path / "used").exists()
    assert killed.cpu_s >= 0.6 - 0.1, (killed.sandbox, killed.cpu_s)  # sampled as it was killed



def test_a_killed_recipe_counts_the_cpu_of_the_children_it_ran(tmp_path):
    # Short children that end between two samples of /proc: each burns 0.15 s by its own
    # clock and writes it down; the recipe runs them one after another until it is killed.
    # Whatever they wrote down, the runner must count (it counted what it happened to sample).
    child = ("import time, os\n"
             "while time.process_time() < 0.15: pass\n"
             "open('spent', 'a').write(f'{time.process_time()}\\n')\n")
    code = ("import subprocess, sys\n"
            f"while True: subprocess.run([sys.executable, '-c', {child!r}])\n")
    cancel = threading.Event()

    def cancel_after_twelve() -> None:
        spent = tmp_path / "spent"
        while not (spent.exists() and len(spent.read_text().splitlines()) >= 12) and not cancel.is_set():
            cancel.wait(0.02)
        cancel.set()

    threading.Thread(target=cancel_after_twelve, daemon=True).start()
    p = run_process(["{python}", "-c", code], cwd=tmp_path, timeout_s=120, memory_mb=500, cancel=cancel)
    assert p.killed_for == "cancelled", p.stderr_tail
    children = sum(float(x) for x in (tmp_path / "spent").read_text().split())
    assert children >= 12 * 0.15 and p.cpu_s >= children, (p.sandbox, children, p.cpu_s)


def test_cancel_stops_a_running_process(tmp_path):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    p = run_process(["{python}", "-c", "import time; time.sleep(30)"], cwd=tmp_path, timeout_s=20,
                    memory_mb=200, cancel=cancel)
    assert p.killed_for == "cancelled" and p.wall_s < 10


def test_environment_is_scrubbed_and_threads_are_set(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_STORE", "postgresql://user:secret@db/arl")
    monkeypatch.setenv("ARL_LLM_API_KEY", "sk-secret")
    p = run_process(["{python}", "-c", "import os; print(sorted(os.environ))"], cwd=tmp_path,
                    timeout_s=20, memory_mb=200, threads=3, env={"ARL_SEED": "7"})
    assert "ARL_STORE" not in p.stdout_tail and "ARL_LLM_API_KEY" not in p.stdout_tail
    assert "'ARL_SEED'" in p.stdout_tail and "'OMP_NUM_THREADS'" in p.stdout_tail


def test_bubblewrap_hides_folders_and_the_network(tmp_path):
    require("sandbox", _no_bwrap())
    secret = tmp_path / "cache" / "heldout"
    secret.mkdir(parents=True)
    (secret / "answers.txt").write_text("42")
    train = tmp_path / "cache" / "train"
    train.mkdir()
    (train / "x.txt").write_text("train")
    work = tmp_path / "work"
    work.mkdir()
    # A port that certainly listens on the host, and a folder the recipe sees (its Python)
    # that the user running the test may write: each check can fail.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    target = Path(sys.prefix) / f"arl-write-test-{os.getpid()}"
    code = ("import os, socket, sys\n"
            "print(sorted(os.listdir(%r)))\n"
            "try:\n    socket.create_connection(('127.0.0.1', %d), timeout=2); print('net')\n"
            "except OSError: print('no net')\n"
            "try:\n    open(%r, 'w').write('x'); print('wrote')\nexcept OSError: print('read-only')\n"
            ) % (str(tmp_path / "cache"), port, str(target))
    try:
        assert os.access(sys.prefix, os.W_OK), "the test needs a Python folder it may write (a venv)"
        outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
        assert "net\n" in outside.stdout and "wrote" in outside.stdout  # unsandboxed, both succeed
        target.unlink()
        p = run_process(["{python}", "-c", code], cwd=work, timeout_s=20, memory_mb=300,
                        hidden=[tmp_path / "cache"], readable=[train])
    finally:
        listener.close()
        target.unlink(missing_ok=True)
    assert p.sandbox == "bwrap" and p.exit_code == 0, p.stderr_tail
    assert "['train']" in p.stdout_tail and "no net" in p.stdout_tail and "read-only" in p.stdout_tail
    assert not target.exists()


def test_python_under_tmp_stays_visible(monkeypatch, tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    checkout = tmp_path / "clone"
    checkout.mkdir()
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "path", [str(checkout), str(checkout / "missing"), "/usr/lib/python3"])
    paths = sandbox._python_paths()
    # The virtual environment, a package folder on sys.path: read-only. Not /usr: a system folder.
    assert os.path.realpath(venv) in paths and os.path.realpath(checkout) in paths
    assert not any(p == "/usr" or p.startswith("/usr/") for p in paths)


def test_a_ledger_beside_the_interpreter_is_hidden_file_by_file(monkeypatch, tmp_path, request):
    # A ledger in its own folder: the folder goes.
    alone = tmp_path / "store" / "ledger.db"
    alone.parent.mkdir()
    alone.write_text("scores")
    assert sandbox.hiding_sqlite(alone) == [alone.parent.resolve()]
    # A ledger in a checkout that also holds the virtual environment (sys.path): hiding the
    # folder would hide Python itself, so the ledger and its journals are masked instead.
    # Outside /tmp, which the sandbox replaces with an empty tmpfs.
    checkout = Path(tempfile.mkdtemp(prefix="arl-checkout-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(checkout))
    (checkout / ".venv").mkdir()
    ledger = checkout / "ledger.db"
    ledger.write_text("scores")
    (checkout / "ledger.db-wal").write_text("more scores")
    (checkout / "notes.txt").write_text("visible")
    monkeypatch.setattr(sys, "path", [*sys.path, str(checkout / ".venv")])
    hidden = sandbox.hiding_sqlite(ledger)
    assert hidden == [ledger.resolve(), (checkout / "ledger.db-wal").resolve()]
    require("sandbox", _no_bwrap())
    work = tmp_path / "work"
    work.mkdir()
    code = ("import sys\nfor f in sys.argv[1:]:\n"
            "    try:\n        print(f.rsplit('/', 1)[1], repr(open(f).read()))\n"
            "    except FileNotFoundError:\n        print(f.rsplit('/', 1)[1], 'absent')\n")
    p = run_process(["{python}", "-c", code, str(ledger), str(checkout / "ledger.db-wal"),
                     str(checkout / "notes.txt")], cwd=work, timeout_s=20, memory_mb=300, hidden=hidden)
    assert p.exit_code == 0, p.stderr_tail
    assert p.stdout_tail.split("\n")[:3] == ["ledger.db ''", "ledger.db-wal ''", "notes.txt absent"]


def test_a_recipe_reads_no_system_file_only_privileged_users_may(tmp_path, request, monkeypatch):
    """Run as root, arl's recipes still see /etc as an unprivileged user does: no password
    hashes, no munge key, no private TLS keys (root reads files root owns, capabilities or not)."""
    require("sandbox", _no_bwrap())
    planted: list[Path] = []
    if os.access("/etc", os.W_OK):  # as root (CI): a secret file and folder of our own
        secret = Path(f"/etc/arl-test-secret-{os.getpid()}")
        secret.write_text("hunter2")
        secret.chmod(0o600)
        folder = Path(f"/etc/arl-test-private-{os.getpid()}")
        folder.mkdir(mode=0o700)
        (folder / "key").write_text("private key")
        (folder / "key").chmod(0o644)  # readable itself, but inside a folder others may not enter
        public = Path(f"/etc/arl-test-public-{os.getpid()}")
        public.write_text("public")
        public.chmod(0o644)
        planted = [secret, folder / "key", public]
        request.addfinalizer(lambda: [secret.unlink(), (folder / "key").unlink(), folder.rmdir(), public.unlink()])
    paths = [p for p in ("/etc/shadow", "/etc/gshadow") if os.path.exists(p)] + [str(p) for p in planted]
    code = ("import sys\nfor f in sys.argv[1:]:\n"
            "    try:\n        print(repr(open(f).read()))\n"
            "    except OSError as e:\n        print(type(e).__name__)\n")
    p = run_process(["{python}", "-c", code, *paths], cwd=tmp_path, timeout_s=20, memory_mb=300)
    assert p.exit_code == 0 and p.sandbox == "bwrap", p.stderr_tail
    seen = dict(zip(paths, p.stdout_tail.split("\n")))
    for path in paths:
        if path.startswith("/etc/arl-test-public"):
            assert seen[path] == "'public'"  # what anyone may read stays readable
        else:
            assert seen[path] in ("''", "FileNotFoundError", "PermissionError"), (path, seen[path])
    assert "hunter2" not in p.stdout_tail and "private key" not in p.stdout_tail
    if os.geteuid() == 0 and os.path.exists("/etc/shadow"):
        assert Path("/etc/shadow").read_text()  # outside the sandbox root reads it: the mask did this
    if planted:  # the next run sees /etc as it is then: a key made since is masked, a file gone is no mask
        later = Path(f"/etc/arl-test-later-{os.getpid()}")
        later.write_text("hunter3")
        later.chmod(0o600)
        request.addfinalizer(lambda: later.unlink(missing_ok=True))
        planted[0].unlink()
        request.addfinalizer(lambda: planted[0].touch())  # the finalizer above removes it
        p = run_process(["{python}", "-c", code, str(later), str(planted[0])], cwd=tmp_path,
                        timeout_s=20, memory_mb=300)
        assert p.exit_code == 0, p.stderr_tail
        assert p.stdout_tail.split("\n")[:2] == ["''", "FileNotFoundError"], p.stdout_tail


def test_a_recipe_sees_the_system_its_python_and_its_own_folders_only(tmp_path, request):
    """What a sandboxed recipe can list and read: not the home folder, not arl's checkout,
    not another task's cache, not its own held-out data, not the ledger — all of them
    outside /tmp here (which the sandbox empties anyway), as on a user's machine."""
    require("sandbox", _no_bwrap())
    host = Path(tempfile.mkdtemp(prefix="arl-host-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(host))
    own = host / "cache" / "tiny-0123"
    (own / "train").mkdir(parents=True)
    (own / "train" / "x.txt").write_text("train")
    (own / "heldout").mkdir()
    (own / "heldout" / "y.txt").write_text("own answers")
    (host / "cache" / "golf-4567" / "heldout").mkdir(parents=True)
    (host / "cache" / "golf-4567" / "heldout" / "val.bin").write_text("other answers")
    (host / "store").mkdir()
    (host / "store" / "ledger.db").write_text("scores")
    work, out = host / "work", host / "out"
    work.mkdir()
    out.mkdir()
    checkout = Path(sandbox.__file__).resolve().parents[1]
    probes = {
        "home": Path.home(), "checkout": checkout / "pyproject.toml",
        "other task": host / "cache" / "golf-4567" / "heldout" / "val.bin",
        "own heldout": own / "heldout" / "y.txt", "ledger": host / "store" / "ledger.db",
        "train": own / "train" / "x.txt", "python": Path(sys.prefix) / "pyvenv.cfg",
    }
    code = ("import os, sys, json\n"
            "probes = json.loads(sys.argv[1])\n"
            "seen = {k: os.path.exists(p) and (os.listdir(p) if os.path.isdir(p) else open(p).read())"
            " for k, p in probes.items()}\n"
            "print(json.dumps({'/': sorted(os.listdir('/')), **seen}))\n")
    import json
    p = run_process(["{python}", "-c", code, json.dumps({k: str(v) for k, v in probes.items()})],
                    cwd=work, timeout_s=20, memory_mb=300, writable=[out],
                    readable=[own / "train"], hidden=[own, host / "store"])
    assert p.sandbox == "bwrap" and p.exit_code == 0, p.stderr_tail
    seen = json.loads(p.stdout_tail.strip().splitlines()[-1])
    assert seen["train"] == "train"
    assert seen["python"] is not False or not (Path(sys.prefix) / "pyvenv.cfg").exists()
    for name in ("checkout", "other task", "own heldout", "ledger"):
        assert seen[name] in (False, [], ""), (name, seen[name])
    # Of the home folder, only the way to the interpreter when it lives there (pyenv).
    home = Path.home().resolve()
    to_python = {Path(p).relative_to(home).parts[0] for p in sandbox._python_paths()
                 if Path(p).is_relative_to(home) and Path(p) != home}
    assert seen["home"] is False or set(seen["home"]) <= to_python, seen["home"]
    # The root holds the system, the sandbox's own /dev /proc /tmp, and the first folder of
    # each path the recipe was given or runs from — nothing else of the host.
    given = {Path(x).resolve().parts[1] for x in (work, out, own / "train", *sandbox._python_paths())}
    allowed = {"usr", "etc", "sys", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "dev", "proc", "tmp"}
    assert set(seen["/"]) <= allowed | given, set(seen["/"]) - allowed - given
