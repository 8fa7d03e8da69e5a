"""ImageNet weights for the spatial stream: where Keras keeps them, and whether this machine can have them.

``keras.applications.ResNet50(weights="imagenet")`` downloads
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` (about 94 MB) once into Keras' cache
(``$KERAS_HOME/models/``, by default ``~/.keras/models/``). Many machines cannot download it
(offline laptops, clusters, exam rooms). :func:`resolve_spatial_weights` finds out in a second,
before any training starts, and decides what happens then:

* on the **demo** dataset the run goes on with the backbone trained from scratch (the preset
  ``training.SPATIAL_FROM_SCRATCH``), after one paragraph saying so and how to provide the file;
* on **HMDB51** (or any other dataset) it stops with that paragraph: a spatial stream trained
  from scratch is another experiment, which ``weights=None`` asks for explicitly.

It imports neither Keras nor TensorFlow, so ``python -m utils.run`` can check before it starts
the notebooks.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

# As in keras/src/applications/resnet.py (tests/test_pretrained.py checks that they still match).
WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + WEIGHTS_FILE
WEIGHTS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
CHECK_TIMEOUT_S = 5.0


class ImageNetWeightsUnavailable(RuntimeError):
    """The ImageNet weights are neither in Keras' cache nor downloadable; the message says what to do."""


def keras_cache_dirs() -> list[Path]:
    """Where ``keras.utils.get_file`` keeps ``models/`` files: ``$KERAS_HOME`` (or ``~/.keras``), and
    ``/tmp/.keras`` when that is not writable (Keras' own fallback)."""
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    dirs = [Path(home).expanduser() / "models"]
    if not os.access(Path(home).expanduser(), os.W_OK):
        dirs.append(Path("/tmp/.keras/models"))
    return dirs


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights_status(timeout: float = CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """``(usable, detail)``: the weights are in Keras' cache (and intact), or their URL answers."""
    for folder in keras_cache_dirs():
        path = folder / WEIGHTS_FILE
        if path.is_file():
            if _md5(path) == WEIGHTS_MD5:
                return True, f"in Keras' cache: {path}"
            return False, f"{path} is damaged (its MD5 is not Keras' {WEIGHTS_MD5}): delete it"
    try:
        request = urllib.request.Request(WEIGHTS_URL, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status == 200:
                return True, f"not cached yet; Keras will download it from {WEIGHTS_URL}"
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = str(getattr(error, "reason", error))
    return False, (f"{WEIGHTS_FILE} is not in Keras' cache ({keras_cache_dirs()[0]}) and cannot be "
                   f"downloaded from {WEIGHTS_URL} ({reason})")


def unavailable_message(detail: str, demo: bool) -> str:
    """The paragraph shown when the ImageNet weights cannot be had."""
    cache = keras_cache_dirs()[0]
    then = ("The demo goes on with the spatial backbone trained from scratch (the preset "
            "training.SPATIAL_FROM_SCRATCH); the report says so." if demo else
            "A spatial stream trained from scratch is a different experiment; to run it, ask for it "
            "with weights=None (`-p weights=None`).")
    return (f"ImageNet weights for ResNet-50 are not available: {detail}. To use them, download that "
            f"file on a machine with internet and copy it into {cache}/, where Keras looks for it, or pass "
            f"its path as weights=PATH (`-p weights=PATH`). {then}")


def resolve_spatial_weights(weights, dataset_name: str, *, status=imagenet_weights_status, log=print):
    """The weights the spatial stream will really start from: ``"imagenet"``, ``None`` or a file path.

    ``weights="imagenet"`` that cannot be had becomes ``None`` on the demo dataset (with the
    paragraph of :func:`unavailable_message` sent to ``log``) and raises
    :class:`ImageNetWeightsUnavailable` anywhere else. A path must be an existing file.
    """
    if weights is None:
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist (give 'imagenet', None, or the path "
                                    f"to a ResNet50(include_top=False) weights file such as {WEIGHTS_FILE})")
        return str(path.resolve())
    usable, detail = status()
    if usable:
        return "imagenet"
    message = unavailable_message(detail, demo=dataset_name == "demo")
    if dataset_name != "demo":
        raise ImageNetWeightsUnavailable(message)
    log(message)
    return None


def describe_weights(weights) -> str:
    """Words for the report: how the spatial backbone was initialised."""
    if weights is None:
        return "from scratch (random initialisation; ImageNet weights not used)"
    if weights == "imagenet":
        return "ImageNet (Keras ResNet50 weights)"
    return f"weights file {weights}"
