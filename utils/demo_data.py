"""A built-in demo dataset: small synthetic clips in the exact HMDB51 layout, made in seconds.

Each clip shows one textured square sliding over a textured background. A class is the
product of two factors:

* **appearance** - the square's colour: ``red``, ``green`` or ``blue``, all of the *same
  luma* (brightness), so the three colours look identical in grayscale;
* **motion** - where the square goes: ``up``, ``down`` or ``sideways`` (left or right, drawn
  at random per source, so a horizontal flip never changes the class).

That makes nine classes such as ``red_up`` or ``blue_sideways``, and neither stream of a
two-stream network can solve the task alone:

* one RGB frame tells the colour but not the motion (no motion blur; see below for positions);
* optical flow is computed on grayscale frames, where the colours vanish, so it tells the
  motion but not the colour.

Each stream alone should reach about 1/3 accuracy; fused, close to 100 %.

Everything else is a nuisance that does not depend on the class: speed, size and texture of
the square, its grayscale brightness, where it passes, clip length, JPEG quality, a slow camera
drift on some clips. It belongs to a *source*: like a film in which one actor performs every
action of HMDB51, each source holds one clip of every class on its own grey background (all
colour in a frame is the square's), and its nine clips share every nuisance. They differ only in
the two factors: the three colours of one motion are then the same clip in grayscale, and the
three motions of one colour pass through the same point at the middle of the clip, "down" being
"up" played backwards. So a stream has nothing to learn about the factor it cannot see, not even
by memorising its training clips, and its best answer there is "equally likely": what averaging
the two streams' scores needs. The background says which source a clip comes from, never its
class, and the grouped train/validation carve-out of :mod:`utils.dataset` has real work to do
(a source spans all classes); the official-style split files keep each source on one side.

Files follow HMDB51 exactly::

    <root>/videos/<class>/<source>_<class>_<body>_<cam>_<np>_<view>_<quality>_<clip>.avi
    <root>/splits/<class>_test_split{1,2,3}.txt     lines "<video>.avi <0|1|2> "

Make it with ``make_demo_dataset(root)`` or ``python -m utils.demo_data``; the same seed
gives the same split files byte for byte and the same decoded frames.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .config import Config, dataset_root

if TYPE_CHECKING:
    import pandas as pd

GENERATOR_VERSION = 3
MANIFEST_NAME = "demo_dataset.json"

# --------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------
# Colours as hue angles (degrees) in the Cb-Cr plane of BT.601 YCbCr: the chroma directions of
# pure red, green and blue. A pixel of luma Y and chroma (Cb, Cr) has the same grayscale value
# Y whatever its hue, because OpenCV's BGR2GRAY uses the same weights (0.299, 0.587, 0.114).
APPEARANCES = {"red": 108.7, "green": 231.7, "blue": 350.8}
MOTIONS = {"up": (-90.0,), "down": (90.0,), "sideways": (0.0, 180.0)}  # image angles, y axis down

DEMO_CLASSES = {
    f"{appearance}_{motion}": {"appearance": appearance, "motion": motion}
    for appearance in APPEARANCES for motion in MOTIONS
}
"""Class name -> its two factors, e.g. ``DEMO_CLASSES["red_up"] == {"appearance": "red", "motion": "up"}``."""

DEFAULT_OPTIONS = dict(
    frame_size=(48, 48),       # (width, height) in pixels
    frames=(12, 16),           # clip length range in frames (inclusive); >= stack_length + 1
    clips_per_class=15,        # sources; each holds one clip of every class
    test_per_split=4,          # test sources (so test clips per class) in each split (code 2)
    unused_per_split=1,        # sources left out of each split (code 0); the rest train (1)
    fps=25,
)
"""Size options of :func:`make_demo_dataset` (all can be overridden by keyword)."""

DEMO_SETTINGS = {
    "image_size": 42,      # network input side = the evaluation centre crop of the 48x48 frames
    "stack_length": 10,    # as in the paper; every demo clip has >= 12 frames, so >= 11 flows
    "flow_method": "tvl1",
    "tvl1_options": {"nscales": 3, "warps": 3},   # a 3-level pyramid for 48 px frames (see below)
    "crop_scales": (1.0, 0.875),   # training crops (generators' crop_scales): never miss the square
    "frame_size": DEFAULT_OPTIONS["frame_size"],
}
"""Recommended settings for a demo run (``Config(dataset="demo", image_size=DEMO_SETTINGS["image_size"])``).

``image_size=42``: evaluation (:mod:`utils.generators`) takes the centre crop of side
0.875 x 48 = 42 pixels, so test inputs are used at their own resolution, and ResNet-50 (stride 32)
keeps a 2x2 final feature map (at 32 pixels, its smallest input, a from-scratch ResNet-50 learned
the colours far more slowly: 36-61 % right after two epochs, against 94-100 % at 42). Frames are
square on purpose: the
square object (11-15 pixels) is always at least partly inside that centre crop, even while it
wraps around an edge. ``crop_scales=(1.0, 0.875)`` keeps that true for training crops too (the
demo presets of :mod:`utils.training` use it); with the default TSN scales, the 0.75 and 0.66
corner crops miss the square in a few to a fifth of the draws, i.e. noisy labels.

``tvl1_options``: OpenCV's TV-L1 defaults (5 pyramid levels, 5 warps per level) are made for
frames of hundreds of pixels. At 48 px the demo's squares move 0.9-1.9 px per frame, which a
3-level pyramid (48, 38, 31 px) with 3 warps covers: on 12 demo clips (174 frame pairs, one
process) it took 30.5 ms per pair against 60.6 ms with the defaults, and on the moving pixels
(more than 0.5 px by the defaults) the flow differed from the defaults' by 0.04 px on average
(95th percentile 0.11 px). Notebook 01 uses these options for ``flow_method="tvl1"`` on the demo;
HMDB51 keeps the defaults. The whole demo (about 1,800 frame pairs) extracts in about half a
minute on two processes.
"""


def demo_flow_options(method: str) -> dict:
    """The flow options notebook 01 uses on the demo for ``method`` (``{}``: the method's defaults)."""
    return dict(DEMO_SETTINGS["tvl1_options"]) if method == "tvl1" else {}


# Nuisance ranges, as fractions of the frame's shorter side where they are lengths.
_OBJECT_SIDE = (0.22, 0.32)          # side of the square
_SPEED = (0.018, 0.040)              # per frame (0.9-1.9 px at 48 px)
_DIRECTION_JITTER = 15.0             # degrees around the class direction
_CHROMA = (28.0, 38.0)               # saturation of the square (radius in the Cb-Cr plane)
_HUE_JITTER = 10.0                   # degrees around the class hue
_LUMA_LIMITS = (55.0, 180.0)         # luma range of the square's pixels: its colours never clip
_BACKGROUND_LUMA = (30.0, 215.0)     # luma range of the background (grey, so it never clips)
_SQUARE_LUMA = (65.0, 170.0)         # range of the square's mean luma
_CAMERA_MOTION_SHARE = 0.25          # share of clips with a slow camera drift ("cm")
_CAMERA_SPEED = (0.004, 0.008)       # per frame (0.2-0.4 px at 48 px)
_JPEG_QUALITY = {"goo": 95, "med": 85, "bad": 75}   # MJPG quality by the file name's quality tag


def demo_class_factors(class_name: str) -> tuple[str, str]:
    """``(appearance, motion)`` of a demo class, e.g. ``"red_up" -> ("red", "up")``."""
    try:
        factors = DEMO_CLASSES[class_name]
    except KeyError:
        raise KeyError(f"{class_name!r} is not a demo class; demo classes: {sorted(DEMO_CLASSES)}") from None
    return factors["appearance"], factors["motion"]


def factor_accuracy(class_names, labels, predicted) -> dict[str, float]:
    """Shares of videos whose predicted class has the right colour, the right motion, and both (= top-1)."""
    factors = [demo_class_factors(name) for name in class_names]
    truth = [factors[int(i)] for i in labels]
    guess = [factors[int(i)] for i in predicted]
    return {"colour": float(np.mean([g[0] == t[0] for g, t in zip(guess, truth)])),
            "motion": float(np.mean([g[1] == t[1] for g, t in zip(guess, truth)])),
            "both": float(np.mean([g == t for g, t in zip(guess, truth)]))}


def factor_table(results: dict) -> "pd.DataFrame":
    """Per network (``{name: evaluation.Scores}``): % of test videos with the colour right, the motion
    right, and both (top-1). By design the spatial stream can only know the colour and the temporal
    stream only the motion (chance for a factor: 33 %)."""
    import pandas as pd

    rows = {name: factor_accuracy(s.class_names, s.label, s.predicted) for name, s in results.items()}
    table = pd.DataFrame(rows).T.rename(columns={"colour": "colour right (%)", "motion": "motion right (%)",
                                                 "both": "both right = top-1 (%)"})
    return (100 * table).round(1)


def speed_range_px(frame_size=DEFAULT_OPTIONS["frame_size"]) -> tuple[float, float]:
    """The range the generator draws a square's speed from, in pixels per frame, for ``(width, height)``."""
    short = min(frame_size)
    return _SPEED[0] * short, _SPEED[1] * short


def clip_spec(video: str, seed: int = 0, **size_options) -> "ClipSpec":
    """The spec of one demo clip, by its file name or stem (e.g. ``demosrc00_red_up_f_nm_np1_fr_goo_0``)."""
    name = video if str(video).endswith(".avi") else f"{video}.avi"
    for spec in plan_clips(seed, **size_options):
        if spec.filename == name:
            return spec
    raise KeyError(f"{video!r} is not a clip of the demo dataset (seed {seed})")


def crosses_edge(spec: "ClipSpec") -> bool:
    """Whether the clip's square crosses an edge of the frame: the demo draws it on a torus (what leaves on
    one side comes back on the other, ``cv2.BORDER_WRAP``), so its colour is always in the frame."""
    for t in range(spec.n_frames):
        x = (spec.start[0] + spec.velocity[0] * t) % spec.width
        y = (spec.start[1] + spec.velocity[1] * t) % spec.height
        if x + spec.side > spec.width or y + spec.side > spec.height:
            return True
    return False


# --------------------------------------------------------------------------------------
# One clip
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip (the class enters only through hue and direction)."""

    class_name: str
    source: str
    clip: int
    n_frames: int
    width: int
    height: int
    hue: float               # degrees in the Cb-Cr plane
    chroma: float            # saturation of the square
    side: int                # square side in pixels
    luma_mean: float         # grayscale brightness of the square
    luma_std: float
    start: tuple             # (x, y) start position of the square's corner, pixels
    velocity: tuple          # (vx, vy) pixels per frame
    camera_velocity: tuple   # background drift, pixels per frame ((0, 0) for a static camera)
    jpeg_quality: int        # MJPG quality of the video file (from the quality tag)
    texture_seed: int
    background_seed: int     # one per source: clips of a source share their background
    background_luma: float   # mean grayscale brightness of that background
    background_margin: int   # the background is drawn this much larger on every side (camera drift room)
    meta: tuple              # (body, cam, np, view, quality) tags of the file name

    @property
    def filename(self) -> str:
        return f"{self.source}_{self.class_name}_" + "_".join(self.meta) + f"_{self.clip}.avi"


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Random texture with features about ``cell`` pixels wide, zero mean and unit std."""
    grid = rng.standard_normal((max(2, round(height / cell)) + 2, max(2, round(width / cell)) + 2))
    big = cv2.resize(grid, (width + 2 * round(cell), height + 2 * round(cell)), interpolation=cv2.INTER_CUBIC)
    texture = big[round(cell):round(cell) + height, round(cell):round(cell) + width]
    return (texture - texture.mean()) / (texture.std() + 1e-6)


def _background(seed: int, mean: float, height: int, width: int) -> np.ndarray:
    """A source's background: grey, its luma (H x W float32) a texture around ``mean``."""
    rng = np.random.default_rng(seed)
    size = min(height, width)
    texture = (0.6 * _smooth_noise(rng, height, width, size / 4)
               + 0.3 * _smooth_noise(rng, height, width, size / 12)
               + 0.25 * _smooth_noise(rng, height, width, 2.0))
    texture /= texture.std()
    luma = mean + rng.uniform(15, 28) * texture
    return np.clip(luma, *_BACKGROUND_LUMA).astype(np.float32)


def _ycbcr_to_rgb(luma: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """BT.601 full-range YCbCr (chroma centred on 0) to RGB float; the inverse of OpenCV's gray."""
    red = luma + 1.402 * cr
    green = luma - 0.344136 * cb - 0.714136 * cr
    blue = luma + 1.772 * cb
    return np.stack([red, green, blue], axis=-1)


def render_luma_and_chroma(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """Frames of a clip as luma (T x H x W) and chroma (T x H x W x 2, Cb and Cr), float32.

    The luma does not depend on the clip's hue or saturation, which is what makes the colour
    classes identical in grayscale.
    """
    width, height, steps = spec.width, spec.height, spec.n_frames
    margin = spec.background_margin
    bg_luma = _background(spec.background_seed, spec.background_luma, height + 2 * margin, width + 2 * margin)

    texture_rng = np.random.default_rng(spec.texture_seed)
    texture = 0.7 * _smooth_noise(texture_rng, spec.side, spec.side, 3.0) + 0.5 * _smooth_noise(
        texture_rng, spec.side, spec.side, 1.5)
    square = spec.luma_mean + spec.luma_std * texture / texture.std()
    layer = np.zeros((height, width), np.float32)   # the square at the origin, moved by warpAffine
    alpha = np.zeros((height, width), np.float32)
    layer[: spec.side, : spec.side] = np.clip(square, *_LUMA_LIMITS)
    alpha[: spec.side, : spec.side] = 1.0

    angle = np.deg2rad(spec.hue)
    colour = np.array([spec.chroma * np.cos(angle), spec.chroma * np.sin(angle)], np.float32)
    lumas = np.empty((steps, height, width), np.float32)
    chromas = np.empty((steps, height, width, 2), np.float32)
    for t in range(steps):
        x = spec.start[0] + spec.velocity[0] * t
        y = spec.start[1] + spec.velocity[1] * t
        move = np.float32([[1, 0, x % width], [0, 1, y % height]])
        wrap = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        obj = cv2.warpAffine(layer, move, (width, height), **wrap)
        a = cv2.warpAffine(alpha, move, (width, height), **wrap)
        # The camera looks at a window of the larger background, drifting with camera_velocity
        # (all clips of a source see the same window at t=0).
        view = np.float32([[1, 0, -(margin + spec.camera_velocity[0] * t)],
                           [0, 1, -(margin + spec.camera_velocity[1] * t)]])
        bg = cv2.warpAffine(bg_luma, view, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
        # obj is already "premultiplied": the warp blends the square with the zeros around it.
        lumas[t] = bg * (1 - a) + obj
        chromas[t] = colour * a[..., None]          # the background is grey: all colour is the square's
    return lumas, chromas


def render_clip(spec: ClipSpec) -> np.ndarray:
    """The clip's RGB frames, uint8 T x H x W x 3."""
    lumas, chromas = render_luma_and_chroma(spec)
    rgb = _ycbcr_to_rgb(lumas, chromas[..., 0], chromas[..., 1])
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_video(path, frames_rgb: np.ndarray, fps: int = 25, quality: int = 95) -> None:
    """Write RGB frames to an MJPG ``.avi`` with OpenCV's built-in encoder.

    That encoder ships with every OpenCV build (headless included, no FFmpeg needed to write)
    and gives the same bytes for the same frames, which keeps the dataset reproducible.
    """
    height, width = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write MJPG video {path}")
    try:
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
        for frame in frames_rgb:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


# --------------------------------------------------------------------------------------
# The whole dataset: clips, sources and split files
# --------------------------------------------------------------------------------------
def _options(size_options: dict) -> dict:
    unknown = sorted(set(size_options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise TypeError(f"unknown demo dataset option(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)}")
    options = {**DEFAULT_OPTIONS, **size_options}
    options["frame_size"] = tuple(int(v) for v in options["frame_size"])
    options["frames"] = tuple(int(v) for v in options["frames"])
    width, height = options["frame_size"]
    low, high = options["frames"]
    if min(width, height) < 32:
        raise ValueError(f"frame_size must be at least 32x32 pixels, got {options['frame_size']}")
    if not 2 <= low <= high:
        raise ValueError(f"frames must be a range (low, high) with 2 <= low <= high, got {options['frames']}")
    n_train = options["clips_per_class"] - options["test_per_split"] - options["unused_per_split"]
    if options["test_per_split"] < 1 or options["unused_per_split"] < 0 or n_train < 2:
        raise ValueError("need test_per_split >= 1, unused_per_split >= 0 and at least 2 training clips "
                         f"per class, got {options}")
    return options


def plan_clips(seed: int = 0, **size_options) -> list[ClipSpec]:
    """Specs of all clips, class by class; deterministic for a seed (nothing is rendered).

    There are ``clips_per_class`` sources ("films"), and each holds one clip of every class. As in
    a film where one actor performs every action, the nine clips of a source share everything
    but the two class factors: background, the square's texture, size, brightness, start and
    speed, camera drift, length and JPEG quality. The three motions of one colour differ only in
    direction; the three colours of one motion only in hue and saturation, so in grayscale (where
    optical flow is computed) they are the same clip. A stream can therefore learn nothing about
    the factor it cannot see, not even by memorising training clips: its best answer there is
    "each equally likely", which is what averaging the two streams' scores needs.
    """
    options = _options(size_options)
    width, height = options["frame_size"]
    short = min(width, height)
    margin = int(np.ceil(_CAMERA_SPEED[1] * short * options["frames"][1])) + 2
    specs: list[ClipSpec] = []
    for number in range(options["clips_per_class"]):
        source = f"demosrc{number:02d}"
        rng = np.random.default_rng([seed, 1, number])
        background_seed, background_luma = int(rng.integers(2**31)), float(rng.uniform(85, 150))
        # The square is brighter or darker than the background, by 25-50 grey levels.
        contrast = rng.uniform(25, 50) * rng.choice([-1.0, 1.0])
        if not _SQUARE_LUMA[0] <= background_luma + contrast <= _SQUARE_LUMA[1]:
            contrast = -contrast
        camera = rng.random() < _CAMERA_MOTION_SHARE
        camera_angle = np.deg2rad(rng.uniform(0, 360))
        camera_speed = rng.uniform(*_CAMERA_SPEED) * short if camera else 0.0
        quality = str(rng.choice(list(_JPEG_QUALITY)))
        actor = dict(
            source=source, clip=0, width=width, height=height,
            n_frames=int(rng.integers(options["frames"][0], options["frames"][1] + 1)),
            side=int(round(rng.uniform(*_OBJECT_SIDE) * short)),
            luma_mean=background_luma + contrast, luma_std=float(rng.uniform(14, 26)),
            camera_velocity=(camera_speed * np.cos(camera_angle), camera_speed * np.sin(camera_angle)),
            jpeg_quality=_JPEG_QUALITY[quality], texture_seed=int(rng.integers(2**31)),
            background_seed=background_seed, background_luma=background_luma, background_margin=margin,
            meta=(str(rng.choice(["f", "u", "l", "h"])), "cm" if camera else "nm", "np1",
                  str(rng.choice(["fr", "ba", "le", "ri"])), quality),
        )
        speed = rng.uniform(*_SPEED) * short
        # Where the square is at the middle of every clip of the source. Each motion's clips pass
        # through it at the middle frame: "down" is "up" played backwards (the same frames in the
        # other order), and "sideways" (left or right) goes through it across. So a single frame
        # says nothing about whether the square goes up or down, even to a network that memorised
        # the training clips.
        middle = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
        vertical = -90.0 + rng.uniform(-_DIRECTION_JITTER, _DIRECTION_JITTER)
        directions = {"up": vertical, "down": vertical + 180.0,
                      "sideways": float(rng.choice(MOTIONS["sideways"])) + rng.uniform(-_DIRECTION_JITTER,
                                                                                       _DIRECTION_JITTER)}
        half = (actor["n_frames"] - 1) / 2
        for class_index, (class_name, factors) in enumerate(DEMO_CLASSES.items()):
            clip_rng = np.random.default_rng([seed, 1, number, class_index])
            angle = np.deg2rad(directions[factors["motion"]])
            velocity = (speed * np.cos(angle), speed * np.sin(angle))
            specs.append(ClipSpec(
                class_name=class_name, **actor,
                hue=APPEARANCES[factors["appearance"]] + clip_rng.uniform(-_HUE_JITTER, _HUE_JITTER),
                chroma=clip_rng.uniform(*_CHROMA),
                start=(middle[0] - velocity[0] * half, middle[1] - velocity[1] * half),
                velocity=velocity,
            ))
    specs.sort(key=lambda spec: (list(DEMO_CLASSES).index(spec.class_name), spec.source))
    return specs


def plan_splits(specs: list[ClipSpec], seed: int = 0, **size_options) -> dict[int, dict[str, int]]:
    """``{split: {filename: code}}`` for splits 1-3: whole sources go to test (2), unused (0) or train (1).

    Each split draws ``test_per_split`` test sources and ``unused_per_split`` unused ones, so
    every class gets exactly that many test and unused clips, and no source (background) is
    seen on both sides; the three splits are different draws, as in HMDB51.
    """
    options = _options(size_options)
    n_test, n_unused = options["test_per_split"], options["unused_per_split"]
    sources = sorted({spec.source for spec in specs})
    splits: dict[int, dict[str, int]] = {}
    drawn: list[tuple] = []
    for split in (1, 2, 3):
        rng = np.random.default_rng([seed, 2, split])
        for _ in range(1000):   # a draw that differs from the earlier splits (when there is one)
            order = [sources[i] for i in rng.permutation(len(sources))]
            roles = (tuple(sorted(order[:n_test])), tuple(sorted(order[n_test:n_test + n_unused])))
            if roles not in drawn:
                break
        drawn.append(roles)
        code = {**{s: 1 for s in sources}, **{s: 2 for s in roles[0]}, **{s: 0 for s in roles[1]}}
        splits[split] = {spec.filename: code[spec.source] for spec in specs}
    return splits


def _split_file_text(codes: dict[str, int], filenames: list[str]) -> str:
    # HMDB51's own format: one "<video>.avi <code> " line per clip, with a trailing space.
    return "".join(f"{name} {codes[name]} \n" for name in filenames)


def _manifest(seed: int, options: dict) -> dict:
    return {"generator": "utils.demo_data", "version": GENERATOR_VERSION, "seed": int(seed),
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(options.items())}}


def make_demo_dataset(root, seed: int = 0, overwrite: bool = False, progress: bool = False,
                      **size_options) -> dict:
    """Write the demo dataset to ``root`` (``videos/`` and ``splits/`` in the HMDB51 layout).

    The dataset is built in a temporary folder next to ``root`` and renamed into place, so
    ``root`` is never half-written. If ``root`` already holds this very dataset (same seed and
    options) nothing is done; a different dataset or other content is an error unless
    ``overwrite=True`` (which replaces the whole folder, extracted frames included).
    ``size_options`` override :data:`DEFAULT_OPTIONS`. Returns a summary dict.
    """
    options = _options(size_options)
    root = Path(root).expanduser().resolve()
    manifest = _manifest(seed, options)
    if root.exists() and any(root.iterdir()):
        existing = _read_manifest(root)
        if existing == manifest and (root / "splits").is_dir() and not overwrite:
            return {**_summary(root, plan_clips(seed, **options)), "created": False, "seconds": 0.0}
        if not overwrite:
            what = "a different demo dataset" if existing else "other files"
            raise FileExistsError(f"{root} already holds {what}; pass overwrite=True (CLI: --overwrite) "
                                  "to replace it, or choose another folder")
    started = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        specs = plan_clips(seed, **options)
        splits = plan_splits(specs, seed, **options)
        items = specs
        if progress:
            from tqdm.auto import tqdm
            items = tqdm(specs, desc="demo clips", unit="clip")
        for spec in items:
            folder = build / "videos" / spec.class_name
            folder.mkdir(parents=True, exist_ok=True)
            write_video(folder / spec.filename, render_clip(spec), fps=options["fps"], quality=spec.jpeg_quality)
        (build / "splits").mkdir()
        for class_name in DEMO_CLASSES:
            filenames = sorted(s.filename for s in specs if s.class_name == class_name)
            for split, codes in splits.items():
                path = build / "splits" / f"{class_name}_test_split{split}.txt"
                path.write_text(_split_file_text(codes, filenames), encoding="utf-8")
        (build / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(build, root)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return {**_summary(root, specs), "created": True, "seconds": round(time.perf_counter() - started, 2)}


def _move_into_place(build: Path, root: Path) -> None:
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        root.rename(old)
    build.rename(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _summary(root: Path, specs: list[ClipSpec]) -> dict:
    frames = [s.n_frames for s in specs]
    return {
        "root": str(root),
        "classes": len(DEMO_CLASSES),
        "videos": len(specs),
        "sources": len({s.source for s in specs}),
        "frame_size": (specs[0].width, specs[0].height),
        "frames": int(sum(frames)),
        "flow_pairs": int(sum(frames) - len(frames)),
        "frames_per_clip": (min(frames), max(frames)),
    }


def ensure_demo_dataset(cfg: Config) -> Path:
    """Make the demo dataset at ``cfg.data_root`` if its ``splits/`` folder is missing; return the root.

    The demo dataset is always made with seed 0 (``cfg.seed`` seeds training, not the data).
    A demo dataset made by an *older version* of this generator is replaced (its extracted frames
    too), with a message; one made with other settings by this version is kept, with a warning.
    """
    root = cfg.data_root
    if (root / "splits").is_dir():
        existing = _read_manifest(root)
        ours = bool(existing) and existing.get("generator") == "utils.demo_data"
        if ours and int(existing.get("version", 0)) < GENERATOR_VERSION:
            print(f"{root} holds the demo dataset of generator version {existing.get('version')}; making "
                  f"version {GENERATOR_VERSION} in its place (its extracted frames are removed too)")
            make_demo_dataset(root, seed=0, overwrite=True)
        elif ours and existing != _manifest(0, _options({})):
            warnings.warn(f"{root} holds a demo dataset made with other settings than the current "
                          f"defaults ({existing}); to remake it (extracted frames included), run "
                          f"`python -m utils.demo_data --root {root} --overwrite`", stacklevel=2)
        return root
    if root == dataset_root("hmdb51"):
        raise FileNotFoundError(f"{root / 'splits'} not found: HMDB51 is not downloaded "
                                "(run `python -m utils.download`, or use dataset='demo')")
    make_demo_dataset(root, seed=0)
    return root


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Config(dataset="demo").data_root),
                        help="output folder (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, different dataset")
    args = parser.parse_args(argv)
    try:
        summary = make_demo_dataset(args.root, seed=args.seed, overwrite=args.overwrite, progress=True)
    except FileExistsError as error:
        parser.exit(1, f"error: {error}\n")
    verb = "made" if summary["created"] else "already there:"
    print(f"demo dataset {verb} {summary['root']}: {summary['classes']} classes, {summary['videos']} videos, "
          f"{summary['sources']} sources, {summary['frames']} frames of "
          f"{summary['frame_size'][0]}x{summary['frame_size'][1]} ({summary['seconds']} s)")
    return summary


if __name__ == "__main__":
    main()
