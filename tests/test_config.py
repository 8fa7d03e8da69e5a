"""Paths come from the repository root, whatever the working directory."""
import os
import platform
import subprocess
import sys

from pathlib import Path

import pytest

from utils.config import DATA_DIR, REPO_ROOT, Config, dataset_root


def test_paths_resolve_from_repo_root_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(dataset="demo", split=2)
    assert cfg.data_root == DATA_DIR / "demo"
    assert cfg.models_dir == REPO_ROOT / "models" / "demo_split2"
    assert cfg.scores_dir == REPO_ROOT / "report" / "demo_split2" / "scores"
    assert (REPO_ROOT / "utils" / "config.py").is_file()


def test_same_paths_from_a_script_run_elsewhere(tmp_path):
    code = "from utils.config import Config; print(Config().frames_dir)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True).stdout.strip()
    assert out == str(DATA_DIR / "demo" / "rawframes")


def test_custom_dataset_path_and_name(tmp_path):
    cfg = Config(dataset=str(tmp_path / "my_hmdb"))
    assert cfg.data_root == tmp_path / "my_hmdb"
    assert cfg.dataset_name == "my_hmdb"
    assert dataset_root("hmdb51") == DATA_DIR / "hmdb51"


def test_bad_values_are_clear_errors():
    with pytest.raises(ValueError, match="split"):
        Config(split=4)
    with pytest.raises(KeyError, match="unknown config field"):
        Config().override(epochs=3)
    assert Config().override(split=3).split == 3


def test_importing_utils_sets_tensorflow_defaults_unless_the_user_did():
    """`import utils` (before TensorFlow loads) chooses the quiet log, TF's pooled CPU allocator and, on
    x86-64, its oneDNN kernels; never over a user's value."""
    names = ("TF_CPP_MIN_LOG_LEVEL", "TF_CPU_ALLOCATOR_USE_BFC", "TF_ENABLE_ONEDNN_OPTS")
    code = f"import os, utils; print(*[os.environ.get(n, '-') for n in {names!r}])"
    clean = {k: v for k, v in os.environ.items() if k not in names}
    root = Path(__file__).resolve().parents[1]
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                                     text=True, check=True).stdout.split()
    onednn = "1" if platform.machine().lower() in ("x86_64", "amd64") else "-"
    assert run(clean) == ["3", "true", onednn]
    users = dict(zip(names, ("0", "false", "0")))
    assert run({**clean, **users}) == ["0", "false", "0"]
