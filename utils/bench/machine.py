"""What the figures are measured on (CPU, cores, GPU, versions) and how they are timed."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np


def usable_cores() -> int:
    """CPU cores this process may use: affinity mask and cgroup quota (containers) both count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    for candidate in (name, f"{name}-cpu", f"{name}-gpu"):
        try:
            return version(candidate)
        except PackageNotFoundError:
            continue
    return "?"


def nvidia_smi(query: str) -> list[str]:
    """One line per NVIDIA GPU of ``nvidia-smi --query-gpu=QUERY`` (no units; empty without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [", ".join(part.strip() for part in line.split(",")) for line in out.splitlines() if line.strip()]


def gpu_names() -> list[str]:
    """Names of the GPUs Keras will use (empty list: none, the models run on the CPU)."""
    import keras
    try:
        devices = keras.distribution.list_devices("gpu")
    except Exception:  # noqa: BLE001 - a backend without GPU support says so by raising
        devices = []
    if not devices:
        return []
    names = nvidia_smi("name")
    if not names:
        try:
            if keras.backend.backend() == "torch":
                import torch
                names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            elif keras.backend.backend() == "jax":
                import jax
                names = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        except Exception:  # noqa: BLE001
            names = []
    return names[:len(devices)] or [str(d) for d in devices]


def keras_device() -> str:
    """``"GPU (<name>)"`` when Keras sees a GPU, else ``"CPU"`` (the ``device`` column of a row)."""
    gpus = gpu_names()
    return f"GPU ({gpus[0]})" if gpus else "CPU"


def device_label(description: str) -> str:
    """``"jax on gpu:0 (NVIDIA H100)"`` -> ``"GPU (NVIDIA H100)"``; CPU descriptions -> ``"CPU"``."""
    text = str(description)
    if "gpu" in text.lower() or "cuda" in text.lower():
        name = text[text.find("(") + 1:text.rfind(")")] if "(" in text else text
        return f"GPU ({name})"
    return "CPU"


def keras_backend_name() -> str:
    """The Keras backend, without importing Keras (and TensorFlow) when it is not loaded yet."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return json.loads(config.read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def machine_info() -> dict:
    """What the figures were measured on (one description per machine in the report)."""
    backend = keras_backend_name()
    gpus = nvidia_smi("name,memory.total")
    ram = _ram_gib()
    return {
        "cpu": _cpu_model(),
        "cores": f"{usable_cores()} usable ({os.cpu_count()} logical)",
        "ram": f"{ram:.1f} GiB" if ram else "?",
        "gpu": "; ".join(g + " MiB" for g in gpus) if gpus else "none found by nvidia-smi",
        "os": platform.platform(),
        "python": platform.python_version(),
        "keras": f"{_package_version('keras')}, backend {backend} {_package_version(backend)}",
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def describe_machine(info: dict) -> str:
    return (f"CPU {info['cpu']}, {info['cores']} cores, RAM {info['ram']}, GPU {info['gpu']}; "
            f"{info['os']}; Python {info['python']}; Keras {info['keras']}; OpenCV {info['opencv']}; "
            f"NumPy {info['numpy']}")


def machine_id(description: str) -> str:
    return hashlib.sha1(description.encode()).hexdigest()[:8]


def time_until(step: Callable[[], int | None], min_time: float, min_reps: int = 1,
               warmup: int = 1) -> tuple[int, float]:
    """Call ``step`` ``warmup`` times untimed, then until ``min_time`` s and ``min_reps`` calls passed.

    ``step`` returns how many items it handled (``None`` counts as 1). Returns ``(items, seconds)``.
    """
    for _ in range(warmup):
        step()
    items, reps, started = 0, 0, time.perf_counter()
    while True:
        done = step()
        items += 1 if done is None else int(done)
        reps += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_time and reps >= min_reps:
            return items, elapsed


def worker_grid(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    grid, k = [], 1
    while k < cores:
        grid.append(k)
        k *= 2
    return sorted(set(grid + [cores]))


def usable_cores_of(description: str) -> str:
    """The usable core count written in a machine description (``"?"`` if none)."""
    import re
    found = re.search(r"(\d+) usable", description)
    return found.group(1) if found else "?"


def peak_memory_mib() -> tuple[float, str]:
    """Peak memory so far (MiB) of the first GPU as the Keras backend reports it (JAX, PyTorch), and
    how it was read; without a GPU (or on TensorFlow) the peak resident memory of this process."""
    backend = keras_backend_name()
    try:
        if backend == "jax":
            import jax
            gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
            if gpus:
                return gpus[0].memory_stats()["peak_bytes_in_use"] / 2**20, "GPU, JAX peak_bytes_in_use"
        elif backend == "torch":
            import torch
            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2**20, "GPU, torch.cuda.max_memory_allocated"
    except Exception:  # noqa: BLE001 - no statistics from this backend: fall back to the host figure
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host peak RSS (no GPU statistics)"
