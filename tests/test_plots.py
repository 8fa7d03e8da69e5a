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


# ----------------------------------------------------------------------------------------
# Scores figures, readings and animations
# ----------------------------------------------------------------------------------------
def demo_scores(predicted_motion_shift: int = 0):
    """Scores of 18 demo videos (two per class): right colour, motion shifted by ``predicted_motion_shift``."""
    from utils.demo_data import DEMO_CLASSES
    from utils.evaluation import Scores

    names = sorted(DEMO_CLASSES)
    labels = np.repeat(np.arange(len(names)), 2)
    scores = np.full((len(labels), len(names)), 0.02, np.float32)
    for i, label in enumerate(labels):
        colour, motion = names[label].split("_")
        motions = ["up", "down", "sideways"]
        guess = f"{colour}_{motions[(motions.index(motion) + predicted_motion_shift) % 3]}"
        scores[i, names.index(guess)] = 0.5 + 0.01 * i
    return Scores([f"v{i}" for i in range(len(labels))], labels, scores / scores.sum(1, keepdims=True), names)


def texts(fig):
    from matplotlib.text import Text

    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]


def test_figures_have_no_text_under_9_points():
    right, shifted = demo_scores(0), demo_scores(1)
    frames = np.zeros((3, 16, 16, 3), np.float32)
    stacks = np.stack([stack(2.0, 0.0)] * 3)
    figures = {
        "confusion": plots.confusion_matrices_figure({"a": right, "b": shifted, "c": right}, "title"),
        "margins": plots.fusion_margins_figure(shifted),
        "per class": plots.per_class_accuracy_figure({"a": right, "b": shifted}, "title"),
        "batch": plots.batch_figure(frames, np.array([0, 1, 2]), ["red_up", "b", "c"]),
        "flow batch": plots.batch_figure(stacks, np.array([0, 1, 2]), ["a", "b", "c"]),
        "predictions": plots.predictions_figure(stacks, np.array([0, 1, 0]), np.eye(3)[:, :2] * 0.9 + 0.05, ["a", "b"]),
        "stacks": plots.flow_stack_figure({"x": stacks[0]}),
    }
    for name, fig in figures.items():
        small = [(t.get_text(), t.get_fontsize()) for t in texts(fig) if t.get_fontsize() < plots.MIN_FONT]
        assert not small, f"{name}: {small[:5]}"


def test_confusion_matrices_count_videos_in_the_demo_order():
    shifted = demo_scores(1)
    fig = plots.confusion_matrices_figure({"spatial": shifted, "fusion": demo_scores(0)})
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.get_yticklabels()][:3] == ["red_up", "red_down", "red_sideways"]
    cells = {t.get_text() for t in texts(fig) if t.axes is left and t.get_text().isdigit()}
    assert cells == {"2"}                                   # whole numbers of videos, two per class
    assert left.get_title() == "spatial: 0/18 right" and right.get_title() == "fusion: 18/18 right"
    matrix = left.images[0].get_array()
    assert matrix.sum() == 18 and np.trace(matrix) == 0 and matrix[0, 1] == 2   # red_up -> red_down


def test_fusion_margins():
    from utils import narrative

    scores = demo_scores(0)
    margins = narrative.fusion_margins(scores)
    expected = scores.scores[np.arange(18), scores.label] - np.sort(scores.scores, axis=1)[:, -2]
    np.testing.assert_allclose(margins, expected, rtol=1e-6)
    assert (narrative.fusion_margins(demo_scores(1)) < 0).all()
    text = narrative.margins_reading(scores)
    assert text.startswith("In this run: fusion (average) gets 18 of 18 test videos right")
    assert f"at least {margins.min():.3f}" in text


def test_clip_animation_plays_every_frame_beside_its_flow():
    import imageio.v3 as iio

    frames = [np.full((20, 30, 3), 40 * i, np.uint8) for i in range(5)]
    flows = [np.zeros((20, 30, 2), np.float32) for _ in frames]
    for flow in flows:
        flow[:10, :15] = (1.0, 0.0)                         # the top-left quarter moves right
    gif = plots.clip_animation(frames, flows, zoom=2)
    movie = iio.imread(gif, extension=".gif")
    assert gif[:6] == b"GIF89a" and movie.shape[0] == 5 and movie.shape[1] == 40
    assert abs(int(movie[3, 5, 5, 0]) - 120) <= 8           # frame 3 on the left, at its own grey level
    x0 = 60 + 4                                             # the flow picture starts after the frame and a gap
    assert movie[0, 5, x0 + 5].max() > 200 and movie[0, 35, x0 + 50].max() < 30   # moving bright, still black
    bundle = plots.Animation(gif, "a caption")._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"} and 'src="data:image/gif;base64,' in bundle["text/html"]
    with pytest.raises(ValueError, match="as many flows as frames"):
        plots.clip_animation(frames, flows[:-1])


def test_final_output_only_does_nothing_outside_jupyter(capsys):
    from utils.progress import final_output_only, in_jupyter_kernel

    assert not in_jupyter_kernel()
    with final_output_only():
        print("kept")
    assert capsys.readouterr().out == "kept\n"
