"""Which device a trial trains on: a trial that was given a GPU never falls back to the CPU.

``harness.train`` picks CUDA when torch sees it, else the CPU. That is right for
``harness train`` on a laptop, and wrong for a Ray trial that booked a GPU on a
node whose torch is a CPU build (or whose driver is broken): it would train for
days on the CPU without a word. So the Tune trial says what it was given, in
the environment variable ``HARNESS_DEVICE`` (``harness.tune`` sets it from
``ray.get_gpu_ids()``), and :func:`choose` refuses the CPU when it says
``cuda``. The variable rather than a field of the trial config: the config is
what is learned (it is hashed into checkpoints and logged as params), and the
device is where it runs.

    HARNESS_DEVICE=auto   # default: CUDA if torch sees it, else the CPU
    HARNESS_DEVICE=cuda   # CUDA or an error (set for every trial Ray gave a GPU)
    HARNESS_DEVICE=cpu    # the CPU even where CUDA is present
"""
from __future__ import annotations

import os
from typing import Sequence

ENV = "HARNESS_DEVICE"
CHOICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The trial asked for a device this process cannot give; the message says what to fix."""


def requested() -> str:
    """The device this process was asked for (``HARNESS_DEVICE``; ``auto`` when unset)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise DeviceError(f"{ENV}={value!r} is not one of {', '.join(CHOICES)}; fix or unset it")
    return value


def choose(cuda_available: bool, want: str | None = None) -> str:
    """``"cuda"`` or ``"cpu"`` for a process whose torch does (not) see CUDA; ``want`` defaults to :func:`requested`."""
    want = want or requested()
    if want == "cuda" and not cuda_available:
        import torch

        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU build"
        raise DeviceError(f"this trial was given a GPU but torch {torch.__version__} ({build}) sees no CUDA "
                          f"device on this node; install a CUDA build of torch on every GPU node (harness doctor "
                          f"--address ... lists each node's torch), or set resources.gpu: 0")
    if want == "cpu":
        return "cpu"
    return "cuda" if cuda_available else "cpu"


def for_trial(gpu_ids: Sequence[object]) -> str:
    """What a trial given ``gpu_ids`` (Ray's ``get_gpu_ids()``) asks for: ``cuda`` with any GPU, else ``auto``."""
    return "cuda" if len(gpu_ids) else "auto"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe() -> str:
    """This machine in a few words for a table's header: CPU model, cores, torch build, GPUs.

    Float results reproduce bit for bit on the same CPU and torch build; another CPU picks other kernels, whose
    rounding sends a short training run elsewhere (docs/reproducibility.md), so a table names its machine.
    """
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    gpu = f", {len(gpus)} x {gpus[0]}" if gpus else ""
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}{gpu}"
