"""Shared pytest setup: the repository root on sys.path, a quiet and deterministic Keras."""
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TEST_DATA = ROOT / "tests" / "data"


def pytest_report_header(config):
    import keras
    return f"keras {keras.__version__}, backend: {keras.backend.backend()}"
