"""Tests for the teaching figures (the flow colour key, utils/plots.py) and for the quiet TensorFlow import."""
import os
import subprocess
import sys

import cv2
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from utils import plots, stderr_without   # noqa: E402
from utils.config import REPO_ROOT   # noqa: E402
from utils.flow import FLOW_BOUND, draw_flow_colour_key, flow_colour_key, flow_to_color, quantize_flow   # noqa: E402

H, W, N_FLOWS, L = 32, 40, 12, 4


def write_clip(folder, u: float, v: float):
    """Rawframes of a clip whose left half moves by (u, v) px every frame; the right half is still."""
    folder.mkdir(parents=True)
    flow = np.zeros((H, W, 2), np.float32)
    flow[:, : W // 2] = (u, v)
    for i in range(1, N_FLOWS + 2):
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), np.full((H, W, 3), 100, np.uint8))
    for i in range(1, N_FLOWS + 1):
        for axis, component in zip("xy", np.moveaxis(quantize_flow(flow), -1, 0)):
            cv2.imwrite(str(folder / f"flow_{axis}_{i:05d}.jpg"), component, [cv2.IMWRITE_JPEG_QUALITY, 100])
    return folder


@pytest.fixture
def clips(tmp_path):
    """Three classes: one moving up, one moving a little sideways, one moving sideways fast."""
    motions = {"climb": (0.0, -3.0), "wave": (1.0, 0.0), "run": (4.0, 0.5)}
    rows = [{"class_name": name, "video": f"{name}_0", "n_flows": N_FLOWS,
             "frames_path": str(write_clip(tmp_path / name / f"{name}_0", *uv))} for name, uv in motions.items()]
    return pd.DataFrame(rows)


def test_flow_colour_key_matches_flow_to_color():
    key = flow_colour_key(65)
    assert key.shape == (65, 65, 3) and key.dtype == np.uint8
    assert key[32, 32].max() == 0                           # the centre: no motion, black
    assert (key[0, 0] == 255).all()                         # outside the disc: white
    right = flow_to_color(np.array([[[1.0, 0.0]]], np.float32), max_magnitude=1.0)[0, 0]
    down = flow_to_color(np.array([[[0.0, 1.0]]], np.float32), max_magnitude=1.0)[0, 0]
    assert np.abs(key[32, 63].astype(int) - right).max() <= 8   # right of the centre: flow to the right
    assert np.abs(key[63, 32].astype(int) - down).max() <= 8    # below: flow downwards (image y axis)
    assert not np.array_equal(right, down)


def test_draw_flow_colour_key_names_the_speed_of_the_rim():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    draw_flow_colour_key(ax, 2.5)
    assert ax.get_title() == "colour key\nrim = 2.5 px/frame" and len(ax.images) == 1


def test_horizontal_motion_example(clips):
    assert plots.horizontal_motion_example(clips, L).class_name == "run"       # the largest |x|
    demo = clips.assign(class_name=["red_up", "red_down", "red_sideways"])
    demo.loc[2, "frames_path"] = clips.loc[0, "frames_path"]                # the name decides on the demo
    assert plots.horizontal_motion_example(demo, L).class_name == "red_sideways"
    with pytest.raises(ValueError, match="notebook 01"):
        plots.horizontal_motion_example(clips.assign(n_flows=L - 1), L)


def stack(u: float, v: float, size: int = 16, length: int = L) -> np.ndarray:
    """A network-ready stack (units of FLOW_BOUND): the top half moves by (u, v) px, the rest is still."""
    x = np.zeros((size, size, 2 * length), np.float32)
    x[: size // 2, :, 0::2], x[: size // 2, :, 1::2] = u / FLOW_BOUND, v / FLOW_BOUND
    return x


def test_flow_channels_figure_scale_follows_the_values():
    for u in (0.5, 8.0):
        fig = plots.flow_channels_figure(np.zeros((16, 16, 3), np.uint8), stack(u, -u / 2))
        channel_x, channel_y = fig.axes[1].images[0], fig.axes[2].images[0]
        assert channel_x.get_clim() == channel_y.get_clim() == pytest.approx((-u, u))   # px, symmetric
        assert channel_x.colorbar is not None or channel_y.colorbar is not None
        assert "px per frame" in fig.axes[-1].get_ylabel()


def test_flow_figures_have_a_colour_key_on_one_scale():
    stacks = np.stack([stack(2.0, 0.0), stack(0.0, 6.0)])
    fig = plots.flow_stack_figure({"as stored": stacks[0], "flipped": stacks[1]})
    keys = [ax for ax in fig.axes if ax.get_title().startswith("colour key")]
    assert len(keys) == 1 and "rim = 6 px/frame" in keys[0].get_title()
    scores = np.array([[0.7, 0.3], [0.4, 0.6]])
    fig = plots.predictions_figure(stacks, np.array([0, 1]), scores, ["a", "b"])
    assert fig.axes[-1].get_title().startswith("colour key") and len(fig.axes) == 3
    frames = np.zeros((2, 16, 16, 3), np.float32)
    assert len(plots.predictions_figure(frames, np.array([0, 1]), scores, ["a", "b"]).axes) == 2   # no key


def test_stderr_without_drops_only_the_noise(capfd):
    with stderr_without(("noise",)):
        os.write(2, b"some noise here\nkept line\n")
    assert capfd.readouterr().err == "kept line\n"


def test_importing_utils_sets_the_log_level_only_when_unset():
    """(That TensorFlow then prints nothing is checked on real notebooks by tests/test_notebooks.py.)"""
    code = ("import os, sys, utils; print(os.environ['TF_CPP_MIN_LOG_LEVEL'], "
            "any(type(f).__name__ == '_QuietImport' for f in sys.meta_path))")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    for given, expected in ((None, "3 True"), ("1", "1 False"), ("3", "3 True")):
        run_env = env if given is None else {**env, "TF_CPP_MIN_LOG_LEVEL": given}
        done = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == expected, (given, done.stdout, done.stderr)
