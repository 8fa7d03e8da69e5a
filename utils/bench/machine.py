"""What the figures are measured on (CPU, cores, GPU, versions) and how they are timed."""
from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import cv2
import numpy as np


def usable_cores() -> int:
    """CPU cores this process may use: affinity mask and cgroup quota (containers) both count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        cores = cores if quota == "max" else min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def nvidia_smi(query: str) -> list[str]:
    """One line per NVIDIA GPU of ``nvidia-smi --query-gpu=QUERY`` (no units; empty without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout if shutil.which("nvidia-smi") else ""
    except (OSError, subprocess.SubprocessError):
        return []
    return [", ".join(part.strip() for part in line.split(",")) for line in out.splitlines() if line.strip()]


def keras_device() -> str:
    """``"GPU (<name>)"`` when Keras sees a GPU, else ``"CPU"`` (the ``device`` column of a row)."""
    import keras
    try:
        gpus = keras.distribution.list_devices("gpu")
    except Exception:  # noqa: BLE001 - a backend without GPU support says so by raising
        gpus = []
    return f"GPU ({(nvidia_smi('name') or [str(gpus[0])])[0]})" if gpus else "CPU"


def describe_machine() -> str:
    """One line: CPU, cores, RAM, GPU, OS and the versions that matter (one description per machine)."""
    import keras
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.lower().startswith("model name")),
               platform.processor() or platform.machine())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = "; ".join(g + " MiB" for g in nvidia_smi("name,memory.total")) or "none found by nvidia-smi"
    backend = keras.backend.backend()
    return (f"CPU {cpu}, {usable_cores()} usable ({os.cpu_count()} logical) cores, RAM {ram:.1f} GiB, GPU {gpus}; "
            f"{platform.platform()}; Python {platform.python_version()}; Keras {keras.__version__}, backend {backend} "
            f"{importlib.import_module(backend).__version__}; OpenCV {cv2.__version__}; NumPy {np.__version__}")


def machine_id(description: str) -> str:
    return hashlib.sha1(description.encode()).hexdigest()[:8]


def peak_memory_mib() -> tuple[float, str]:
    """Peak memory so far (MiB) of the first GPU as the Keras backend reports it (JAX, PyTorch), and
    how it was read; without a GPU (or on TensorFlow) the peak resident memory of this process."""
    import keras
    try:
        if keras.backend.backend() == "jax":
            import jax
            gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
            if gpus:
                return gpus[0].memory_stats()["peak_bytes_in_use"] / 2**20, "GPU, JAX peak_bytes_in_use"
        elif keras.backend.backend() == "torch":
            import torch
            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2**20, "GPU, torch.cuda.max_memory_allocated"
    except Exception:  # noqa: BLE001 - no statistics from this backend: fall back to the host figure
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host peak RSS (no GPU statistics)"


def time_until(step: Callable[[], int | None], min_time: float, min_reps: int = 1,
               warmup: int = 1) -> tuple[int, float]:
    """Call ``step`` ``warmup`` times untimed, then until ``min_time`` s and ``min_reps`` calls passed.

    ``step`` returns how many items it handled (``None`` counts as 1). Returns ``(items, seconds)``.
    """
    for _ in range(warmup):
        step()
    items, reps, started = 0, 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - started < min_time:
        done = step()
        items, reps = items + (1 if done is None else int(done)), reps + 1
    return items, time.perf_counter() - started


def worker_grid(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    return sorted({2 ** k for k in range(max(1, cores).bit_length()) if 2 ** k < cores} | {cores})


_barrier = None


def _set_barrier(barrier) -> None:
    global _barrier
    cv2.setNumThreads(1)
    _barrier = barrier


def _timed(make_step: Callable, args: tuple, min_time: float) -> tuple[int, float, float]:
    step = make_step(*args)
    step()                                              # warm-up, then all processes start together
    _barrier.wait(timeout=600)
    items, started = 0, time.monotonic()
    while not items or time.monotonic() - started < min_time:
        items += step()
    return items, started, time.monotonic()


def rate_in_processes(make_step: Callable, args: list[tuple], min_time: float) -> float:
    """Items/s of ``len(args)`` spawned processes (one OpenCV thread each) at the same time, each
    calling ``make_step(*its args)()`` for ``min_time`` s: total items / (last end - first start)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(args), mp_context=context, initializer=_set_barrier,
                             initargs=(context.Barrier(len(args)),)) as pool:
        runs = list(pool.map(_timed, [make_step] * len(args), args, [min_time] * len(args)))
    return sum(n for n, _, _ in runs) / (max(e for _, _, e in runs) - min(s for _, s, _ in runs))
