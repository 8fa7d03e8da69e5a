"""Network inputs from extracted rawframes: RGB frames for the spatial stream, flow stacks for the temporal one.

Three ``keras.utils.PyDataset`` classes feed ``model.fit`` / ``model.evaluate``:

* :class:`SpatialFrames` - one RGB frame per video (or ``frames_per_video``), ``float32[B, S, S, 3]``,
  preprocessed for the backbone (default: ResNet50's caffe-style ``preprocess_input``).
* :class:`FlowStacks` - ``L`` consecutive flow fields per video, ``float32[B, S, S, 2L]``.
* :class:`Clips` - for a 3D network (:mod:`utils.c3d`): ``T`` consecutive RGB frames
  (``float32[B, T, S, S, 3]``) or ``T`` flow fields (``float32[B, T, S, S, 2]``) per video, in time
  order, with one crop and one flip for the whole clip.

All yield ``(x, y)`` with ``y`` the integer labels, and all take the rows of the index
DataFrame they should use (``index[index.subset == "train"]``, ...). Only the columns
``frames_path``, ``label``, ``n_frames`` and ``n_flows`` are read (plus ``subset``, if present,
for the guard that keeps the test split out of training).

Geometry (the same at training and test time, so the network never sees a squashed frame):

* **Training**: a square crop whose side is ``short_side * s`` with ``s`` drawn from
  ``TRAIN_CROP_SCALES = (1, .875, .75, .66)`` (TSN's scale jitter, Wang et al. 2016), placed at a
  corner or the centre (``crop_positions="corners"``, TSN's "fixed crops") or anywhere
  (``"uniform"``), resized to ``image_size``, and flipped left-right half of the time.
* **Evaluation**: the centre crop of side ``short_side * 0.875``, resized to ``image_size``.
  0.875 is about the mean training scale ((1 + .875 + .75 + .66) / 4 = 0.82; the middle two are
  .875 and .75), so objects have the same size in pixels at test time as on average in training.

Flow stacks
-----------
Channels are ordered ``x1, y1, x2, y2, ..., xL, yL`` (flow ``t`` = frame ``t -> t+1``, ``x`` to the
right, ``y`` down). Each channel has its mean over the crop subtracted (Simonyan & Zisserman's
"mean flow subtraction", a cheap camera-motion compensation), then is divided by the storage
bound (``FLOW_BOUND`` = 20 px), so values are in units of 20 px and lie in [-2, 2] (in practice
within a few tenths of 0). The magnitudes are not rescaled when a crop is resized (as in TSN):
displacements stay "pixels of the stored video".

A left-right flip of a flow field mirrors its columns **and negates the x component**: a hand
moving right moves left in the mirror. ``y`` is unchanged.

Reproducibility
---------------
Every random choice of batch ``b`` in epoch ``e`` comes from ``numpy.random.default_rng([seed,
e, b])``, and the visiting order of epoch ``e`` from ``default_rng([seed, e])``. So a batch does
not depend on which worker thread/process builds it or in which order; the same seed gives the
same batches, and ``on_epoch_end`` moves to the next epoch (new order, new crops). Keras'
``fit`` also calls ``on_epoch_end`` once before its first epoch (TensorFlow and JAX backends),
so its epoch ``i`` trains on draws ``i + 1``; to resume, call ``data.set_epoch(initial_epoch)``
before ``fit(..., initial_epoch=initial_epoch)`` and the resumed epochs see the same draws as an
uninterrupted run. (``fit`` additionally shuffles the order of whole batches with Python's
``random``; ``keras.utils.set_random_seed`` fixes that, or pass ``shuffle=False``.)

Raw loaders (``read_frame``, ``read_flow_stack``) take file names from :mod:`utils.rawframes`
(``img_{i:05d}.jpg`` / ``flow_x_{i:05d}.jpg`` / ``flow_y_{i:05d}.jpg``, or mmaction2's ``x_``/``y_``
flow names where a folder uses them); HMDB51 video names contain ``[ ] ( ) ! + &`` so nothing here
ever globs.
"""
from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import cv2
import keras
import numpy as np

from utils.flow import FLOW_BOUND, dequantize_flow, draw_flow_colour_key, flow_to_color
from utils.rawframes import flow_files, flow_naming, frame_file

TRAIN_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)   # crop side / short side, TSN's multi-scale crop
EVAL_CROP_SCALE = 0.875                        # deterministic centre crop at evaluation
TEST_CROPS = (1, 10)                           # test-time crops: the centre one, or the paper's ten
CROP_POSITIONS = ("corners", "uniform")
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)   # ResNet50's preprocessing
LAST_BATCH = {   # the PyDatasets' ``last_batch`` option: a last batch smaller than batch_size is ...
    "keep": "kept (the default; one smaller batch per epoch)",
    "drop": "dropped (training: every batch full, e.g. for DataParallel; other items are dropped each epoch)",
    "pad": "filled up to batch_size with repeats weighted 0 (batches are (x, y, sample_weight)): "
           "every batch full and the loss and metrics exactly those of the real items (validation)",
}

Preprocess = Callable[[np.ndarray], np.ndarray]
PathLike = str | os.PathLike


def default_preprocess(x: np.ndarray) -> np.ndarray:
    """ResNet50's own preprocessing (caffe style: RGB -> BGR, minus the ImageNet mean, no scaling)."""
    return keras.applications.resnet50.preprocess_input(x)


# ----------------------------------------------------------------------------------------
# Raw loaders
# ----------------------------------------------------------------------------------------
def _imread(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        state = "exists but cannot be decoded" if path.exists() else "does not exist"
        raise FileNotFoundError(f"cannot read {path}: the file {state}")
    return image


def read_frame(frames_path: PathLike, i: int) -> np.ndarray:
    """RGB frame ``i`` (1-based) of an extracted video as ``uint8[H, W, 3]``."""
    if int(i) < 1:
        raise ValueError(f"frame indices are 1-based, got {i} for {frames_path}")
    return cv2.cvtColor(_imread(frame_file(frames_path, i), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_flow_uint8(frames_path: PathLike, start: int, stack_length: int = 10) -> np.ndarray:
    """Stored (quantised) flows ``start .. start+L-1`` as ``uint8[H, W, 2L]``, channels x1, y1, ..., xL, yL."""
    if int(start) < 1:
        raise ValueError(f"flow indices are 1-based, got start={start} for {frames_path}")
    planes = []
    naming = flow_naming(frames_path)          # flow_x_/flow_y_, or mmaction2's x_/y_: once per stack
    for t in range(int(start), int(start) + stack_length):
        for path in flow_files(frames_path, t, naming):
            planes.append(_imread(path, cv2.IMREAD_GRAYSCALE))
    return np.stack(planes, axis=-1)


def read_flow_stack(frames_path: PathLike, start: int, stack_length: int = 10) -> np.ndarray:
    """Flows ``start .. start+L-1`` (1-based) in pixels, ``float32[H, W, 2L]``, channels x1, y1, ..., xL, yL.

    No cropping, no flipping, no mean subtraction: what extraction stored (up to JPEG error).
    """
    return dequantize_flow(read_flow_uint8(frames_path, start, stack_length), FLOW_BOUND)


# ----------------------------------------------------------------------------------------
# Geometry and the per-input transforms
# ----------------------------------------------------------------------------------------
def centre_crop_box(height: int, width: int, scale: float = EVAL_CROP_SCALE) -> tuple[int, int, int]:
    """``(top, left, side)`` of the centred square crop of side ``round(short_side * scale)``."""
    side = max(1, int(round(min(height, width) * scale)))
    return (height - side) // 2, (width - side) // 2, side


def random_crop_box(height: int, width: int, rng: np.random.Generator,
                    scales: Sequence[float] = TRAIN_CROP_SCALES,
                    positions: str = "corners") -> tuple[int, int, int]:
    """``(top, left, side)`` of a TSN-style random square crop.

    ``side = round(short_side * s)`` with ``s`` drawn from ``scales``; the crop sits at one of the
    four corners or the centre (``positions="corners"``) or anywhere (``"uniform"``).
    """
    side = max(1, int(round(min(height, width) * scales[rng.integers(len(scales))])))
    slack_y, slack_x = height - side, width - side
    if positions == "corners":
        fy, fx = ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))[rng.integers(5)]   # in halves of the slack
        return slack_y * fy // 2, slack_x * fx // 2, side
    if positions == "uniform":
        return int(rng.integers(slack_y + 1)), int(rng.integers(slack_x + 1)), side
    raise ValueError(f"crop positions must be one of {CROP_POSITIONS}, got {positions!r}")


def _crop_resize(image: np.ndarray, box: tuple[int, int, int], image_size: int) -> np.ndarray:
    top, left, side = box
    crop = image[top:top + side, left:left + side]
    if side == image_size:
        return np.ascontiguousarray(crop)
    out = cv2.resize(crop, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    return out.reshape(image_size, image_size, image.shape[-1])


def flip_flow(stack: np.ndarray) -> np.ndarray:
    """Left-right mirror of a flow stack ``[..., H, W, 2L]`` (x1, y1, ...): columns reversed, x negated."""
    flipped = stack[..., :, ::-1, :].copy()   # axis -2 = columns (W), never axis -3 (rows)
    flipped[..., 0::2] *= -1.0                # x components change sign; y components do not
    return flipped


def _channel_means(stack: np.ndarray) -> np.ndarray:
    """Per-channel mean of ``[H, W, C]`` (= ``stack.mean(axis=(0, 1))``, summing rows first: ~3x faster)."""
    height, width, channels = stack.shape
    column_sums = stack.reshape(height, width * channels).sum(axis=0)
    return column_sums.reshape(width, channels).sum(axis=0) / np.float32(height * width)


def normalize_flow_stack(stack_px: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Subtract each channel's mean over the image, divide by ``bound``: px -> units of 20 px, centred."""
    stack = np.array(stack_px, dtype=np.float32)               # a copy: the caller's array is kept
    stack -= stack.mean(axis=(-3, -2), keepdims=True)
    stack /= np.float32(bound)
    return stack


def _frame_input(frame_rgb: np.ndarray, box, image_size: int, flip: bool) -> np.ndarray:
    """Crop + resize + optional mirror of one RGB frame; float32, not yet preprocessed."""
    x = _crop_resize(frame_rgb, box, image_size)
    if flip:
        x = x[:, ::-1]
    return x.astype(np.float32)


def flow_stack_input(flow_uint8: np.ndarray, box, image_size: int, flip: bool) -> np.ndarray:
    """Crop + resize + dequantise + optional flip + mean subtraction of one stored flow stack.

    The same steps as ``normalize_flow_stack(flip_flow(dequantize_flow(crop)))``, with fewer copies.
    """
    top, left, side = box
    crop = flow_uint8[top:top + side, left:left + side]
    if flip:
        crop = crop[:, ::-1]                                    # mirror the columns ...
    stack = _crop_resize(crop.astype(np.float32), (0, 0, side), image_size)
    stack *= np.float32(2.0 * FLOW_BOUND / 255.0)               # dequantise in place: the arithmetic
    stack -= np.float32(FLOW_BOUND)                             # of utils.flow.dequantize_flow
    if flip:
        stack[..., 0::2] *= -1.0                                # ... and negate x (y unchanged)
    stack -= _channel_means(stack)
    stack /= np.float32(FLOW_BOUND)
    return stack


def undo_preprocessing(x: np.ndarray) -> np.ndarray:
    """Caffe-preprocessed frame(s) (BGR minus the ImageNet mean) -> ``uint8`` RGB, for plots."""
    x = np.asarray(x, dtype=np.float32) + CAFFE_BGR_MEAN
    return np.clip(np.rint(x[..., ::-1]), 0, 255).astype(np.uint8)


def flow_stack_to_color(stack: np.ndarray, pair: int = 0, max_magnitude: float | None = None) -> np.ndarray:
    """Colour picture (uint8 RGB) of flow pair ``pair`` (0-based) of a network-ready stack ``[H, W, 2L]``."""
    flow = np.stack([stack[..., 2 * pair], stack[..., 2 * pair + 1]], axis=-1) * np.float32(FLOW_BOUND)
    return flow_to_color(flow, max_magnitude)


# ----------------------------------------------------------------------------------------
# Deterministic helpers for evaluation
# ----------------------------------------------------------------------------------------
def spatial_input(frames_path: PathLike, frame: int, image_size: int = 224, *, flip: bool = False,
                  preprocess: Preprocess = default_preprocess) -> np.ndarray:
    """Network input for frame ``frame`` (1-based): centre crop, resized, preprocessed ``float32[S, S, 3]``."""
    rgb = read_frame(frames_path, frame)
    x = _frame_input(rgb, centre_crop_box(*rgb.shape[:2]), image_size, flip)
    return np.asarray(preprocess(x[None]), dtype=np.float32)[0]


def temporal_input(frames_path: PathLike, start: int, image_size: int = 224, stack_length: int = 10, *,
                   flip: bool = False) -> np.ndarray:
    """Network input for the flow stack starting at flow ``start`` (1-based): centre crop, ``float32[S, S, 2L]``.

    Channels x1, y1, ..., xL, yL, each mean-subtracted and in units of ``FLOW_BOUND`` (20 px).
    """
    flow = read_flow_uint8(frames_path, start, stack_length)
    return flow_stack_input(flow, centre_crop_box(*flow.shape[:2]), image_size, flip)


def spatial_inputs_for_video(frames_path: PathLike, frames: Sequence[int], image_size: int = 224, *,
                             flip: bool = False, preprocess: Preprocess = default_preprocess) -> np.ndarray:
    """:func:`spatial_input` for several frames of one video at once: ``float32[N, S, S, 3]``."""
    cache: dict[int, np.ndarray] = {}
    out = np.empty((len(frames), image_size, image_size, 3), np.float32)
    for n, frame in enumerate(frames):
        if frame not in cache:
            rgb = read_frame(frames_path, frame)
            cache[frame] = _frame_input(rgb, centre_crop_box(*rgb.shape[:2]), image_size, flip)
        out[n] = cache[frame]
    return np.asarray(preprocess(out), dtype=np.float32)


def temporal_inputs_for_video(frames_path: PathLike, starts: Sequence[int], image_size: int = 224,
                              stack_length: int = 10, *, flip: bool = False) -> np.ndarray:
    """:func:`temporal_input` for several starts of one video: ``float32[N, S, S, 2L]``.

    Each flow JPEG is read once even when the stacks overlap (stride 1 reuses 9 of 10 flows).
    """
    needed = sorted({t for s in starts for t in range(int(s), int(s) + stack_length)})
    planes = {t: read_flow_uint8(frames_path, t, 1) for t in needed}     # uint8 [H, W, 2] per flow
    out = np.empty((len(starts), image_size, image_size, 2 * stack_length), np.float32)
    for n, s in enumerate(starts):
        flow = np.concatenate([planes[t] for t in range(int(s), int(s) + stack_length)], axis=-1)
        out[n] = flow_stack_input(flow, centre_crop_box(*flow.shape[:2]), image_size, flip)
    return out


def eval_crop_boxes(height: int, width: int, crops: int = 1,
                   scale: float = EVAL_CROP_SCALE) -> list[tuple[tuple[int, int, int], bool]]:
    """``[(box, flip), ...]`` of the test-time crops of a frame: ``crops=1`` the centre crop;
    ``crops=10`` the paper's ten (Simonyan & Zisserman 2014, after Krizhevsky et al. 2012): the four
    corners and the centre, each also mirrored. Boxes are ``(top, left, side)``, side ``short_side * scale``.
    """
    if crops not in TEST_CROPS:
        raise ValueError(f"crops must be one of {TEST_CROPS}, got {crops!r}")
    top, left, side = centre_crop_box(height, width, scale)
    if crops == 1:
        return [((top, left, side), False)]
    bottom, right = height - side, width - side
    five = [(0, 0, side), (0, right, side), (bottom, 0, side), (bottom, right, side), (top, left, side)]
    return [(box, flip) for flip in (False, True) for box in five]


def spatial_test_inputs(frame_rgb: np.ndarray, image_size: int, crops: int = 1, *,
                        preprocess: Preprocess = default_preprocess) -> np.ndarray:
    """The test-time inputs of one RGB frame (:func:`eval_crop_boxes`): preprocessed ``float32[crops, S, S, 3]``."""
    x = np.stack([_frame_input(frame_rgb, box, image_size, flip)
                  for box, flip in eval_crop_boxes(*frame_rgb.shape[:2], crops)])
    return np.asarray(preprocess(x), dtype=np.float32)


def temporal_test_inputs(flow_uint8: np.ndarray, image_size: int, crops: int = 1) -> np.ndarray:
    """The test-time inputs of one stored flow stack: ``float32[crops, S, S, 2L]``; mirrored crops
    negate x, as in training (:func:`flow_stack_input`)."""
    return np.stack([flow_stack_input(flow_uint8, box, image_size, flip)
                     for box, flip in eval_crop_boxes(*flow_uint8.shape[:2], crops)])


def rgb_clip_input(frames_rgb: Sequence[np.ndarray], box, image_size: int, flip: bool) -> np.ndarray:
    """``T`` RGB frames of one clip, each cropped, resized and flipped alike: ``float32[T, S, S, 3]``,
    in the order given (time order), not yet preprocessed."""
    return np.stack([_frame_input(frame, box, image_size, flip) for frame in frames_rgb])


def flow_volume_input(flow_uint8: np.ndarray, box, image_size: int, flip: bool) -> np.ndarray:
    """A stored flow stack ``uint8[H, W, 2T]`` (x1, y1, ..., xT, yT) as a volume ``float32[T, S, S, 2]``
    (time first, channels x, y): exactly :func:`flow_stack_input` (one crop, a flip that negates x,
    each flow's mean subtracted, units of 20 px), reshaped for a 3D network."""
    stack = flow_stack_input(flow_uint8, box, image_size, flip)            # [S, S, 2T]
    side, _, channels = stack.shape
    return np.ascontiguousarray(stack.reshape(side, side, channels // 2, 2).transpose(2, 0, 1, 3))


def read_clip_frames(frames_path: PathLike, start: int, clip_length: int) -> np.ndarray:
    """RGB frames ``start .. start + T - 1`` (1-based) of an extracted video: ``uint8[T, H, W, 3]``."""
    return np.stack([read_frame(frames_path, t) for t in range(int(start), int(start) + int(clip_length))])


def rgb_clip_test_inputs(frames_rgb: np.ndarray, image_size: int, crops: int = 1, *,
                         preprocess: Preprocess = default_preprocess) -> np.ndarray:
    """The test-time inputs of one RGB clip ``uint8[T, H, W, 3]`` (:func:`eval_crop_boxes`, each crop the
    same on every frame): preprocessed ``float32[crops, T, S, S, 3]``."""
    x = np.stack([rgb_clip_input(frames_rgb, box, image_size, flip)
                  for box, flip in eval_crop_boxes(*frames_rgb.shape[1:3], crops)])
    return np.asarray(preprocess(x), dtype=np.float32)


def flow_volume_test_inputs(flow_uint8: np.ndarray, image_size: int, crops: int = 1) -> np.ndarray:
    """The test-time inputs of one stored flow stack ``uint8[H, W, 2T]`` as volumes ``float32[crops, T, S, S, 2]``;
    mirrored crops negate x, as in training."""
    return np.stack([flow_volume_input(flow_uint8, box, image_size, flip)
                     for box, flip in eval_crop_boxes(*flow_uint8.shape[:2], crops)])


def evenly_spaced(n_positions: int, count: int) -> np.ndarray:
    """``count`` 1-based positions out of ``1..n_positions``: centres of ``count`` equal segments (TSN).

    ``count=1`` gives the middle position. Used for the frames/starts of evaluation.
    """
    if n_positions < 1 or count < 1:
        raise ValueError(f"need n_positions >= 1 and count >= 1, got {n_positions}, {count}")
    return 1 + np.floor((np.arange(count) + 0.5) * n_positions / count).astype(np.int64)


# ----------------------------------------------------------------------------------------
# The PyDatasets
# ----------------------------------------------------------------------------------------
def _video_name(frames_path: PathLike) -> str:
    path = Path(frames_path)
    return f"{path.parent.name}/{path.name}"


class _VideoBatches(keras.utils.PyDataset):
    """Shared logic: checks on the rows, epoch-seeded order and RNG, batching."""

    stream = "?"

    def __init__(self, index, *, training: bool, image_size: int, batch_size: int, items_per_video: int,
                 seed: int, crop_scales: Sequence[float], crop_positions: str, last_batch: str = "keep",
                 **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        required = {"frames_path", "label", "n_frames", "n_flows"}
        missing = sorted(required - set(index.columns))
        if missing:
            raise ValueError(f"{type(self).__name__}: the index has no column(s) {missing}; "
                             f"build it with utils.dataset.build_index")
        if len(index) == 0:
            raise ValueError(f"{type(self).__name__}: the index has no rows")
        if training and "subset" in index.columns and (index["subset"] == "test").any():
            found = sorted(map(str, index["subset"].unique()))
            raise ValueError(f"{type(self).__name__}(training=True) was given rows with subset values "
                             f"{found}; the test split must never reach training code. Pass "
                             f"index[index.subset == 'train'] (or 'val' for validation, with training=False).")
        not_extracted = index[index["n_frames"] <= 0]
        if len(not_extracted):
            shown = "; ".join(f"{_video_name(p)} (folder {p})" for p in not_extracted["frames_path"].iloc[:5])
            raise ValueError(f"{len(not_extracted)} video(s) have no extracted frames (n_frames == 0), "
                             f"e.g. {shown}. Run utils.extract first or drop them with index[index.n_frames > 0].")
        if crop_positions not in CROP_POSITIONS:
            raise ValueError(f"crop_positions must be one of {CROP_POSITIONS}, got {crop_positions!r}")
        if items_per_video < 1 or batch_size < 1 or image_size < 1:
            raise ValueError("items per video, batch_size and image_size must be >= 1")
        self.training = bool(training)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.items_per_video = int(items_per_video)
        self.seed = int(seed)
        self.crop_scales = tuple(float(s) for s in crop_scales)
        self.crop_positions = crop_positions
        self.frames_paths = [str(p) for p in index["frames_path"]]
        self.labels = index["label"].to_numpy(dtype=np.int32)
        self.n_frames = index["n_frames"].to_numpy(dtype=np.int64)
        self.n_flows = index["n_flows"].to_numpy(dtype=np.int64)
        # One item = (row, slot); slot j < items_per_video says which evenly spaced position to use at evaluation.
        n_items = len(self.labels) * self.items_per_video
        self._rows = np.repeat(np.arange(len(self.labels)), self.items_per_video)
        self._slots = np.tile(np.arange(self.items_per_video), len(self.labels))
        self.n_items = n_items
        self.last_batch = last_batch
        self.set_epoch(0)

    @property
    def last_batch(self) -> str:
        """What happens to a last batch smaller than ``batch_size`` (see :data:`LAST_BATCH`)."""
        return self._last_batch

    @last_batch.setter
    def last_batch(self, value: str) -> None:
        if value not in LAST_BATCH:
            raise ValueError(f"last_batch must be one of {sorted(LAST_BATCH)}, got {value!r}")
        if value == "drop" and self.n_items < self.batch_size:
            raise ValueError(f"last_batch='drop' with {self.n_items} items and batch_size={self.batch_size} "
                             f"leaves no batch at all; use 'pad' or a smaller batch")
        self._last_batch = value

    # --- epochs --------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order and random draws (call with ``initial_epoch`` when resuming ``fit``)."""
        self.epoch = int(epoch)
        if self.training:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)
        else:
            self._order = np.arange(self.n_items)

    def on_epoch_end(self):
        """Keras calls this after each epoch: next epoch, new order, new crops (training only)."""
        if self.training:
            self.set_epoch(self.epoch + 1)

    # --- batches -------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.last_batch == "drop":
            return self.n_items // self.batch_size
        return math.ceil(self.n_items / self.batch_size)

    def __getitem__(self, batch_index: int):
        if not 0 <= batch_index < len(self):
            raise IndexError(f"batch {batch_index} out of range (0..{len(self) - 1})")
        items = self._order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, batch_index]) if self.training else None
        real = len(items)
        if self.last_batch == "pad" and real < self.batch_size:        # repeats, weighted 0
            items = np.resize(items, self.batch_size)
        first = self._load(self._rows[items[0]], self._slots[items[0]], rng)
        x = np.empty((len(items), *first.shape), first.dtype)        # filled in place: no stacking copy
        x[0] = first
        for n, i in enumerate(items[1:], start=1):
            x[n] = self._load(self._rows[i], self._slots[i], rng)
        y = self.labels[self._rows[items]]
        if self.last_batch == "pad":
            return self._finish(x), y, (np.arange(len(items)) < real).astype(np.float32)
        return self._finish(x), y

    def _check_flows(self, name: str, length: int, remedy: str) -> None:
        """Raise, naming them, if videos have fewer than ``length`` flows (``name`` is the setting)."""
        short = [(p, n) for p, n in zip(self.frames_paths, self.n_flows) if n < length]
        if short:
            shown = "; ".join(f"{_video_name(p)} has {n} (folder {p})" for p, n in short[:5])
            raise ValueError(f"{len(short)} video(s) have fewer than {name}={length} flows: {shown}. Drop them "
                             f"(index[index.n_flows >= {length}]) or {remedy}.")

    def _box(self, height: int, width: int, rng):
        if rng is None:
            return centre_crop_box(height, width)
        return random_crop_box(height, width, rng, self.crop_scales, self.crop_positions)

    def _load(self, row: int, slot: int, rng) -> np.ndarray:
        raise NotImplementedError

    def _finish(self, x: np.ndarray) -> np.ndarray:
        return x


class SpatialFrames(_VideoBatches):
    """RGB frames for the spatial stream: ``(float32[B, S, S, 3], int32[B])`` batches.

    Args:
        index: rows of the index DataFrame to use (one subset), with ``frames_path``, ``label``,
            ``n_frames``, ``n_flows``.
        training: ``True``: shuffled order, a random frame per video and random crop / flip,
            all redrawn each epoch. ``False``: index order, evenly spaced frames (the middle one
            when ``frames_per_video=1``), centre crop; identical on every pass.
        frames_per_video: items per video per epoch (each its own random frame when training).
        preprocess: the backbone's preprocessing, applied to a float32 RGB batch in 0..255
            (default ResNet50's caffe-style ``preprocess_input``; see :func:`undo_preprocessing`).
        crop_scales, crop_positions: the training scale jitter (see :func:`random_crop_box`).
        last_batch: ``"keep"``, ``"drop"`` or ``"pad"`` (see :data:`LAST_BATCH`); several devices
            (``keras.distribution.DataParallel``) need every batch to split evenly.
        **pydataset_kwargs: ``workers`` (threads), ``use_multiprocessing``, ``max_queue_size``.
            Threads are the fast choice here: JPEG decoding and OpenCV/NumPy work release the
            GIL, and Keras' processes send every float32 batch back through a pipe (measured by
            ``python -m utils.bench --stages generators``).
    """

    stream = "spatial"

    def __init__(self, index, *, training: bool, image_size: int = 224, batch_size: int = 32,
                 frames_per_video: int = 1, seed: int = 0, preprocess: Preprocess = default_preprocess,
                 crop_scales: Sequence[float] = TRAIN_CROP_SCALES, crop_positions: str = "corners",
                 **pydataset_kwargs):
        super().__init__(index, training=training, image_size=image_size, batch_size=batch_size,
                         items_per_video=frames_per_video, seed=seed, crop_scales=crop_scales,
                         crop_positions=crop_positions, **pydataset_kwargs)
        self.preprocess = preprocess

    def _load(self, row, slot, rng):
        n = int(self.n_frames[row])
        if rng is None:
            frame = int(evenly_spaced(n, self.items_per_video)[slot])
            flip = False
        else:
            frame = int(rng.integers(1, n + 1))
            flip = bool(rng.integers(2))
        rgb = read_frame(self.frames_paths[row], frame)
        return _frame_input(rgb, self._box(*rgb.shape[:2], rng), self.image_size, flip)

    def _finish(self, x):
        return np.asarray(self.preprocess(x), dtype=np.float32)


class FlowStacks(_VideoBatches):
    """Stacks of ``L`` optical flows for the temporal stream: ``(float32[B, S, S, 2L], int32[B])`` batches.

    Channels x1, y1, ..., xL, yL; each mean-subtracted over the crop and divided by 20 px (see the
    module docstring). Training draws the start uniformly in ``[1, n_flows - L + 1]``, a random
    crop (the same for all 2L channels) and a left-right flip that also negates x; evaluation
    uses evenly spaced starts (the middle one when ``stacks_per_video=1``) and the centre crop.
    Videos with fewer than ``L`` flows are an error (HMDB51's shortest clips have ~19 frames).

    ``flow_cache``: a folder for each video's decoded flows (:func:`cached_flows`, one uint8 ``.npy``
    per video, written on first use and memory-mapped after): the same input values without the
    20 JPEG decodes per stack, at 150 KB of disk per 320x240 flow pair (about 50 GB for the training
    videos of an HMDB51 split). Other arguments as :class:`SpatialFrames`.
    """

    stream = "temporal"

    def __init__(self, index, *, training: bool, image_size: int = 224, stack_length: int = 10,
                 batch_size: int = 32, stacks_per_video: int = 1, seed: int = 0,
                 crop_scales: Sequence[float] = TRAIN_CROP_SCALES, crop_positions: str = "corners",
                 flow_cache: PathLike | None = None, **pydataset_kwargs):
        super().__init__(index, training=training, image_size=image_size, batch_size=batch_size,
                         items_per_video=stacks_per_video, seed=seed, crop_scales=crop_scales,
                         crop_positions=crop_positions, **pydataset_kwargs)
        self.flow_cache = None if flow_cache is None else Path(flow_cache)
        self.stack_length = int(stack_length)
        self._check_flows("stack_length", self.stack_length, "use a shorter stack")

    def _load(self, row, slot, rng):
        n_starts = int(self.n_flows[row]) - self.stack_length + 1
        if rng is None:
            start = int(evenly_spaced(n_starts, self.items_per_video)[slot])
            flip = False
        else:
            start = int(rng.integers(1, n_starts + 1))
            flip = bool(rng.integers(2))
        if self.flow_cache is None:
            flow = read_flow_uint8(self.frames_paths[row], start, self.stack_length)
            return flow_stack_input(flow, self._box(*flow.shape[:2], rng), self.image_size, flip)
        flows = cached_flows(self.frames_paths[row], int(self.n_flows[row]), self.flow_cache)
        stack = flows[:, :, 2 * (start - 1):2 * (start - 1 + self.stack_length)]    # a view: no copy
        return flow_stack_input(stack, self._box(*flows.shape[:2], rng), self.image_size, flip)


CLIP_MODALITIES = ("rgb", "flow")


class Clips(_VideoBatches):
    """Clips for a 3D network (:mod:`utils.c3d`): ``(float32[B, T, S, S, C], int32[B])`` batches.

    ``modality="rgb"``: ``T = clip_length`` consecutive RGB frames, preprocessed like the spatial
    stream's (``C = 3``); ``"flow"``: ``T`` consecutive flow fields, each as the temporal stream's
    (mean-subtracted, units of 20 px; ``C = 2``: x, y). A clip starts at ``s`` in ``1 .. n_flows - T + 1``
    and covers frames (or flows) ``s .. s + T - 1``, in time order: the RGB clip at ``s`` shows the frames
    that the flow stack at ``s`` connects, as the evaluation protocols pair them. Training draws the
    start uniformly, and one crop and one flip for the whole clip (a mirrored flow clip negates x);
    evaluation uses evenly spaced starts (the middle one with ``clips_per_video=1``) and the centre crop.
    Other arguments as :class:`SpatialFrames` (``preprocess`` acts on RGB clips only).
    """

    stream = "clips"

    def __init__(self, index, *, training: bool, modality: str = "rgb", clip_length: int = 16,
                 image_size: int = 112, batch_size: int = 16, clips_per_video: int = 1, seed: int = 0,
                 preprocess: Preprocess = default_preprocess, crop_scales: Sequence[float] = TRAIN_CROP_SCALES,
                 crop_positions: str = "corners", **pydataset_kwargs):
        if modality not in CLIP_MODALITIES:
            raise ValueError(f"modality must be one of {CLIP_MODALITIES}, got {modality!r}")
        if int(clip_length) < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        super().__init__(index, training=training, image_size=image_size, batch_size=batch_size,
                         items_per_video=clips_per_video, seed=seed, crop_scales=crop_scales,
                         crop_positions=crop_positions, **pydataset_kwargs)
        self.modality, self.clip_length, self.preprocess = modality, int(clip_length), preprocess
        self._check_flows("clip_length", self.clip_length, "use shorter clips")

    def clip_start(self, row: int, slot: int, rng) -> tuple[int, bool]:
        """``(start, flip)`` of item ``slot`` of video ``row``: random when training, else evenly spaced."""
        n_starts = int(self.n_flows[row]) - self.clip_length + 1
        if rng is None:
            return int(evenly_spaced(n_starts, self.items_per_video)[slot]), False
        return int(rng.integers(1, n_starts + 1)), bool(rng.integers(2))

    def _load(self, row, slot, rng):
        start, flip = self.clip_start(row, slot, rng)
        path = self.frames_paths[row]
        if self.modality == "flow":
            flow = read_flow_uint8(path, start, self.clip_length)
            return flow_volume_input(flow, self._box(*flow.shape[:2], rng), self.image_size, flip)
        frames = read_clip_frames(path, start, self.clip_length)
        return rgb_clip_input(frames, self._box(*frames.shape[1:3], rng), self.image_size, flip)

    def _finish(self, x):
        if self.modality == "rgb":
            return np.asarray(self.preprocess(x), dtype=np.float32)
        return x


def even_batches(train_data, val_data=None) -> None:
    """Make every batch full for several devices (``keras.distribution.DataParallel``): training
    data drops its last smaller batch, validation data pads it with zero-weighted repeats. Only
    PyDatasets of this module left at ``last_batch="keep"`` are changed."""
    for data, rule in ((train_data, "drop"), (val_data, "pad")):
        if isinstance(data, _VideoBatches) and data.last_batch == "keep":
            data.last_batch = rule


def cached_flows(frames_path: PathLike, n_flows: int, cache_dir: PathLike) -> np.ndarray:
    """All stored flows of a video, decoded: :func:`read_flow_uint8` of flows ``1..n_flows``
    (``uint8[H, W, 2 n_flows]``, channels x1, y1, x2, ...) as a read-only memory map.

    ``<cache_dir>/<class>/<video>.npy`` is written on first use to a temporary name and renamed;
    a file of another flow count (the video was extracted again) is rebuilt. Channels last, so a
    stack is a slice whose pixels are contiguous (a stack reads most of the file's pages: the
    cache is fast when it fits in memory, as for an HMDB51 split on a 128 GB GPU machine).
    """
    path = Path(cache_dir) / Path(frames_path).parent.name / f"{Path(frames_path).name}.npy"
    if path.is_file():
        flows = np.load(path, mmap_mode="r")
        if flows.ndim == 3 and flows.shape[2] == 2 * n_flows:
            return flows
    flows = read_flow_uint8(frames_path, 1, n_flows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as file:
        np.save(file, flows)
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


# ----------------------------------------------------------------------------------------
# Notebook helpers
# ----------------------------------------------------------------------------------------
def show_batch(x: np.ndarray, y: np.ndarray, class_names: Sequence[str] | None = None, *,
               max_items: int = 8, pair: int = 0):
    """Matplotlib figure of the first ``max_items`` inputs of a batch with their labels.

    Frames (3 channels) are shown after :func:`undo_preprocessing`; flow stacks (2L channels)
    as the colour picture of flow pair ``pair`` (hue = direction, brightness = speed), all on one
    speed scale (the 99th percentile of the batch's), with the colour key.
    """
    import matplotlib.pyplot as plt

    n = min(max_items, len(x))
    is_flow = x.shape[-1] != 3
    key = [0.6] if is_flow else []
    fig, axes = plt.subplots(1, n + len(key), figsize=(2.2 * (n + sum(key)), 2.6), squeeze=False,
                             width_ratios=[1] * n + key)
    if is_flow:
        speed = np.hypot(x[:n, ..., 2 * pair], x[:n, ..., 2 * pair + 1]) * FLOW_BOUND
        scale = max(float(np.percentile(speed, 99)), 1e-6)
        draw_flow_colour_key(axes[0, -1], scale)
    for ax, xi, yi in zip(axes[0], x[:n], y[:n]):
        picture = flow_stack_to_color(xi, pair, scale) if is_flow else undo_preprocessing(xi)
        ax.imshow(picture)
        ax.set_title(class_names[int(yi)] if class_names is not None else str(int(yi)), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# Micro-benchmark
# ----------------------------------------------------------------------------------------
def benchmark_generators(index, *, image_size: int = 224, stack_length: int = 10, batch_size: int = 16,
                         n_batches: int = 4, workers: int = 1, seed: int = 0) -> dict[str, float]:
    """Training-time input speed: samples/s of one worker, and of ``workers`` threads together.

    Builds training :class:`SpatialFrames` and :class:`FlowStacks` on ``index`` (no test rows)
    and times ``n_batches`` batches after one warm-up batch. Returns a dict with
    ``frames_per_s`` / ``stacks_per_s`` (one worker) and, if ``workers > 1``,
    ``frames_per_s_total`` / ``stacks_per_s_total`` (threads, as ``PyDataset(workers=...)`` uses).
    """
    datasets = {
        "frames": SpatialFrames(index, training=True, image_size=image_size, batch_size=batch_size, seed=seed),
        "stacks": FlowStacks(index, training=True, image_size=image_size, stack_length=stack_length,
                             batch_size=batch_size, seed=seed),
    }
    result: dict[str, float] = {"image_size": float(image_size), "batch_size": float(batch_size)}
    for name, data in datasets.items():
        batches = [b % len(data) for b in range(1, n_batches + 1)]
        data[0]                                                        # warm-up (imports, caches)
        started = time.perf_counter()
        count = sum(len(data[b][1]) for b in batches)
        result[f"{name}_per_s"] = count / (time.perf_counter() - started)
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                started = time.perf_counter()
                count = sum(len(y) for _, y in pool.map(lambda b: data[b], batches * workers))
                result[f"{name}_per_s_total"] = count / (time.perf_counter() - started)
    return result
