"""The model and generator smoke tests again, under a second Keras backend (JAX on CPU).

The code in utils/ is backend-agnostic Keras 3; this runs the tests marked ``backend_smoke``
in a fresh interpreter with KERAS_BACKEND=jax, since a process can hold only one backend.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from utils.config import REPO_ROOT


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_smoke_tests_pass_under_jax():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "backend_smoke",
           "tests/test_models.py", "tests/test_generators.py", "tests/test_training.py",
           "tests/test_tvl1_keras.py", "tests/test_tvl1_pallas.py"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    print(result.stdout[-4000:], result.stderr[-2000:])
    assert result.returncode == 0, "smoke tests failed under KERAS_BACKEND=jax"
    assert re.search(r"\b\d+ passed", result.stdout)
    backend = subprocess.run([sys.executable, "-c", "import keras; print(keras.backend.backend())"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert backend == "jax"
