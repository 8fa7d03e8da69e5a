"""Does a training batch fit in memory? An estimate made from the model before training starts.

A batch too large for the machine does not fail with a message: the operating system kills the
process once the memory is gone ("DeadKernelError: Kernel died" in a notebook, after minutes of
swapping), or the GPU runs out in the middle of the first step. :func:`check_training_fits`
estimates what one training step of a model at a batch size needs, compares it with what the
machine has, and refuses with the figures and the largest batch that fits.

The estimate, for a model with ``P`` parameters, a batch of ``B`` inputs of ``I`` values each and
layer outputs adding up to ``A`` values per input (summed over every layer of the model)::

    parameters   P x 4 bytes x (1 weights + 1 gradients + S optimizer slots per weight)
    activations  B x A x b x 2          b = bytes of the compute dtype (4; 2 under mixed precision)
    inputs       B x I x 4 x Q          Q = batches held at once (the loader's queue, see below)

- *Parameters*: every weight of the model counts as trained, so the estimate made in the spatial
  stream's warm-up (backbone frozen) also holds for its fine-tuning (backbone trained); ``S`` is
  taken from the compiled optimizer (1 for SGD with momentum, 2 for Adam/AdamW).
- *Activations*: backpropagation keeps the outputs of the forward pass until the backward pass has
  used them, and makes a gradient of the same size for each: twice the sum of the layer outputs.
  Measured here (TensorFlow 2 on the 2-core CPU, oneDNN; the growth of the peak resident memory
  between batches of 8 and 32 inputs, over two training steps after the optimizer was built):
  CNN-M-2048 at 112 px, L = 10 (``A`` = 1.57 M): 12.2 MB per input = 1.94 x ``A`` x 4 bytes; at
  224 px, width 0.5 (``A`` = 3.62 M): 1.46 x; ResNet-50 at 112 px (``A`` = 9.40 M): 0.61 x
  (its BatchNorm and Add outputs are not kept). The factor 2 is the upper end: it can refuse a
  ResNet batch that would have fitted; the message says how to try anyway. At 224 px the CPU's
  peak memory did not grow steadily with the batch (the allocator keeps freed memory), so the
  factor was measured where it did. GPU memory was not measured (no GPU here).
- *Inputs*: a :class:`keras.utils.PyDataset` with worker threads prepares up to
  ``max_queue_size`` batches ahead (10 by default), plus one per worker in the making and the one
  being trained on, and the framework's own copy of it: ``Q = max_queue_size + workers + 2``
  (``Q = 2`` without workers or for NumPy arrays). On a GPU only ``Q = 2`` of them are on the GPU;
  the queue stays in host memory and is compared with it.

The machine has: on the CPU, the memory the kernel reports available now (``MemAvailable`` of
``/proc/meminfo``, or less when a cgroup limit of a container says so; the model's weights are
allocated already, so they are not counted again); on a GPU, 90 % of the memory of each device
(``nvidia-smi``: frameworks reserve the memory of the device for themselves, so what is free once
training starts says nothing). Where neither can be read (macOS, another accelerator), nothing is
checked. ``TWO_STREAM_SKIP_MEMORY_CHECK=1`` in the environment skips the check.

Example, the paper's temporal stream (CNN-M-2048, 224 x 224 x 20, P = 117.9 M, A = 6.23 M) at
batch 256 with 2 loader workers, on this 24 GiB CPU machine (22.8 GiB available when idle):
parameters, gradients and momentum 1.32 GiB (0.44 GiB of weights already allocated), activations
11.9 GiB, inputs 14 x 0.96 GiB = 13.4 GiB: 26.2 GiB more than now. It does not fit (the notebook
was killed after 24 GB); batch 216 would (``tests/test_memory.py``).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

SKIP_VARIABLE = "TWO_STREAM_SKIP_MEMORY_CHECK"
ACTIVATION_FACTOR = 2.0      # kept outputs + their gradients (measured 0.61 ... 1.94, see above)
GPU_SHARE = 0.9              # of a GPU's memory that training may count on
GIB = 1024 ** 3


class BatchTooLarge(MemoryError):
    """The estimated memory of a training step exceeds the machine's; the message gives the figures."""


@dataclass
class MemoryEstimate:
    """What a training step of ``batch_size`` inputs needs (bytes) and where it must fit."""

    batch_size: int
    device: str                     # "CPU" or "GPU"
    parameter_bytes: int            # weights, gradients and optimizer slots
    activation_bytes_per_input: int
    input_bytes_per_batch: int
    batches_held: int               # inputs: batches in memory at once (the loader's queue)
    batches_on_device: int          # of those, on the device (GPU); all of them on a CPU
    weights_allocated: bool         # the weights already take memory that ``available`` excludes
    weight_bytes: int
    available: int | None           # bytes the device has for it; None when unknown
    available_source: str
    host_available: int | None = None       # GPU runs: host memory for the loader's queue

    def device_need(self, batch_size: int | None = None) -> int:
        """Bytes needed on the training device for ``batch_size`` inputs (default: this estimate's)."""
        b = self.batch_size if batch_size is None else batch_size
        fixed = self.parameter_bytes - (self.weight_bytes if self.weights_allocated else 0)
        return int(fixed + b * self.activation_bytes_per_input
                   + self.batches_on_device * self._input_bytes(b))

    def host_need(self, batch_size: int | None = None) -> int:
        """Bytes of host memory for the loader's queue when training on a GPU (0 on a CPU: counted above)."""
        if self.device == "CPU":
            return 0
        b = self.batch_size if batch_size is None else batch_size
        return int((self.batches_held - self.batches_on_device) * self._input_bytes(b))

    def _input_bytes(self, batch_size: int) -> float:
        return self.input_bytes_per_batch * batch_size / self.batch_size

    def fits(self, batch_size: int | None = None) -> bool:
        """Whether ``batch_size`` (default: this estimate's) fits; True when the machine's memory is unknown."""
        device_ok = self.available is None or self.device_need(batch_size) <= self.available
        host_ok = self.host_available is None or self.host_need(batch_size) <= self.host_available
        return device_ok and host_ok

    def largest_batch(self) -> int:
        """The largest batch size that fits (0 if not even one input does)."""
        low, high = 0, max(1, self.batch_size)
        while self.fits(high) and high < 1 << 20:
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self.fits(middle) else (low, middle)
        return low if low < 8 else low // 8 * 8

    def describe(self) -> str:
        """The figures in words, e.g. for the refusal."""
        b = self.batch_size
        inputs = self.batches_on_device * self._input_bytes(b)
        text = (f"a training step at batch {b} needs about {self.device_need() / GIB:.1f} GiB on the {self.device} "
                f"(parameters, gradients and optimizer slots {self.parameter_bytes / GIB:.2f} GiB"
                + (", the weights already allocated" if self.weights_allocated else "")
                + f"; activations {b * self.activation_bytes_per_input / GIB:.1f} GiB; input batches "
                f"{inputs / GIB:.1f} GiB = {self.batches_on_device} x {self.input_bytes_per_batch / GIB:.2f} GiB)")
        if self.available is not None:
            text += f", and it has {self.available / GIB:.1f} GiB ({self.available_source})"
        if self.device == "GPU" and self.host_available is not None:
            text += (f"; the loader's queue needs {self.host_need() / GIB:.1f} GiB of host memory, which has "
                     f"{self.host_available / GIB:.1f} GiB")
        return text


def layer_output_values(model) -> int:
    """Values per input in the outputs of all layers of ``model`` (nested models' layers included)."""
    total = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):      # a layer called more than once has no single output
            continue
        total += sum(int(np.prod([d or 1 for d in tensor.shape[1:]])) for tensor in outputs)
    return total


def _layers(model):
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def optimizer_slots(model) -> float:
    """Optimizer variables per trained weight (1 for SGD with momentum, 2 for Adam); 1 if not built yet."""
    optimizer = getattr(model, "optimizer", None)
    trained = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    if optimizer is None or not getattr(optimizer, "built", False) or not trained:
        return 1.0
    slots = sum(int(np.prod(v.shape)) for v in optimizer.variables if len(v.shape))
    return slots / trained


def batches_held(data) -> int:
    """Input batches in memory at once while ``data`` feeds ``fit`` (see the module docstring)."""
    workers = int(getattr(data, "workers", 1) or 1)
    if isinstance(data, keras.utils.PyDataset) and (workers > 1 or getattr(data, "use_multiprocessing", False)):
        return int(getattr(data, "max_queue_size", 10) or 10) + workers + 2
    return 2


def training_devices() -> tuple[str, int]:
    """``("GPU", n)`` when Keras trains on n GPUs, else ``("CPU", 1)``."""
    try:
        devices = keras.distribution.list_devices()
    except (RuntimeError, ValueError):
        devices = []
    gpus = [d for d in devices if str(d).lower().startswith(("gpu", "cuda"))]
    return ("GPU", len(gpus)) if gpus else ("CPU", 1)


def host_memory_available() -> tuple[int | None, str]:
    """Bytes of memory available now (``MemAvailable``, or a cgroup's limit minus its use, the smaller)."""
    available, source = None, "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available, source = int(line.split()[1]) * 1024, "available memory, /proc/meminfo"
    except OSError:
        return None, "unknown"
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            room = int(limit) - usage
            if available is None or room < available:
                available, source = room, f"the container's memory limit, {limit_file}"
    return available, source


def gpu_memory_total() -> tuple[int | None, str]:
    """90 % of the smallest GPU's memory (``nvidia-smi``), or None when it cannot be read."""
    if shutil.which("nvidia-smi") is None:
        return None, "unknown"
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20)
        sizes = [int(float(line)) * 1024 ** 2 for line in done.stdout.split() if line.strip()]
    except (OSError, ValueError, subprocess.SubprocessError):
        return None, "unknown"
    if done.returncode or not sizes:
        return None, "unknown"
    return int(GPU_SHARE * min(sizes)), f"{GPU_SHARE:.0%} of the GPU's {min(sizes) / GIB:.0f} GiB, nvidia-smi"


def estimate_training_memory(model, batch_size: int, data=None) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of one training step of ``model`` at ``batch_size`` fed by ``data``."""
    device, n_devices = training_devices()
    per_device = max(1, math.ceil(batch_size / n_devices)) if keras.distribution.distribution() else batch_size
    n_params = int(model.count_params())
    compute_bytes = 2 if "16" in str(keras.config.dtype_policy().compute_dtype) else 4
    input_values = int(np.prod([d or 1 for d in model.input_shape[1:]])) if hasattr(model, "input_shape") else 0
    held = batches_held(data)
    if device == "GPU":
        available, source = gpu_memory_total()
        host, _ = host_memory_available()
    else:
        (available, source), host = host_memory_available(), None
    return MemoryEstimate(
        batch_size=per_device, device=device,
        parameter_bytes=int(n_params * 4 * (2 + optimizer_slots(model))),
        activation_bytes_per_input=int(layer_output_values(model) * compute_bytes * ACTIVATION_FACTOR),
        input_bytes_per_batch=int(per_device * input_values * 4),
        batches_held=held, batches_on_device=held if device == "CPU" else 2,
        weights_allocated=device == "CPU", weight_bytes=n_params * 4,
        available=available, available_source=source, host_available=host)


def check_training_fits(model, data, batch_size: int | None = None) -> MemoryEstimate | None:
    """Raise :class:`BatchTooLarge` when a training step of ``model`` on ``data`` would not fit in memory.

    ``batch_size``: for NumPy ``(x, y)`` data; a PyDataset's own ``batch_size`` otherwise. The
    message gives the estimate (:class:`MemoryEstimate`), what the machine has, the largest batch
    that fits, and how to skip the check. Returns the estimate (None when skipped).
    """
    if os.environ.get(SKIP_VARIABLE, "").strip() not in ("", "0"):
        return None
    batch_size = int(getattr(data, "batch_size", None) or batch_size or 32)
    estimate = estimate_training_memory(model, batch_size, data)
    if estimate.fits():
        return estimate
    largest = estimate.largest_batch()
    name = str(getattr(model, "name", ""))
    parameter = next((f"-p {stream}_batch_size={largest}" for stream in ("spatial", "temporal")
                      if name.startswith(stream)), f"batch_size={largest}")
    advice = (f"train with batch {largest} ({parameter}; scale the learning rate by {largest}/{batch_size}, "
              f"Goyal et al. 2017), or on a machine with more memory" if largest else
              "train on a machine with more memory, or a smaller model or input")
    raise BatchTooLarge(f"{getattr(model, 'name', 'the model')}: {estimate.describe()}: it does not fit; {advice}. "
                        f"This is an estimate (utils/memory.py explains it): if you know it fits, set "
                        f"{SKIP_VARIABLE}=1 to skip the check")
