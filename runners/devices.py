"""Which devices a worker's trials run on: given (``--devices``), detected, or CPU ranks.

``--devices 0-7`` (or ``0,1,2,3``) names CUDA devices of this machine; ids the
machine does not have are refused. ``--devices cpu:N`` means N CPU ranks and no
GPU, for dry runs and tests: a task that needs 8 GPUs gets 8 CPU ranks instead
(all N when N is fewer: a dry run at a smaller world size).
Without ``--devices`` the visible GPUs are detected (``nvidia-smi``, else
``torch.cuda``).

A worker holds its devices as one :class:`DevicePool`; each trial takes as many
as its task needs (``[needs] gpus``) for as long as it runs, so slots are sized
by the tasks served and no device ever serves two trials at once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from arl.ledger.errors import ArlError
from arl.tasks.adapters import device_sets, gpu_env, parse_devices

#: How a recipe learns it runs on CPU ranks (the launchers pass it to torch.distributed.run).
CPU = "cpu"


class DeviceError(ArlError):
    """The devices asked for cannot be had on this machine."""


@dataclass(frozen=True)
class Devices:
    """The devices of one worker (or one ``arl run``), and how they were found."""

    kind: str  # "cuda" or "cpu"
    ids: tuple[str, ...]
    #: Said in headers: "--devices 0-7", "detected by nvidia-smi", "none visible (…)".
    source: str

    def describe(self) -> str:
        if not self.ids:
            return f"no devices ({self.source})"
        what = f"{len(self.ids)} CPU rank(s)" if self.kind == CPU else f"GPU {','.join(self.ids)}"
        return f"{what} ({self.source})"

    def sets(self, per_trial: int) -> list[list[str]]:
        """Disjoint device sets of ``per_trial`` (how many trials of one task run at once)."""
        return device_sets(list(self.ids), per_trial)


def visible_gpus() -> tuple[list[str], str]:
    """The CUDA device ids this process can use, and how that was found out."""
    smi = shutil.which("nvidia-smi")
    ids: list[str] | None = None
    how = ""
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20)
            if out.returncode == 0:
                ids = [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]
                how = "nvidia-smi"
        except (OSError, subprocess.TimeoutExpired):
            ids = None
    if ids is None:
        try:
            import torch  # optional: arl itself does not need it
        except ImportError:
            return [], "no nvidia-smi and no torch to ask"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        ids, how = [str(i) for i in range(count)], "torch.cuda"
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and how == "nvidia-smi":
        # nvidia-smi lists every GPU of the machine; the process sees only the masked ones.
        allowed = [d.strip() for d in mask.split(",") if d.strip()]
        ids = [d for d in ids if d in allowed]
        how += f" within CUDA_VISIBLE_DEVICES={mask}"
    return ids, how


def parse(text: str | None, *, detect: bool = True) -> Devices:
    """``--devices`` as given (None: detect the visible GPUs); refuses ids the machine lacks."""
    if text is None:
        if not detect:
            return Devices("cuda", (), "none given")
        ids, how = visible_gpus()
        return Devices("cuda", tuple(ids), f"detected by {how}" if ids else f"no GPU visible: {how or 'none found'}")
    m = re.fullmatch(r"\s*cpu(?::(\d+))?\s*", text)
    if m:
        n = int(m[1] or 1)
        if n < 1:
            raise DeviceError(f"--devices {text}: give at least one CPU rank, e.g. --devices cpu:8")
        return Devices(CPU, tuple(f"cpu{i}" for i in range(n)), f"--devices {text.strip()}")
    try:
        ids = parse_devices(text)
    except ArlError as e:
        raise DeviceError(str(e)) from None
    if not ids:
        raise DeviceError(f"--devices {text!r} names no device; give e.g. 0-7, 0,1 or cpu:8")
    if not all(d.isdigit() for d in ids):
        bad = next(d for d in ids if not d.isdigit())
        raise DeviceError(f"--devices {text}: {bad!r} is not a GPU index; give indices like 0-7, or cpu:N for CPU ranks")
    if len(set(ids)) != len(ids):
        raise DeviceError(f"--devices {text} lists a device twice; each GPU runs one trial at a time")
    have, how = visible_gpus()
    missing = [d for d in ids if d not in have]
    if missing:
        seen = f"it has GPU {','.join(have)}" if have else "it shows no GPU"
        raise DeviceError(f"--devices {text}: this machine has no GPU {','.join(missing)} ({seen}, by {how}); "
                          "give ids it has, or --devices cpu:N for a dry run on CPU ranks")
    return Devices("cuda", tuple(ids), f"--devices {text.strip()}")


def trial_env(kind: str, ids: Sequence[str]) -> dict[str, str]:
    """What a trial placed on ``ids`` sees: its GPUs (CUDA_VISIBLE_DEVICES) or none, and its rank count."""
    if kind == CPU:
        return {"CUDA_VISIBLE_DEVICES": "", "ARL_GPUS": "0", "ARL_RANKS": str(len(ids)), "ARL_DEVICE": CPU}
    if not ids:
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {**gpu_env(ids), "ARL_RANKS": str(len(ids)), "ARL_DEVICE": "cuda"}


class DevicePool:
    """Devices shared by a worker's slots: a trial takes what its task needs while it runs."""

    def __init__(self, devices: Devices) -> None:
        self.devices = devices
        self._free = list(devices.ids)
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return self.devices.kind

    @property
    def size(self) -> int:
        return len(self.devices.ids)

    def take(self, n: int) -> list[str] | None:
        """``n`` free devices (lowest ids first), or None if fewer are free now."""
        with self._lock:
            if len(self._free) < n:
                return None
            taken, self._free = self._free[:n], self._free[n:]
            return taken

    def give(self, ids: Sequence[str]) -> None:
        with self._lock:
            order = {d: i for i, d in enumerate(self.devices.ids)}
            self._free = sorted({*self._free, *ids}, key=order.__getitem__)


def per_trial(needed: int, devices: Devices) -> int:
    """Devices one trial of a task needing ``needed`` GPUs takes: that many, except on CPU ranks
    (a dry run), where a trial takes all the ranks given when they are fewer."""
    if devices.kind == CPU and devices.ids:
        return min(needed, len(devices.ids))
    return needed


def shortfall(needed: int, devices: Devices) -> str | None:
    """Why trials needing ``needed`` devices each can never run on ``devices`` (None: they can)."""
    if per_trial(needed, devices) <= len(devices.ids):
        return None
    have = devices.describe()
    return (f"a trial needs {needed} GPU(s) and this worker has {have}; give --devices with at least "
            f"{needed} (e.g. --devices 0-{needed - 1}), or --devices cpu:{needed} for a dry run on CPU ranks")
