"""Two-stream action recognition on HMDB51: the logic behind the notebooks.

Data flows one way: videos -> frames/flows -> generators -> models -> scores -> report.
Each module holds one stage; ``utils.config`` is the only module every stage imports.

Importing the package first quiets TensorFlow's C++ log (every notebook imports ``utils`` before
Keras): ``TF_CPP_MIN_LOG_LEVEL=3`` hides its start-up chatter (``cpu_feature_guard``, and on a
machine without a GPU ``failed call to cuInit``, which is logged as an error), and the lines
TensorFlow prints while it loads, before it reads that variable (``cudart_stub.cc ... Could not
find cuda drivers``, ``oneDNN custom operations are on``), are dropped. Python errors and
warnings are untouched. Set ``TF_CPP_MIN_LOG_LEVEL`` yourself (``0`` shows everything) and
nothing is changed.

Two TensorFlow speed settings follow, each only where the user has not set the variable (read
when TensorFlow loads; the numbers computed are the same up to floating-point round-off):

- ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64: TensorFlow's oneDNN kernels. TensorFlow turns them on by
  itself only on Linux CPUs with VNNI, AVX512-BF16 or AMX instructions (``DefaultOneDnnPolicy``
  in ``tensorflow/core/util/util.cc``); elsewhere (many AMD and older Intel processors, Windows)
  it uses Eigen kernels whose convolution input gradient is 10-20x slower than the
  convolution itself for many channels on small maps, exactly the layers of ResNet-50's last
  stages. On the 2-core AMD EPYC this repository is built on, a demo ResNet-50 training step
  (batch 16, 42 px) took 0.8 s with oneDNN against 2.1 s without, and ``Conv2DBackpropInput``
  for 16 x 2 x 2 x 512 -> 512 (3x3) 8 ms against 150 ms.
- ``TF_CPU_ALLOCATOR_USE_BFC=true``: TensorFlow keeps freed CPU memory in its own pool instead of
  handing it back to the system after every training step (without it, the same demo step took
  2.4-2.7 s instead of 1.8-2.1 s with Eigen kernels, with 20 M page faults instead of 12 M).
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import platform
import sys
import tempfile

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LOG_LEVEL = "3"
TENSORFLOW_LOAD_NOISE = ("All log messages before absl::InitializeLog()", "cudart_stub.cc",
                         "oneDNN custom operations are on")
"""Parts of the lines TensorFlow writes to stderr while it loads, whatever TF_CPP_MIN_LOG_LEVEL says."""


@contextlib.contextmanager
def stderr_without(noise: tuple[str, ...]):
    """Capture what is written to file descriptor 2 (C++ code included); write back the lines without ``noise``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):   # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(part in line for part in noise))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs another loader with :func:`stderr_without`; everything else is the other loader's."""

    def __init__(self, loader, noise: tuple[str, ...]):
        self.loader, self.noise = loader, noise

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with stderr_without(self.noise):
            self.loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _QuietImport(importlib.abc.MetaPathFinder):
    """The first import of top-level module ``name`` runs with :func:`stderr_without`; then it steps aside."""

    def __init__(self, name: str, noise: tuple[str, ...]):
        self.name, self.noise = name, noise

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self.noise)
        return spec


CPU_ALLOCATOR_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def _quiet_tensorflow() -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user chose a level; filter TensorFlow's load-time lines."""
    os.environ.setdefault(LOG_LEVEL_VARIABLE, QUIET_LOG_LEVEL)
    # "3" is also what child processes (Jupyter kernels run by utils.run) inherit from here.
    if os.environ[LOG_LEVEL_VARIABLE] == QUIET_LOG_LEVEL and "tensorflow" not in sys.modules \
            and not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow", TENSORFLOW_LOAD_NOISE))


_quiet_tensorflow()
os.environ.setdefault(CPU_ALLOCATOR_VARIABLE, "true")   # read by TensorFlow when it loads (see above)
if platform.machine().lower() in ("x86_64", "amd64"):  # elsewhere (ARM) TensorFlow's own default stays
    os.environ.setdefault(ONEDNN_VARIABLE, "1")
