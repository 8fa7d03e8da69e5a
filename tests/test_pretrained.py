"""utils.pretrained: is the ImageNet ResNet-50 usable here, and what the run does when it is not.

Downloads are made impossible by pointing the HTTPS proxy at a closed local port and Keras'
cache at an empty folder, so the tests behave the same on machines with and without internet.
"""
from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import pytest

from utils import pretrained
from utils.config import REPO_ROOT

OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "",
           "no_proxy": ""}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home"


def test_constants_are_keras_own():
    from keras.src.applications import resnet

    assert pretrained.WEIGHTS_URL == resnet.BASE_WEIGHTS_PATH + pretrained.WEIGHTS_FILE
    assert pretrained.WEIGHTS_MD5 == resnet.WEIGHTS_HASHES["resnet50"][1]


def test_unreachable_origin_and_empty_cache(offline):
    usable, detail = pretrained.imagenet_weights_status()
    assert not usable and "cannot be downloaded" in detail and str(offline / "models") in detail
    shown = []
    assert pretrained.resolve_spatial_weights("imagenet", "demo", log=shown.append) is None
    assert len(shown) == 1 and "trained from scratch" in shown[0] and str(offline / "models") in shown[0]
    with pytest.raises(pretrained.ImageNetWeightsUnavailable, match=r"weights=None.*"):
        pretrained.resolve_spatial_weights("imagenet", "hmdb51")


def test_a_damaged_cached_file_is_named(offline):
    (offline / "models").mkdir(parents=True)
    (offline / "models" / pretrained.WEIGHTS_FILE).write_bytes(b"not the weights")
    usable, detail = pretrained.imagenet_weights_status()
    assert not usable and "damaged" in detail and pretrained.WEIGHTS_FILE in detail


def test_usable_weights_and_files(tmp_path):
    assert pretrained.resolve_spatial_weights("imagenet", "hmdb51", status=lambda: (True, "cached")) == "imagenet"
    assert pretrained.resolve_spatial_weights(None, "hmdb51") is None
    weights = tmp_path / "mine.weights.h5"
    weights.write_bytes(b"x")
    assert pretrained.resolve_spatial_weights(str(weights), "hmdb51") == str(weights.resolve())
    with pytest.raises(FileNotFoundError, match="nope.h5 does not exist"):
        pretrained.resolve_spatial_weights(str(tmp_path / "nope.h5"), "demo")


def _write_notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("dataset = 'demo'\nsplit = 1\nweights = 'imagenet'",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)


def test_utils_run_checks_before_any_notebook(tmp_path):
    """Offline: the demo goes on from scratch, an HMDB51-layout dataset stops at once, a file is used."""
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    _write_notebook(notebooks / "00_first.ipynb", "open('ran_00.txt', 'w').write('ran')")
    _write_notebook(notebooks / "02_spatial.ipynb", "open('weights_02.txt', 'w').write(repr(weights))")
    env = {**os.environ, **OFFLINE, "KERAS_HOME": str(tmp_path / "keras_home"), "PYTHONPATH": str(REPO_ROOT)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "utils.run", "--notebooks-dir", str(notebooks),
                               "--output-dir", str(tmp_path / "out"), *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    done = run("--dataset", "demo")
    assert done.returncode == 0, done.stderr
    assert "ImageNet weights for ResNet-50 are not available" in done.stdout
    assert "trained from scratch" in done.stdout
    assert done.stdout.index("not available") < done.stdout.index("00_first.ipynb ...")
    assert (notebooks / "weights_02.txt").read_text() == "None"

    (notebooks / "ran_00.txt").unlink()
    hmdb = tmp_path / "hmdb_layout"
    (hmdb / "videos").mkdir(parents=True)
    (hmdb / "splits").mkdir()
    done = run("--dataset", str(hmdb))
    assert done.returncode == 2
    assert "error: ImageNet weights for ResNet-50 are not available" in done.stderr and "weights=None" in done.stderr
    assert not (notebooks / "ran_00.txt").exists()                      # stopped before notebook 00

    weights = tmp_path / "resnet50_notop.weights.h5"
    weights.write_bytes(b"made by the test")                               # only its path travels here
    done = run("--dataset", str(hmdb), "--only", "02", "-p", f"weights={weights}")
    assert done.returncode == 0, done.stderr
    assert (notebooks / "weights_02.txt").read_text() == repr(str(weights))
    assert "not available" not in done.stdout
