"""Wrong files and values are named (issue 12): weights, checkpoints, short clips at test time, -p split."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from utils import config as config_module
from utils import evaluation as ev
from utils import models, run
from utils.config import REPO_ROOT, Config


# ----------------------------------------------------------------------------------------
# Weights and checkpoints
# ----------------------------------------------------------------------------------------
def test_text_file_given_as_weights_is_named(tmp_path):
    fake = tmp_path / "x.weights.h5"
    fake.write_text("these are not weights\n")
    with pytest.raises(ValueError, match=r"x\.weights\.h5 is not a Keras weights file"):
        models.build_temporal_model(3, image_size=32, stack_length=2, width=0.125, weights=fake)
    with pytest.raises(ValueError, match=r"ResNet50 backbone: .*x\.weights\.h5 is not a Keras weights file"):
        models.build_spatial_model(3, image_size=32, weights=fake)


@pytest.mark.filterwarnings("ignore:Skipping nested container")   # Keras, about the mismatch itself
def test_weights_of_another_model_are_named(tmp_path):
    saved = tmp_path / "l2.weights.h5"
    models.build_temporal_model(3, image_size=32, stack_length=2, width=0.125).save_weights(saved)
    with pytest.raises(ValueError, match=r"the weights in .*l2\.weights\.h5 do not fit this model"):
        models.build_temporal_model(3, image_size=32, stack_length=3, width=0.125, weights=saved)


def tiny_model(channels: int, size: int = 8) -> keras.Model:
    inputs = keras.Input((size, size, channels))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))


def write_rawframes(folder: Path, n_frames: int, size: int = 8) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_frames)
    for i in range(1, n_frames + 1):
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), rng.integers(0, 255, (size, size, 3), np.uint8))
        if i < n_frames:
            for axis in "xy":
                cv2.imwrite(str(folder / f"flow_{axis}_{i:05d}.jpg"), rng.integers(100, 156, (size, size), np.uint8))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Two classes; test clips of 20, 8 and 4 frames (the config's L is 10)."""
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    root = tmp_path / "tinyset"
    rows = []
    for cls, video, n in [("clap", "clap_a", 20), ("wave", "wave_a", 8), ("wave", "wave_short", 4)]:
        frames_path = root / "rawframes" / cls / video
        write_rawframes(frames_path, n)
        rows.append({"video": video, "class_name": cls, "label": ["clap", "wave"].index(cls), "subset": "test",
                     "frames_path": frames_path, "n_frames": n, "n_flows": n - 1})
    return Config(dataset=str(root), image_size=8), pd.DataFrame(rows)


def test_short_clips_are_left_out_by_name_and_counted(tiny):
    cfg, index = tiny
    cfg = cfg.override(stack_length=5)
    with pytest.warns(UserWarning, match=r"wave/wave_short: too short: 4 frames, 3 flows; a stack of L = 5"):
        result = ev.evaluate_stream(cfg, "temporal", "one_frame", model=tiny_model(10), index=index, progress=False)
    assert list(result.video) == ["clap_a", "wave_a"]            # 7 flows: enough for L = 5
    saved = ev.load_scores(ev.scores_path(cfg, "temporal", "one_frame"))
    assert saved.meta["stack_length"] == 5 and saved.meta["n_missing"] == 1
    assert saved.meta["excluded"] == {"wave/wave_short": "too short: 4 frames, 3 flows; a stack of L = 5 "
                                                         "flows needs 6 frames"}


def test_checkpoint_of_the_other_stream_is_named(tiny):
    cfg, index = tiny
    for stream, channels, has in [("spatial", 10, "a temporal-stream model (input 8x8x10: stacks of L = 5 flows)"),
                                  ("temporal", 3, "a spatial-stream model (input 8x8x3: RGB frames)")]:
        checkpoint = cfg.stream_dir(stream) / "best.keras"
        checkpoint.parent.mkdir(parents=True)
        tiny_model(channels).save(checkpoint)
        with pytest.raises(ValueError, match=re.escape(f"{stream}/best.keras is {has}; the {stream} stream takes")):
            ev.evaluate_stream(cfg, stream, "one_frame", index=index, progress=False)
        with pytest.raises(ValueError, match=re.escape(f"{stream}/best.keras is {has}")):
            ev.load_stream_model(checkpoint, stream)
    assert ev.load_stream_model(cfg.stream_dir("spatial") / "best.keras", "temporal").input_shape == (None, 8, 8, 10)


@pytest.mark.filterwarnings("ignore:'test' videos")   # the clips too short for the config's L
def test_checkpoint_that_is_not_a_keras_file_is_named(tiny):
    cfg, index = tiny
    checkpoint = cfg.stream_dir("temporal") / "best.keras"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04 cut short")                 # the start of a zip, then nothing
    with pytest.raises(ValueError, match=r"temporal/best\.keras is not a Keras \.keras archive \(a truncated"):
        ev.evaluate_stream(cfg, "temporal", "one_frame", index=index, progress=False)


# ----------------------------------------------------------------------------------------
# python -m utils.run -p split=...
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["4", "two", "0", "2.0"])
def test_run_refuses_a_split_that_does_not_exist(value, capsys):
    assert run.main(["--dataset", "demo", "-p", f"split={value}", "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -p split={run.parse_value(value)!r}: the split must be 1, 2 or 3")


def test_run_split_error_through_the_command_line():
    done = subprocess.run([sys.executable, "-m", "utils.run", "-p", "split=two", "--list"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr.strip()) == (2, "error: -p split='two': the split must be 1, 2 or 3")
