"""SG3I construction (utils.sg3i), its protocols in utils.evaluation, and a dataset extracted without flow."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from utils import config as config_module
from utils import evaluation as ev
from utils import generators, sg3i
from utils.config import Config
from utils.rawframes import frame_file

L = 10


def write_frames(folder: Path, frames_bgr) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames_bgr, start=1):
        assert cv2.imwrite(str(frame_file(folder, i)), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def coloured_frames(n: int, size=(24, 32)):
    """Frame i (1-based): a saturated colour patch whose position says i, on a random texture."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(1, n + 1):
        frame = rng.integers(0, 256, (*size, 3), np.uint8)
        frame[2:8, i:i + 6] = ((40 * i) % 256, 0, 255)            # BGR: much red, some blue
        frames.append(frame)
    return frames


def test_channels_are_the_three_times_in_order_and_grayscale_is_opencvs(tmp_path):
    folder = write_frames(tmp_path / "v", coloured_frames(12))
    image = sg3i.read_sg3i(folder, (2, 7, 12))
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    for channel, t in enumerate((2, 7, 12)):                     # R = earliest, G = middle, B = latest
        stored = cv2.imread(str(frame_file(folder, t)))           # BGR, as decoded from the JPEG
        np.testing.assert_array_equal(image[..., channel], cv2.cvtColor(stored, cv2.COLOR_BGR2GRAY))
    stored = cv2.imread(str(frame_file(folder, 2))).astype(np.float32)
    mean_gray = np.rint(stored.mean(axis=-1))                     # not the mean of the channels ...
    luma = np.rint(stored @ np.float32([0.114, 0.587, 0.299]))   # ... but BT.601 luma (B, G, R weights)
    assert np.abs(image[..., 0] - mean_gray).max() > 20 and np.abs(image[..., 0] - luma).max() <= 1
    assert not np.array_equal(sg3i.read_sg3i(folder, (12, 7, 2)), image)   # time order matters


def test_sg3i_frames_and_the_sub_shot_positions_of_the_protocols():
    assert sg3i.sg3i_frames(4, L) == (4, 9, 14)                    # first, middle, last of a stack's 11 frames
    assert sg3i.sg3i_frames(4, 6) == (4, 7, 10)
    assert sg3i.sg3i_frames(9, L, n_frames=15) == (5, 10, 15)      # moved back inside the clip
    assert sg3i.sg3i_frames(1, L, n_frames=5) == (1, 3, 5)         # a short clip: spread over all its frames
    n_frames = 100
    starts = ev.input_positions("sg3i", "whole_video", n_frames, 0, L, segments=25)   # no flow on disk
    assert starts == ev.input_positions("temporal", "whole_video", n_frames, n_frames - 1, L, segments=25)
    n_starts = n_frames - L                                        # an SG3I needs L + 1 frames
    sub_shot = n_starts / 25                                       # 25 equal sub-shots, one SG3I each
    assert starts == [int(np.floor((k + 0.5) * sub_shot)) + 1 for k in range(25)]
    assert all(1 <= s and sg3i.sg3i_frames(s, L)[-1] <= n_frames for s in starts)
    middle = ev.input_positions("sg3i", "one_frame", n_frames, 0, L)
    assert middle == ev.input_positions("temporal", "one_frame", n_frames, n_frames - 1, L) == [45]
    assert ev.input_positions("spatial", "one_frame", n_frames, 0, L) == middle   # the RGB frame at its start
    every = ev.input_positions("sg3i", "whole_video", 15, 0, L)
    assert every == [1, 2, 3, 4, 5] and sg3i.sg3i_frames(every[-1], L) == (5, 10, 15)


def test_the_mirrored_crops_reverse_the_columns_of_all_three_channels_and_change_no_value():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 32, 3), np.uint8)
    x = sg3i.sg3i_test_inputs(image, 21, crops=10, preprocess=lambda a: a)
    assert x.shape == (10, 21, 21, 3)
    np.testing.assert_array_equal(x[5:], x[:5, :, ::-1, :])      # same channels, columns reversed
    boxes = generators.eval_crop_boxes(24, 32, crops=10)
    for xi, (box, flip) in zip(x, boxes):
        top, left, side = box
        crop = image[top:top + side, left:left + side].astype(np.float32)
        np.testing.assert_array_equal(xi, crop[:, ::-1] if flip else crop)
    one = sg3i.sg3i_test_inputs(image, 21, crops=1)
    np.testing.assert_allclose(one[0], generators.default_preprocess(x[4][None])[0])   # the centre, preprocessed


def test_evaluation_inputs_are_the_sg3is_of_the_stacks_frames(tmp_path, monkeypatch):
    folder = write_frames(tmp_path / "v", coloured_frames(16))
    reads = []
    original = generators.read_frame
    monkeypatch.setattr(generators, "read_frame", lambda p, i: reads.append(i) or original(p, i))
    batches = list(ev.load_video_inputs("sg3i", folder, [1, 3, 6], image_size=20, stack_length=L, batch_size=2))
    assert sorted(reads) == sorted(set(reads)) == [1, 3, 6, 8, 11, 13, 16]   # each frame read once
    monkeypatch.undo()
    x = np.concatenate(batches)
    box = generators.centre_crop_box(24, 32)
    for xi, start in zip(x, (1, 3, 6)):
        image = sg3i.read_sg3i(folder, (start, start + 5, start + 10))
        expected = generators.default_preprocess(sg3i.crop_input(image, box, 20, False)[None])[0]
        np.testing.assert_allclose(xi, expected, atol=1e-4)


def test_training_sg3is_are_random_sub_shots_inside_the_clip(tmp_path, monkeypatch):
    rows = pd.DataFrame({"frames_path": [write_frames(tmp_path / "a", coloured_frames(13)),
                                         write_frames(tmp_path / "b", coloured_frames(5))],
                         "label": [0, 1], "n_frames": [13, 5], "n_flows": [0, 0], "subset": ["train", "train"]})
    read = []
    monkeypatch.setattr(sg3i, "read_sg3i", lambda p, frames: read.append((Path(p).name, frames)) or
                        np.zeros((24, 32, 3), np.uint8))
    data = sg3i.SG3IFrames(rows, training=True, image_size=16, span=L, batch_size=2, sg3is_per_video=4, seed=3)
    for epoch in range(3):
        data.set_epoch(epoch)
        for b in range(len(data)):
            x, y = data[b]
            assert x.shape == (2, 16, 16, 3)
    triples = {name: {frames for n, frames in read if n == name} for name in "ab"}
    assert triples["a"] == {(1, 6, 11), (2, 7, 12), (3, 8, 13)}       # every start 1 .. n_frames - L drawn
    assert triples["b"] == {(1, 3, 5)}                                 # too short for L: all of its frames
    read.clear()
    validation = sg3i.SG3IFrames(rows, training=False, image_size=16, span=L, batch_size=8, sg3is_per_video=1)
    validation[0]
    assert read == [("a", (2, 7, 12)), ("b", (1, 3, 5))]             # the middle sub-shot, every time


@pytest.fixture(scope="module")
def frames_only_demo(tmp_path_factory):
    """A small demo dataset (9 classes x 3 sources) extracted with method=None: frames, no flow."""
    from utils.demo_data import make_demo_dataset
    from utils.extract import extract_dataset

    root = tmp_path_factory.mktemp("demo_frames_only") / "demo_small"
    make_demo_dataset(root, clips_per_class=3, test_per_split=1, unused_per_split=0, frames=(12, 13))
    summary = extract_dataset(root / "videos", root / "rawframes", None, workers=1, progress=False)
    assert summary.done == 27 and summary.frame_pairs == summary.frames - 27
    return root


def test_an_sg3i_shows_the_demo_motion_and_not_its_colour(frames_only_demo):
    """The three colours of the demo have equal luma: the SG3Is of one source's red_up, green_up and
    blue_up clips are the same image (up to JPEG noise), while its up and down clips differ."""
    from utils.dataset import build_index

    index = build_index(Config(dataset=str(frames_only_demo)))
    clip = {row.class_name: row for row in index[index.source == index.source.iloc[0]].itertuples()}
    image = {name: sg3i.read_sg3i(row.frames_path, sg3i.sg3i_frames(1, L, row.n_frames)).astype(float)
             for name, row in clip.items()}
    rgb = {name: generators.read_frame(row.frames_path, 1).astype(float) for name, row in clip.items()}
    for colour in ("green", "blue"):
        assert np.abs(image[f"{colour}_up"] - image["red_up"]).mean() < 1.0
        assert np.abs(rgb[f"{colour}_up"] - rgb["red_up"]).max() > 40           # the colour is in the frames
    assert np.abs(image["red_down"] - image["red_up"]).mean() > 5 * np.abs(image["blue_up"] - image["red_up"]).mean()


def test_a_dataset_without_flow_scores_sg3i_and_rgb_and_their_fusion(frames_only_demo, tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    from utils.dataset import build_index

    cfg = Config(dataset=str(frames_only_demo), image_size=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # no video left out
        index = build_index(cfg)
    assert (index.n_flows == 0).all() and (index.n_frames >= L + 1).all()

    def model(x):                                                   # any softmax that depends on the input
        z = np.asarray(x).reshape(len(x), -1)[:, :9] / 50.0
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    for protocol, segments in (("one_frame", None), ("whole_video", 3)):
        scores = {stream: ev.evaluate_stream(cfg, stream, protocol, model=model, index=index, segments=segments,
                                             progress=False)
                  for stream in ("spatial", "sg3i")}
        assert len(scores["sg3i"]) == (index.subset == "test").sum() == 9
        fused = ev.average_fusion(scores["spatial"], scores["sg3i"])   # aligned: the same videos
        path = ev.save_scores(ev.scores_path(cfg, "fusion_sg3i", protocol), fused)
        assert path == cfg.scores_dir / f"fusion_sg3i_{protocol}.npz"
        assert ev.load_scores(path).class_names == scores["sg3i"].class_names
        test = index[index.subset == "test"]
        assert list(scores["sg3i"].n_inputs) == [1 if segments is None else min(3, n - L) for n in test.n_frames]
    with pytest.raises(ValueError, match="frames only .* the temporal stream needs flow"):
        ev.evaluate_stream(cfg, "temporal", "one_frame", model=model, index=index, progress=False)
