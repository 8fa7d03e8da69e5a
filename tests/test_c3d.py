"""The 3D-CNN baseline: its clips (frame order, one crop and one flip per clip), its network, its test inputs.

Synthetic rawframes (H=48, W=64, 16 frames) make every property readable in the pixels:

* frame ``i``: R = 4 * column (a left-right ramp, so a crop's position and a flip show), G = 10 * i (the
  frame's index), B = 3 * row (a top-bottom ramp);
* flow ``t``: the left half moves right by ``1 + 0.25 t`` px and up by 1 px; the right half is still, so
  each flow's x can be told from the others after the mean subtraction, and a mirrored flow has its
  moving half on the right, moving left.
"""
from __future__ import annotations

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from utils import c3d, generators, rawframes, training
from utils import evaluation as ev
from utils.flow import FLOW_BOUND, quantize_flow

H, W, N_FRAMES, T, SIZE = 48, 64, 16, 6, 24
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 100]


def write_video(folder):
    folder.mkdir(parents=True)
    rows, cols = np.mgrid[0:H, 0:W]
    for i in range(1, N_FRAMES + 1):
        rgb = np.stack([4 * cols, np.full((H, W), 10 * i), 3 * rows], axis=-1).astype(np.uint8)
        cv2.imwrite(str(rawframes.frame_file(folder, i)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), JPEG)
    left = cols < W // 2
    for t in range(1, N_FRAMES):
        x_path, y_path = rawframes.flow_files(folder, t)
        cv2.imwrite(str(x_path), quantize_flow(np.where(left, 1.0 + 0.25 * t, 0.0)), JPEG)
        cv2.imwrite(str(y_path), quantize_flow(np.where(left, -1.0, 0.0)), JPEG)


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("rawframes")
    paths = [root / "class_a" / f"video{k}" for k in range(3)]
    for path in paths:
        write_video(path)
    return pd.DataFrame({"frames_path": [str(p) for p in paths], "label": [0, 1, 0], "subset": "train",
                         "n_frames": N_FRAMES, "n_flows": N_FRAMES - 1})


def raw(x):
    return x                      # no preprocessing: the clips' RGB values as read


def test_rgb_clips_keep_frame_order_and_one_crop_and_flip_per_clip(rows):
    data = generators.Clips(rows, training=True, modality="rgb", clip_length=T, image_size=SIZE, batch_size=3,
                            clips_per_video=8, preprocess=raw, crop_scales=(1.0, 0.75, 0.5),
                            crop_positions="uniform", seed=3)
    crops, flips = set(), set()
    for b in range(len(data)):
        x, _ = data[b]
        assert x.shape[1:] == (T, SIZE, SIZE, 3) and x.dtype == np.float32
        for clip in x:
            index = clip[..., 1].mean(axis=(1, 2)) / 10          # G = 10 * frame index, constant per frame
            assert np.allclose(np.diff(index), 1.0, atol=0.1), index      # consecutive frames, in time order
            assert 1 - 0.1 <= index[0] <= N_FRAMES - T + 1 + 0.1
            for t in range(1, T):                                # the same crop and flip on every frame
                np.testing.assert_allclose(clip[t][..., [0, 2]], clip[0][..., [0, 2]], atol=4)
            flipped = clip[0, :, 0, 0].mean() > clip[0, :, -1, 0].mean()   # the R ramp runs right to left
            flips.add(bool(flipped))
            crops.add((round(float(clip[0, 0, 0, 0])), round(float(clip[0, 0, 0, 2]))))
    assert flips == {False, True}               # the flip is drawn per clip ...
    assert len(crops) > 3                       # ... and so is the crop


def test_flow_clips_are_flow_volumes_whose_flip_negates_x_for_the_whole_clip(rows):
    data = generators.Clips(rows, training=True, modality="flow", clip_length=T, image_size=SIZE, batch_size=3,
                            clips_per_video=8, crop_scales=(1.0,), seed=1)
    signs = set()
    for b in range(len(data)):
        x, _ = data[b]
        assert x.shape[1:] == (T, SIZE, SIZE, 2)
        for clip in x:
            left, right = clip[:, :, : SIZE // 4].mean(axis=(1, 2)), clip[:, :, -SIZE // 4:].mean(axis=(1, 2))
            mirrored = left[:, 1] > right[:, 1]        # the half moving up (y < 0) is on the right: mirrored
            assert mirrored.all() or not mirrored.any(), (left, right)      # one flip for all T flows
            signs.add(bool(mirrored[0]))
            moving, still = (right, left) if mirrored[0] else (left, right)
            x_moving = (moving[:, 0] - still[:, 0]) * FLOW_BOUND   # px per frame, the still half as zero
            assert (x_moving < 0).all() if mirrored[0] else (x_moving > 0).all(), x_moving   # x negated
            assert (np.diff(np.abs(x_moving)) > 0).all(), x_moving   # 1 + 0.25 t grows with t: time order
    assert signs == {False, True}

    flow = generators.read_flow_uint8(rows.frames_path[0], 3, T)
    box = generators.centre_crop_box(H, W, 1.0)
    stack = generators.flow_stack_input(flow, box, SIZE, False)
    volume = generators.flow_volume_input(flow, box, SIZE, False)
    for t in range(T):                           # the temporal stream's stack, time first: flows 3, 4, ..., 8
        np.testing.assert_array_equal(volume[t, ..., 0], stack[..., 2 * t])
        np.testing.assert_array_equal(volume[t, ..., 1], stack[..., 2 * t + 1])
    square = np.ascontiguousarray(flow[:, :H])   # a crop the size of the input: no resampling, exact mirror
    plain = generators.flow_volume_input(square, (0, 0, H), H, False)
    mirrored = generators.flow_volume_input(square, (0, 0, H), H, True)
    np.testing.assert_allclose(mirrored[..., 0], -plain[:, :, ::-1, 0], atol=1e-5)   # x negated
    np.testing.assert_allclose(mirrored[..., 1], plain[:, :, ::-1, 1], atol=1e-5)    # y kept


def test_clip_test_inputs_follow_the_protocol_positions(rows):
    path, n_flows = rows.frames_path[0], N_FRAMES - 1
    starts = ev.input_positions("temporal", "whole_video", N_FRAMES, n_flows, T, segments=3)
    assert starts == [2, 6, 9] and ev.input_positions("temporal", "one_frame", N_FRAMES, n_flows, T) == [5]
    loader = ev.load_clip_inputs("rgb")
    batches = list(loader("temporal", path, starts, image_size=SIZE, stack_length=T, batch_size=20, crops=10))
    x = np.concatenate(batches)
    assert x.shape == (3 * 10, T, SIZE, SIZE, 3)
    frames = generators.undo_preprocessing(x).astype(float)
    for k, start in enumerate(starts):
        for crop in range(10):
            index = frames[10 * k + crop, ..., 1].mean(axis=(1, 2)) / 10
            np.testing.assert_allclose(index, np.arange(start, start + T), atol=0.15)
    mirrored = frames[5]                                   # crop 6 of 10: the first corner, mirrored
    assert (mirrored[:, :, 0, 0] > mirrored[:, :, -1, 0]).all()
    flows = np.concatenate(list(ev.load_clip_inputs("flow")("temporal", path, starts, image_size=SIZE,
                                                           stack_length=T, batch_size=4, crops=1)))
    expected = np.stack([generators.flow_volume_test_inputs(generators.read_flow_uint8(path, s, T), SIZE)[0]
                         for s in starts])
    np.testing.assert_array_equal(flows, expected)


def test_c3d_networks_take_clips_of_either_modality_and_size():
    for modality, channels in (("rgb", 3), ("flow", 2)):
        for size in c3d.C3D_SIZES:
            model = c3d.build_c3d_model(5, T, 32, modality, size, width=0.125)
            assert model.input_shape == (None, T, 32, 32, channels) and model.output_shape == (None, 5)
            probs = np.asarray(model(np.zeros((2, T, 32, 32, channels), np.float32)))
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    convs = {size: [l.name for l in c3d.build_c3d_model(5, T, 32, size=size, width=0.125).layers
                    if isinstance(l, keras.layers.Conv3D)] for size in c3d.C3D_SIZES}
    assert len(convs["small"]) == 5 and len(convs["large"]) == 8        # Tran et al. 2015, sec. 3.2 and 3.3
    counts = c3d.parameter_counts(51, 16, 112, width=0.25)
    assert counts["large"] > 4 * counts["small"]
    with pytest.raises(ValueError, match="size"):
        c3d.build_c3d_model(5, size="medium")
    with pytest.raises(ValueError, match="modality"):
        c3d.build_c3d_model(5, modality="depth")
    with pytest.raises(KeyError, match="unknown"):
        c3d.default_c3d_settings("demo", epohcs=3)
    assert c3d.default_c3d_settings("hmdb51")["size"] == "small" == c3d.default_c3d_settings("demo")["size"]
    with pytest.raises(ValueError, match="not clips"):
        ev.check_clip_input((None, 32, 32, 3), "rgb", T, "model.keras")
    with pytest.raises(ValueError, match="channels"):
        ev.check_clip_input((None, T, 32, 32, 2), "rgb", T, "model.keras")
    with pytest.raises(ValueError, match="clip_length"):
        ev.check_clip_input((None, 8, 32, 32, 3), "rgb", T, "model.keras")


def moving_squares(n: int, seed: int, length: int = 6, side: int = 16):
    """Clips of a 4x4 square, red or blue, moving up or down one pixel per frame over noise: class =
    2 * colour + (moving down). One frame shows the colour, only the order of the frames the direction."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.4, (n, length, side, side, 3)).astype(np.float32)
    y = rng.integers(0, 4, n)
    colours = np.array([[1.8, -0.6, -0.6], [-0.6, -0.6, 1.8]], np.float32)
    for i, label in enumerate(y):
        colour, down = divmod(int(label), 2)
        column, top = rng.integers(0, side - 4), rng.integers(0, side - 4 - length)
        for t in range(length):
            row = top + (t if down else length - 1 - t)
            x[i, t, row:row + 4, column:column + 4] = colours[colour]
    return x, y


def test_c3d_learns_colour_and_direction_from_clips_alone():
    """What notebook 07 shows on the demo, in seconds: the 3D network on RGB clips gets the colour (in every
    frame) and the direction of motion (only in the order of the frames) by itself."""
    x, y = moving_squares(256, 0)
    x_test, y_test = moving_squares(128, 1)
    keras.utils.set_random_seed(0)
    model = c3d.build_c3d_model(4, 6, 16, "rgb", "small", width=0.25, dropout=0.0)
    training.compile_model(model, "adamw", 1e-3)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    predicted = np.asarray(model.predict(x_test, verbose=0)).argmax(axis=1)
    assert (predicted // 2 == y_test // 2).mean() >= 0.9          # colour
    assert (predicted % 2 == y_test % 2).mean() >= 0.9            # direction: up or down


def test_evaluate_clips_scores_every_test_video_reuses_its_file_and_refuses_the_other_modality(tmp_path, monkeypatch):
    from utils import config as config_module
    from utils.config import Config

    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    root = tmp_path / "tinyset"
    rows = []
    for k, (cls, subset) in enumerate([("clap", "test"), ("wave", "test"), ("wave", "val")]):
        write_video(root / "rawframes" / cls / f"{cls}_{k}")
        rows.append({"video": f"{cls}_{k}", "class_name": cls, "label": ["clap", "wave"].index(cls), "subset": subset,
                     "frames_path": root / "rawframes" / cls / f"{cls}_{k}", "n_frames": N_FRAMES,
                     "n_flows": N_FRAMES - 1})
    cfg, index = Config(dataset=str(root)), pd.DataFrame(rows)
    model = c3d.build_c3d_model(2, T, SIZE, "rgb", width=0.125)
    path = cfg.stream_dir("c3d_rgb") / "best.keras"
    path.parent.mkdir(parents=True)
    model.save(path)
    scores = ev.evaluate_clips(cfg, "c3d_rgb", "rgb", "whole_video", clip_length=T, index=index, progress=False)
    assert list(scores.video) == ["clap_0", "wave_1"] and list(scores.n_inputs) == [N_FRAMES - 1 - T + 1] * 2
    np.testing.assert_allclose(scores.scores.sum(axis=1), 1.0, rtol=1e-5)
    saved = ev.scores_path(cfg, "c3d_rgb", "whole_video")
    assert saved.is_file() and scores.meta["clip_length"] == T and scores.meta["modality"] == "rgb"
    stamp = saved.stat().st_mtime_ns
    again = ev.evaluate_clips(cfg, "c3d_rgb", "rgb", "whole_video", clip_length=T, index=index, progress=False)
    assert saved.stat().st_mtime_ns == stamp and np.array_equal(again.scores, scores.scores)   # read back
    one = ev.evaluate_clips(cfg, "c3d_rgb", "rgb", "one_frame", "val", clip_length=T, index=index, progress=False)
    assert list(one.video) == ["wave_2"] and list(one.n_inputs) == [1]
    with pytest.raises(ValueError, match=r"best\.keras takes clips with 3 channels"):
        ev.evaluate_clips(cfg, "c3d_rgb", "flow", "one_frame", clip_length=T, index=index, progress=False)
