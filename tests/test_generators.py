"""Tests for utils/generators.py on small synthetic rawframes written to a temporary folder.

Every synthetic video has H=48, W=64 and 16 frames (15 flows) in the mmaction2 layout:

* frame ``i``: red (R=200) in the left half only, G = 10 * i (so the frame index can be read
  back), B = 50 in the top half and 150 in the bottom half (so a vertical flip or a transpose
  shows).
* flow ``t``: only the left half moves, by ``x = 1 + 0.5 t`` px (to the right) and
  ``y = -(1 + 0.25 t)`` px (up); the right half is still. Each flow has distinct values, so
  the channel order x1, y1, ..., x10, y10 can be read back, and because only part of the frame
  moves the motion survives the per-channel mean subtraction.
"""
import math
import os
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from utils import generators as g
from utils import rawframes
from utils.flow import FLOW_BOUND, quantize_flow, video_flow

H, W, N_FRAMES = 48, 64, 16
SIZE = 32            # network input side used in most tests (small = fast)
L = 10
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 100]
TEST_DATA = Path(__file__).resolve().parent / "data"
SUBSETS = ("train", "train", "train", "train", "val", "test")


def flow_x(t):
    return 1.0 + 0.5 * t


def flow_y(t):
    return -(1.0 + 0.25 * t)


def write_video(folder: Path, n_frames: int = N_FRAMES, height: int = H, width: int = W) -> None:
    folder.mkdir(parents=True)
    left = np.zeros((height, width), bool)
    left[:, : width // 2] = True
    for i in range(1, n_frames + 1):
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[..., 0] = np.where(left, 200, 0)
        rgb[..., 1] = 10 * i
        rgb[: height // 2, :, 2], rgb[height // 2:, :, 2] = 50, 150
        cv2.imwrite(str(rawframes.frame_file(folder, i)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), JPEG)
    for t in range(1, n_frames):
        x_path, y_path = rawframes.flow_files(folder, t)
        cv2.imwrite(str(x_path), quantize_flow(np.where(left, flow_x(t), 0.0)), JPEG)
        cv2.imwrite(str(y_path), quantize_flow(np.where(left, flow_y(t), 0.0)), JPEG)


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> pd.DataFrame:
    """Six videos (two classes), subsets train/train/train/train/val/test; names with HMDB51's odd characters."""
    root = tmp_path_factory.mktemp("rawframes")
    rows = []
    for k in range(6):
        class_name = ("clap", "wave")[k % 2]
        video = f"(HQ)_clip_[{k}]_+&!_{class_name}_f_cm_np1_fr_med_{k}"
        folder = root / class_name / video
        write_video(folder)
        rows.append({"video": video, "label": k % 2, "frames_path": folder, "n_frames": N_FRAMES,
                     "n_flows": N_FRAMES - 1, "subset": SUBSETS[k]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def train(index):
    return index[index.subset == "train"].reset_index(drop=True)


def moving_mask(stack):
    """Pixels of a network-ready flow stack that move: their y1 is below the channel mean (y < 0 there)."""
    return stack[..., 1] < 0


def column_centre(mask):
    return np.nonzero(mask)[1].mean()


# ----------------------------------------------------------------------------------------
# Raw loaders
# ----------------------------------------------------------------------------------------
def test_read_frame_is_rgb_uint8_with_the_requested_index(index):
    folder = index.frames_path[0]
    for i in (1, 7, N_FRAMES):
        rgb = g.read_frame(folder, i)
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        assert abs(int(np.median(rgb[..., 1])) - 10 * i) <= 2                 # G = 10 i: right frame
        assert rgb[:, :20, 0].mean() > 190 and rgb[:, -20:, 0].mean() < 10      # red on the left: RGB order
        assert rgb[:20, :, 2].mean() < 60 and rgb[-20:, :, 2].mean() > 140      # not upside down


def test_missing_files_raise_with_the_path(index):
    with pytest.raises(FileNotFoundError, match=r"img_00017\.jpg"):
        g.read_frame(index.frames_path[0], N_FRAMES + 1)
    with pytest.raises(FileNotFoundError, match=r"flow_x_00016\.jpg"):
        g.read_flow_stack(index.frames_path[0], 7, L)                         # needs flows 7..16
    with pytest.raises(ValueError, match="1-based"):
        g.read_frame(index.frames_path[0], 0)


@pytest.mark.parametrize("start", [1, 4, 6])
def test_read_flow_stack_channel_order_is_x1_y1_to_xL_yL(index, start):
    stack = g.read_flow_stack(index.frames_path[0], start, L)
    assert stack.shape == (H, W, 2 * L) and stack.dtype == np.float32
    for j in range(L):
        t = start + j
        np.testing.assert_allclose(stack[:, :24, 2 * j].mean(), flow_x(t), atol=0.2)
        np.testing.assert_allclose(stack[:, :24, 2 * j + 1].mean(), flow_y(t), atol=0.2)
        np.testing.assert_allclose(stack[:, -24:, 2 * j : 2 * j + 2].mean(), 0.0, atol=0.2)


# ----------------------------------------------------------------------------------------
# Single-input helpers (evaluation)
# ----------------------------------------------------------------------------------------
@pytest.mark.backend_smoke
def test_temporal_input_is_centred_scaled_and_not_transposed(index):
    start = 3
    x = g.temporal_input(index.frames_path[0], start, SIZE, L)
    assert x.shape == (SIZE, SIZE, 2 * L) and x.dtype == np.float32
    assert np.all(np.abs(x) <= 2.0)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), 0.0, atol=1e-5)             # mean flow subtraction
    moving = moving_mask(x)
    assert column_centre(moving) < SIZE / 2                                       # motion stays on the left ...
    assert abs(moving[: SIZE // 2].mean() - moving[SIZE // 2:].mean()) < 0.05    # ... and is not rotated/transposed
    for j in range(L):                                                            # order survives centring
        t = start + j
        difference = x[..., 2 * j][moving].mean() - x[..., 2 * j][~moving].mean()
        np.testing.assert_allclose(difference, flow_x(t) / FLOW_BOUND, atol=0.02)
        difference = x[..., 2 * j + 1][moving].mean() - x[..., 2 * j + 1][~moving].mean()
        np.testing.assert_allclose(difference, flow_y(t) / FLOW_BOUND, atol=0.02)


@pytest.mark.backend_smoke
def test_flip_mirrors_columns_and_negates_only_x(index):
    """The historical bugs: a 'horizontal' flip done along the rows, and a flip that forgets to negate x."""
    stack = g.read_flow_stack(index.frames_path[0], 2, L)
    flipped = g.flip_flow(stack)
    # The left-half motion ends in the right half; the left half is now still.
    np.testing.assert_allclose(flipped[:, :24].mean(axis=(0, 1)), 0.0, atol=0.2)
    for j in range(L):
        t = 2 + j
        np.testing.assert_allclose(flipped[:, -24:, 2 * j].mean(), -flow_x(t), atol=0.2)   # now moving left
        np.testing.assert_allclose(flipped[:, -24:, 2 * j + 1].mean(), flow_y(t), atol=0.2)  # y unchanged
    # Same through the network input: the moving region is on the right, its x-flow is negative
    # relative to the still background and its y-flow is unchanged.
    x = g.temporal_input(index.frames_path[0], 2, SIZE, L, flip=True)
    moving = moving_mask(x)
    assert column_centre(moving) > SIZE / 2
    assert x[..., 0][moving].mean() - x[..., 0][~moving].mean() < -flow_x(2) / FLOW_BOUND * 0.8
    assert x[..., 1][moving].mean() - x[..., 1][~moving].mean() < 0
    # The fast path equals the documented composition (flip, then mean subtraction, then / 20 px),
    # shown without resizing: at image_size 42 the centre crop (rows 3..44, columns 11..52) is not resized.
    for flip in (False, True):
        reference = stack[3:45, 11:53]
        reference = g.normalize_flow_stack(g.flip_flow(reference) if flip else reference)
        np.testing.assert_allclose(g.temporal_input(index.frames_path[0], 2, 42, L, flip=flip), reference, atol=1e-5)


def test_spatial_input_centre_crop_and_preprocessing(index):
    x = g.spatial_input(index.frames_path[0], 5, SIZE)
    assert x.shape == (SIZE, SIZE, 3) and x.dtype == np.float32
    assert -125 < x.min() and x.max() < 153                                       # caffe: 0..255 minus the mean
    rgb = g.undo_preprocessing(x)
    assert rgb.dtype == np.uint8
    assert rgb[:, :10, 0].mean() > 180 and rgb[:, -10:, 0].mean() < 20          # red left: columns kept
    assert abs(int(np.median(rgb[..., 1])) - 50) <= 3                              # frame 5: G = 50
    # The eval crop is the centred square of side 0.875 * short side: 42 of 48 rows, columns 11..53.
    assert g.centre_crop_box(H, W) == (3, 11, 42)
    flipped = g.undo_preprocessing(g.spatial_input(index.frames_path[0], 5, SIZE, flip=True))
    assert flipped[:, -10:, 0].mean() > 180 and flipped[:10, :, 2].mean() < 60  # mirrored, not upside down


def test_undo_preprocessing_inverts_resnet50_preprocessing():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    np.testing.assert_array_equal(g.undo_preprocessing(g.default_preprocess(rgb.astype(np.float32))), rgb)


def test_whole_video_helpers_match_single_inputs_and_read_each_flow_once(index, monkeypatch):
    folder = index.frames_path[1]
    starts = [1, 2, 3, 6]
    reads = []
    real_imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, *a: reads.append(path) or real_imread(path, *a))
    stacks = g.temporal_inputs_for_video(folder, starts, SIZE, L)
    assert len(reads) == len(set(reads)) == 2 * 15                                 # flows 1..15, x and y, once
    monkeypatch.undo()
    assert stacks.shape == (4, SIZE, SIZE, 2 * L)
    for n, s in enumerate(starts):
        np.testing.assert_allclose(stacks[n], g.temporal_input(folder, s, SIZE, L), atol=1e-6)
    frames = g.spatial_inputs_for_video(folder, [1, 8, 16], SIZE)
    for n, f in enumerate([1, 8, 16]):
        np.testing.assert_allclose(frames[n], g.spatial_input(folder, f, SIZE), atol=1e-4)


def test_evenly_spaced_and_crop_boxes():
    np.testing.assert_array_equal(g.evenly_spaced(16, 1), [9])
    np.testing.assert_array_equal(g.evenly_spaced(10, 5), [2, 4, 6, 8, 10])
    assert all(1 <= p <= 7 for p in g.evenly_spaced(7, 25))
    rng = np.random.default_rng(0)
    sides = set()
    for positions in g.CROP_POSITIONS:
        for _ in range(200):
            top, left, side = g.random_crop_box(240, 320, rng, positions=positions)
            sides.add(side)
            assert 0 <= top <= 240 - side and 0 <= left <= 320 - side
            if positions == "corners":
                assert top in (0, (240 - side) // 2, 240 - side) and left in (0, (320 - side) // 2, 320 - side)
    assert sides == {240, 210, 180, 158}


# ----------------------------------------------------------------------------------------
# The PyDatasets
# ----------------------------------------------------------------------------------------
@pytest.mark.backend_smoke
def test_spatial_frames_shapes_labels_and_eval_frames(train):
    data = g.SpatialFrames(train, training=False, image_size=SIZE, batch_size=3, frames_per_video=2)
    assert len(data) == math.ceil(4 * 2 / 3) == 3
    xs, ys = zip(*(data[b] for b in range(len(data))))
    assert [len(y) for y in ys] == [3, 3, 2]
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (8, SIZE, SIZE, 3) and x.dtype == np.float32
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, np.repeat(train.label.to_numpy(), 2))     # index order at evaluation
    green = np.median(g.undo_preprocessing(x)[..., 1], axis=(1, 2))
    np.testing.assert_allclose(green, np.tile(10 * g.evenly_spaced(N_FRAMES, 2), 4), atol=3)
    with pytest.raises(IndexError):
        data[3]


@pytest.mark.backend_smoke
def test_flow_stacks_shapes_and_middle_start(train):
    data = g.FlowStacks(train, training=False, image_size=SIZE, batch_size=4)
    x, y = data[0]
    assert x.shape == (4, SIZE, SIZE, 2 * L) and x.dtype == np.float32 and y.dtype == np.int32
    assert np.all(np.abs(x) <= 2.0)
    middle = int(g.evenly_spaced(N_FRAMES - 1 - L + 1, 1)[0])                    # 6 starts -> start 4
    np.testing.assert_array_equal(x[0], g.temporal_input(train.frames_path[0], middle, SIZE, L))


@pytest.mark.backend_smoke
def test_evaluation_is_deterministic(train):
    for cls in (g.SpatialFrames, g.FlowStacks):
        data = cls(train, training=False, image_size=SIZE, batch_size=3)
        first = [data[b][0] for b in range(len(data))]
        data.on_epoch_end()
        second = [data[b][0] for b in range(len(data))]
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", [g.SpatialFrames, g.FlowStacks])
def test_training_is_seeded_per_epoch_and_batch(train, cls):
    a = cls(train, training=True, image_size=SIZE, batch_size=2, seed=7)
    b = cls(train, training=True, image_size=SIZE, batch_size=2, seed=7)
    batches_a = [a[i] for i in range(len(a))]
    batches_b = [b[i] for i in reversed(range(len(b)))][::-1]                    # other access order
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    a.on_epoch_end()
    assert a.epoch == 1
    epoch1 = np.concatenate([a[i][0] for i in range(len(a))])
    assert not np.array_equal(epoch1, np.concatenate([x for x, _ in batches_a]))  # new crops / order
    a.set_epoch(0)
    np.testing.assert_array_equal(a[0][0], batches_a[0][0])
    other_seed = cls(train, training=True, image_size=SIZE, batch_size=2, seed=8)
    assert not np.array_equal(other_seed[0][0], batches_a[0][0])


def test_training_flow_flip_and_start_inside_the_generator(train):
    """Random flips inside FlowStacks: mirrored samples move left on the right, others right on the left."""
    # Crops of scale 1 and .875 always contain both the moving (left) and the still (right) half.
    data = g.FlowStacks(train, training=True, image_size=SIZE, batch_size=4, stacks_per_video=4, seed=1,
                        crop_scales=(1.0, 0.875))
    x = np.concatenate([data[b][0] for b in range(len(data))])
    sides = []
    for stack in x:
        moving = moving_mask(stack)
        on_left = column_centre(moving) < SIZE / 2
        sides.append(on_left)
        x_motion = stack[..., 0][moving].mean() - stack[..., 0][~moving].mean()
        y_motion = stack[..., 1][moving].mean() - stack[..., 1][~moving].mean()
        assert (x_motion > 0) == on_left                                          # flip negates x
        assert y_motion < 0                                                       # and keeps y
        start = round((abs(x_motion) * FLOW_BOUND - 1.0) / 0.5)                   # x1 = 1 + 0.5 start
        assert 1 <= start <= N_FRAMES - 1 - L + 1
    assert any(sides) and not all(sides)                                          # both flipped and not


def test_training_frame_flip_is_horizontal(train):
    data = g.SpatialFrames(train, training=True, image_size=SIZE, batch_size=8, frames_per_video=4, seed=3,
                           crop_scales=(1.0, 0.875))
    rgb = g.undo_preprocessing(np.concatenate([data[b][0] for b in range(len(data))]))
    red_left = rgb[:, :, : SIZE // 4, 0].mean(axis=(1, 2)) > rgb[:, :, -SIZE // 4:, 0].mean(axis=(1, 2))
    assert red_left.any() and not red_left.all()
    assert np.all(rgb[:, : SIZE // 4, :, 2].mean(axis=(1, 2)) < rgb[:, -SIZE // 4:, :, 2].mean(axis=(1, 2)))
    frames = np.median(rgb[..., 1], axis=(1, 2)) / 10
    assert len(np.unique(np.round(frames))) > 3                                  # random frames, not always one


def test_test_rows_never_reach_training(index):
    with pytest.raises(ValueError, match=r"subset values \['test', 'train', 'val'\]"):
        g.SpatialFrames(index, training=True, image_size=SIZE)
    with pytest.raises(ValueError, match="test split"):
        g.FlowStacks(index[index.subset != "train"], training=True, image_size=SIZE)
    g.FlowStacks(index[index.subset == "test"], training=False, image_size=SIZE)   # evaluation may


def test_unextracted_and_too_short_videos_are_named(index, train):
    rows = train.copy()
    rows.loc[2, "n_frames"] = 0
    with pytest.raises(ValueError, match=r"clap/\(HQ\)_clip_\[2\]_\+&!_clap"):
        g.SpatialFrames(rows, training=False)
    rows = train.copy()
    rows.loc[0, "n_flows"] = L - 1
    with pytest.raises(ValueError, match=r"fewer than stack_length=10 flows: clap/\(HQ\)_clip_\[0\]"):
        g.FlowStacks(rows, training=True)
    g.SpatialFrames(rows, training=True)                                          # frames alone are fine
    with pytest.raises(ValueError, match="no column"):
        g.SpatialFrames(train.drop(columns="n_flows"), training=False)


class RecordEpochs(keras.callbacks.Callback):
    """Remembers which draws (``data.epoch``) each Keras epoch trained on."""

    def __init__(self, data):
        super().__init__()
        self.data, self.seen = data, []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(self.data.epoch)


def tiny_model(channels):
    model = keras.Sequential([keras.Input((SIZE, SIZE, channels)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


@pytest.mark.backend_smoke
def test_fit_with_two_worker_threads_new_draws_each_epoch_and_resume(train):
    """Smoke test through Keras' threaded enqueuer; every epoch gets new draws; resuming repeats them."""
    keras.utils.set_random_seed(0)
    kwargs = dict(training=True, image_size=SIZE, batch_size=2, workers=2, use_multiprocessing=False,
                  max_queue_size=4)
    for data, channels in [(g.SpatialFrames(train, **kwargs), 3), (g.FlowStacks(train, **kwargs), 2 * L)]:
        record = RecordEpochs(data)
        history = tiny_model(channels).fit(data, epochs=3, verbose=0, callbacks=[record])
        assert len(history.history["loss"]) == 3 and np.all(np.isfinite(history.history["loss"]))
        assert len(set(record.seen)) == 3 and record.seen == sorted(record.seen)
    # Resuming at epoch 1 (set_epoch before fit(initial_epoch=1)) trains on the same draws as before.
    resumed = g.FlowStacks(train, **kwargs)
    resumed.set_epoch(1)
    record_resumed = RecordEpochs(resumed)
    tiny_model(2 * L).fit(resumed, initial_epoch=1, epochs=3, verbose=0, callbacks=[record_resumed])
    assert record_resumed.seen == record.seen[1:]


def test_show_batch_and_benchmark(train):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for cls in (g.SpatialFrames, g.FlowStacks):
        x, y = cls(train, training=False, image_size=SIZE, batch_size=4)[0]
        fig = g.show_batch(x, y, ["clap", "wave"], max_items=3)
        keyed = cls is g.FlowStacks   # flow pictures come with their colour key
        assert len(fig.axes) == 3 + keyed and fig.axes[1].get_title() == "wave"
        assert fig.axes[-1].get_title().startswith("colour key") == keyed
        plt.close(fig)
    speed = g.benchmark_generators(train, image_size=SIZE, batch_size=2, n_batches=2, workers=2)
    assert all(speed[k] > 0 for k in ("frames_per_s", "stacks_per_s", "frames_per_s_total", "stacks_per_s_total"))


# ----------------------------------------------------------------------------------------
# A real clip (tests/data/hmdb51_clips): frames and flow from actual video
# ----------------------------------------------------------------------------------------
def test_real_clip_through_both_generators(tmp_path):
    clips = sorted((TEST_DATA / "hmdb51_clips").glob("*/*.avi"))
    if not clips:
        pytest.skip("no fixture clips in tests/data/hmdb51_clips")
    capture = cv2.VideoCapture(str(clips[0]))
    frames = []
    while len(frames) < L + 2:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(bgr)
    capture.release()
    assert len(frames) == L + 2, f"could not decode {L + 2} frames from {clips[0]}"
    folder = tmp_path / clips[0].parent.name / clips[0].stem
    folder.mkdir(parents=True)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])
    flows = video_flow(gray, "dis-fast")
    for i, bgr in enumerate(frames, start=1):
        cv2.imwrite(str(rawframes.frame_file(folder, i)), bgr)
    for t, flow in enumerate(flows, start=1):
        for path, component in zip(rawframes.flow_files(folder, t), (flow[..., 0], flow[..., 1])):
            cv2.imwrite(str(path), quantize_flow(component))
    rows = pd.DataFrame([{"frames_path": folder, "label": 0, "n_frames": len(frames), "n_flows": len(flows)}])
    x, _ = g.SpatialFrames(rows, training=True, image_size=112, batch_size=1)[0]
    assert x.shape == (1, 112, 112, 3) and np.isfinite(x).all() and x.std() > 1
    stack, _ = g.FlowStacks(rows, training=False, image_size=112, batch_size=1)[0]
    assert stack.shape == (1, 112, 112, 2 * L) and np.isfinite(stack).all()
    assert np.abs(stack).max() <= 2.0 and stack.std() > 1e-3
    # The stored stack equals the computed flow within quantisation + JPEG error (mostly < 0.5 px).
    start = 2
    stored = g.read_flow_stack(folder, start, L)
    computed = np.concatenate([np.clip(flows[start - 1 + j], -FLOW_BOUND, FLOW_BOUND) for j in range(L)], axis=-1)
    assert np.median(np.abs(stored - computed)) < 0.5


# ----------------------------------------------------------------------------------------
# Decoded-flow cache, last batch, several devices
# ----------------------------------------------------------------------------------------
def test_flow_cache_gives_the_same_inputs_without_decoding(train, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    plain = g.FlowStacks(train, training=True, image_size=SIZE, batch_size=3, stacks_per_video=3, seed=4)
    cached = g.FlowStacks(train, training=True, image_size=SIZE, batch_size=3, stacks_per_video=3, seed=4,
                          flow_cache=cache)
    for b in range(len(plain)):                                         # random crops, flips and starts
        np.testing.assert_array_equal(cached[b][0], plain[b][0])
    files = sorted(cache.glob("*/*.npy"))
    assert len(files) == len(train) and not list(cache.rglob(".*tmp*"))
    assert np.load(files[0]).shape == (H, W, 2 * (N_FRAMES - 1))
    # Once cached, no JPEG is decoded: evaluation batches come from the cache alone.
    monkeypatch.setattr(g, "_imread", lambda *a: pytest.fail("a JPEG was decoded"))
    evaluation = g.FlowStacks(train, training=False, image_size=SIZE, batch_size=4, flow_cache=cache)
    monkeypatch.undo()
    reference = g.FlowStacks(train, training=False, image_size=SIZE, batch_size=4)
    np.testing.assert_array_equal(evaluation[0][0], reference[0][0])
    # A cache file of another flow count (the video was extracted again) is rebuilt.
    np.save(files[0], np.zeros((H, W, 6), np.uint8))
    np.testing.assert_array_equal(g.cached_flows(train.frames_path[0], N_FRAMES - 1, cache),
                                  g.read_flow_uint8(train.frames_path[0], 1, N_FRAMES - 1))


def test_last_batch_keep_drop_pad(train):
    """4 training videos x 1 item, batch 3: keep gives 3 + 1, drop 3, pad 3 + (1 real, 2 weighted 0)."""
    kwargs = dict(training=True, image_size=SIZE, batch_size=3, seed=2)
    keep = g.FlowStacks(train, **kwargs)
    assert len(keep) == 2 and len(keep[1][1]) == 1
    drop = g.FlowStacks(train, last_batch="drop", **kwargs)
    assert len(drop) == 1 and len(drop[0][1]) == 3
    pad = g.SpatialFrames(train, last_batch="pad", **kwargs)
    x, y, weights = pad[1]
    assert x.shape[0] == len(y) == 3 and weights.tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_array_equal(x[0], g.SpatialFrames(train, **kwargs)[1][0][0])   # the real item is unchanged
    assert pad[0][2].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="last_batch must be one of"):
        g.FlowStacks(train, last_batch="fill", **kwargs)
    with pytest.raises(ValueError, match="no batch at all"):
        g.FlowStacks(train, last_batch="drop", training=True, image_size=SIZE, batch_size=5)
    g.even_batches(keep, pad)
    assert (keep.last_batch, pad.last_batch) == ("drop", "pad")


@pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax is not installed")
def test_data_parallel_trains_with_uneven_last_batches(train, index, tmp_path):
    """DataParallel on 2 virtual CPU devices (a fresh JAX process): 3 training stacks in batches of 2
    and 5 validation stacks in batches of 4 would end with batches of 1 that cannot split in two;
    training drops it, validation pads it with zero weights (utils.generators.even_batches)."""
    import subprocess
    import sys
    import textwrap
    rows = tmp_path / "rows.pkl"
    index.to_pickle(rows)
    root = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import sys, numpy as np, pandas as pd
        sys.path.insert(0, {str(root)!r})
        from utils import generators, models, training
        rows = pd.read_pickle({str(rows)!r})
        info = training.configure(seed=0, data_parallel=True)
        assert len(info["distribution"]["devices"]) == 2, info
        train = generators.FlowStacks(rows[rows.subset == "train"].iloc[:3], training=True, image_size=32,
                                      batch_size=2, stack_length=2)              # 3 stacks: batches of 2 and 1
        val = generators.FlowStacks(rows.iloc[:5], training=False, image_size=32, batch_size=4, stack_length=2)
        model = models.build_temporal_model(2, image_size=32, stack_length=2, width=0.125, dropout=0.0)
        try:
            training.train_temporal(model, train, val, {str(tmp_path / "run")!r}, epochs=2, learning_rate=0.05,
                                    patience=None, verbose=0)
        finally:
            print("LAST_BATCH", train.last_batch, val.last_batch, len(train), len(val))
        print("DATA_PARALLEL_OK")
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert "LAST_BATCH drop pad 1 2" in result.stdout, result.stderr[-3000:]
    assert result.returncode == 0 and "DATA_PARALLEL_OK" in result.stdout, result.stderr[-3000:]
