"""SG3I: a motion stream without optical flow (Kim & Won 2020), built from the RGB frames alone.

Kim and Won ("Action Recognition in Videos Using Pre-Trained 2D Convolutional Neural Networks",
IEEE Access 8:60179, 2020) replace the temporal stream's optical flow by a *Stacked Grayscale
3-channel Image*: three RGB frames taken at three different times are converted to grayscale and
put in the R, G and B channels of one image, and an ImageNet 2D CNN is fine-tuned on such images;
several SG3Is, one per sub-shot of the clip, for long-range motion. Only the frames are needed
(``python -m utils.extract --no-flow``), no TV-L1. The paper's abstract reports a network about
14.6 times faster than the first (optical-flow) two-stream network, with a similar accuracy on UCF101
and a 5.7 % better result on HMDB51.

Here:

* **Which three frames.** An SG3I at start ``s`` takes frames ``s``, ``s + span // 2`` and
  ``s + span`` (1-based; :func:`sg3i_frames`), with ``span`` the temporal stream's stack length L
  (10): the first, middle and last of the L + 1 frames a flow stack starting at ``s`` covers, so
  the RGB frame, the flow stack and the SG3I of a protocol look at the same moment. Channel order
  is time order: R = the earliest frame, B = the latest (so "up" and "down", the same images in the
  opposite order, are different inputs). The frame spacing is this repository's choice (the
  paper's is not restated here).
* **Grayscale** is OpenCV's ``cvtColor`` (BT.601 luma, 0.299 R + 0.587 G + 0.114 B), the conversion
  the flow of :mod:`utils.extract_job` is computed on, applied to the stored JPEG frames.
* **Sub-shots.** The protocols of :mod:`utils.evaluation` give the starts: one SG3I at the clip's
  middle stack (one frame), or one per sub-shot, the clip cut into ``segments`` equal sub-shots as
  for the flow stacks (whole video; the paper's 25 x 10 crops on HMDB51).
* **Crops and the mirror** as for RGB frames (:func:`utils.generators.eval_crop_boxes`): one crop
  of all three channels, and the mirror reverses the columns of all three; unlike flow, nothing
  changes sign.
* **The network** is the spatial stream's ResNet-50 (:func:`build_sg3i_model`), fine-tuned from
  ImageNet on HMDB51 and trained from scratch (``weights=None``) on the demo and in the tests.

On the demo dataset the three colours have equal luma, so an SG3I shows the motion and never the
colour: the SG3I stream can only know the motion, like the flow stream, and averaging it with the
RGB stream solves the demo (notebook 06).
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import cv2
import keras
import numpy as np
from matplotlib.figure import Figure

from utils import generators, models

STREAM = "sg3i"
CHANNELS = ("R", "G", "B")          # in time order: R the earliest frame, B the latest

# Changes to the spatial stream's preset (utils.training.SPATIAL_DEFAULTS, SPATIAL_FROM_SCRATCH) for the
# SG3I stream; a notebook parameter overrides any of them.
#   hmdb51: Kim & Won 2020 fine-tune an ImageNet 2D CNN on SG3Is; the schedule here is the spatial
#     stream's (TSN's, see utils.training), not one restated from the paper.
#   demo: a ResNet-50 from scratch on a CPU (weights=None, the spatial stream's from-scratch preset), with
#     more epochs: the motion is where the square is in the R channel against the G and B channels, a
#     subtler pattern than a colour, learned from the demo's few distinct training clips (in grayscale its
#     three colours are one clip: 8 sources x 3 motions). With 8 SG3Is per video and epoch, from scratch,
#     the test clips' motion was right for 58 % of them after 4 epochs and for 83 % after 10 (colour:
#     33 %, chance) on the 2-core CPU this repository was built on.
SG3I_CHANGES: dict[str, dict[str, Any]] = {
    "demo": dict(finetune_epochs=10),
    "hmdb51": dict(),
}
PathLike = str | os.PathLike


def sg3i_settings(dataset_name: str, pretrained: bool = True, **given) -> dict[str, Any]:
    """The SG3I stream's training settings: the spatial preset, :data:`SG3I_CHANGES`, then ``given``
    (``None`` values do not override); keys as :func:`utils.training.default_settings`."""
    from utils import training

    settings = training.default_settings("spatial", dataset_name, pretrained=pretrained)
    settings.update(SG3I_CHANGES["demo" if dataset_name == "demo" else "hmdb51"])
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise KeyError(f"unknown SG3I setting(s) {unknown}; known: {sorted(settings)}")
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings


# ----------------------------------------------------------------------------------------
# One SG3I
# ----------------------------------------------------------------------------------------
def sg3i_frames(start: int, span: int = 10, n_frames: int | None = None) -> tuple[int, int, int]:
    """The 1-based frames ``(start, start + span // 2, start + span)`` of the SG3I at ``start``.

    Given ``n_frames``, the three are moved back inside a clip that ends earlier (the start is
    clamped to ``1 .. n_frames - span``), and a clip shorter than ``span + 1`` frames spreads them
    over all its frames.
    """
    if int(start) < 1 or int(span) < 2:
        raise ValueError(f"SG3I frames need start >= 1 and span >= 2, got start={start}, span={span}")
    start, span = int(start), int(span)
    if n_frames is not None:
        if n_frames < 1:
            raise ValueError("a clip without frames has no SG3I")
        span = min(span, int(n_frames) - 1)
        start = min(start, int(n_frames) - span)
        if span < 1:
            return (start, start, start)
    return (start, start + span // 2, start + span)


def gray_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """OpenCV's grayscale of an RGB frame (``cv2.cvtColor``: 0.299 R + 0.587 G + 0.114 B, rounded)."""
    return cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2GRAY)


def stack_sg3i(grays: Sequence[np.ndarray]) -> np.ndarray:
    """Three grayscale frames (in time order) as the R, G and B channels of one ``uint8[H, W, 3]`` image."""
    if len(grays) != 3:
        raise ValueError(f"an SG3I stacks exactly 3 grayscale frames, got {len(grays)}")
    shapes = {np.shape(g) for g in grays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"the 3 frames must be grayscale images of one size, got shapes {sorted(shapes)}")
    return np.stack(grays, axis=-1)


def read_sg3i(frames_path: PathLike, frames: Sequence[int]) -> np.ndarray:
    """The SG3I of three stored frames (1-based, in time order) of an extracted video: ``uint8[H, W, 3]``."""
    return stack_sg3i([gray_frame(generators.read_frame(frames_path, i)) for i in frames])


def crop_input(image: np.ndarray, box: tuple[int, int, int], image_size: int, flip: bool) -> np.ndarray:
    """Crop ``(top, left, side)``, resize to ``image_size`` and optionally mirror an SG3I: ``float32[S, S, 3]``.

    The same crop for all three channels; the mirror reverses the columns and changes no value.
    """
    top, left, side = box
    crop = image[top:top + side, left:left + side]
    if side != image_size:
        crop = cv2.resize(crop, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    if flip:
        crop = crop[:, ::-1]
    return crop.astype(np.float32)


def sg3i_test_inputs(image: np.ndarray, image_size: int, crops: int = 1, *,
                     preprocess=generators.default_preprocess) -> np.ndarray:
    """The test-time inputs of one SG3I: ``crops`` = 1 (centre) or 10 (4 corners + centre, and their
    mirrors), preprocessed as the backbone's RGB input: ``float32[crops, S, S, 3]``."""
    return generators.spatial_test_inputs(image, image_size, crops, preprocess=preprocess)


def video_inputs(frames_path: PathLike, starts: Sequence[int], *, span: int, image_size: int,
                 batch_size: int, crops: int = 1, preprocess=generators.default_preprocess) -> Iterator[np.ndarray]:
    """The network inputs of the SG3Is of one video at ``starts`` (increasing), about ``batch_size``
    at a time; each frame is read and converted once, however many SG3Is share it."""
    grays: dict[int, np.ndarray] = {}
    per_batch = max(1, batch_size // crops)
    for i in range(0, len(starts), per_batch):
        batch = []
        for start in starts[i:i + per_batch]:
            frames = sg3i_frames(int(start), span)
            for t in frames:
                if t not in grays:
                    grays[t] = gray_frame(generators.read_frame(frames_path, t))
            batch.append(sg3i_test_inputs(stack_sg3i([grays[t] for t in frames]), image_size, crops,
                                          preprocess=preprocess))
            for t in [t for t in grays if t < frames[0]]:     # later SG3Is start later
                del grays[t]
        yield np.concatenate(batch)


# ----------------------------------------------------------------------------------------
# Training data and the model
# ----------------------------------------------------------------------------------------
class SG3IFrames(generators.SpatialFrames):
    """SG3Is for training and validating the SG3I stream: ``(float32[B, S, S, 3], int32[B])`` batches.

    Like :class:`utils.generators.SpatialFrames` (the same crops, flips, preprocessing, epochs and
    seeds), with an SG3I in place of one frame: training draws its start uniformly in
    ``1 .. n_frames - span`` (a random sub-shot), evaluation takes evenly spaced starts (the middle
    one for ``sg3is_per_video=1``). Only the frames are read: the rows need no flow (``n_flows`` may
    be 0), and a clip shorter than ``span + 1`` frames gets SG3Is spread over all its frames.
    """

    stream = STREAM

    def __init__(self, index, *, training: bool, image_size: int = 224, span: int = 10, batch_size: int = 32,
                 sg3is_per_video: int = 1, seed: int = 0, preprocess=generators.default_preprocess,
                 crop_scales: Sequence[float] = generators.TRAIN_CROP_SCALES, crop_positions: str = "corners",
                 **pydataset_kwargs):
        super().__init__(index, training=training, image_size=image_size, batch_size=batch_size,
                         frames_per_video=sg3is_per_video, seed=seed, preprocess=preprocess,
                         crop_scales=crop_scales, crop_positions=crop_positions, **pydataset_kwargs)
        if int(span) < 2:
            raise ValueError(f"span must be >= 2 frames, got {span}")
        self.span = int(span)

    def _load(self, row, slot, rng):
        n_frames = int(self.n_frames[row])
        n_starts = max(1, n_frames - self.span)
        if rng is None:
            start, flip = int(generators.evenly_spaced(n_starts, self.items_per_video)[slot]), False
        else:
            start, flip = int(rng.integers(1, n_starts + 1)), bool(rng.integers(2))
        image = read_sg3i(self.frames_paths[row], sg3i_frames(start, self.span, n_frames))
        return crop_input(image, self._box(*image.shape[:2], rng), self.image_size, flip)


def build_sg3i_model(num_classes: int, image_size: int = 224, weights="imagenet", dropout: float = 0.5,
                     bn_momentum: float | None = None, zero_init_residual: bool | None = None) -> keras.Model:
    """The SG3I stream: the spatial stream's ResNet-50 + head (:func:`utils.models.build_spatial_model`)
    on SG3Is, named ``"sg3i_resnet50"``; freeze / unfreeze and train it as the spatial stream."""
    spatial = models.build_spatial_model(num_classes, image_size=image_size, weights=weights, dropout=dropout,
                                         bn_momentum=bn_momentum, zero_init_residual=zero_init_residual)
    return keras.Model(spatial.inputs, spatial.outputs, name="sg3i_resnet50")


# ----------------------------------------------------------------------------------------
# A picture for the notebook
# ----------------------------------------------------------------------------------------
def sg3i_figure(examples: dict[str, tuple[PathLike, Sequence[int]]]) -> Figure:
    """One row per example ``{title: (frames_path, (t1, t2, t3))}``: the three RGB frames, their
    grayscale, and the SG3I they make (R = t1, G = t2, B = t3), shown as a colour image: where
    nothing moves the three channels agree (grey); a moving object leaves a red trace where it was
    first and a blue one where it ends."""
    fig = Figure(figsize=(13, 2.3 * len(examples)), layout="constrained")
    axes = fig.subplots(len(examples), 7, squeeze=False)
    for row, (title, (frames_path, frames)) in zip(axes, examples.items()):
        rgbs = [generators.read_frame(frames_path, t) for t in frames]
        for ax, rgb, t in zip(row[:3], rgbs, frames):
            ax.imshow(rgb)
            ax.set_title(f"frame {t}", fontsize=9)
        for ax, rgb, name in zip(row[3:6], rgbs, CHANNELS):
            ax.imshow(gray_frame(rgb), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"gray -> {name}", fontsize=9)
        row[6].imshow(stack_sg3i([gray_frame(rgb) for rgb in rgbs]))
        row[6].set_title("SG3I", fontsize=9)
        row[0].set_ylabel(title, fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig
