"""Optical flow: the methods, how flow is stored as JPEG, and how to look at it.

Optical flow is the apparent motion of every pixel between two frames: a 2-vector ``(u, v)``
in pixels per frame, ``u`` to the right and ``v`` down. The temporal stream of a two-stream
network sees stacks of flow instead of colour, so it has to learn *motion*, not appearance.

Methods
-------
Every method is reachable in two ways:

* per pair:  ``compute_flow(prev_gray, next_gray, method) -> float32[H, W, 2]``
* per video: ``make_video_flow(method)`` returns a callable
  ``uint8[T, H, W] (grayscale frames) -> float32[T-1, H, W, 2]`` (flow ``i`` = frame ``i -> i+1``).

Methods live in :data:`FLOW_METHODS`, a dict ``name -> FlowMethod`` whose ``factory(**options)``
builds the per-video callable. Add one with :func:`register_flow_method`. There are two kinds:

* **per process** (``batched=False``): OpenCV methods computing one pair at a time on the CPU.
  Extraction runs one worker process per core, each on its own video, one OpenCV thread each.
* **in-process batched** (``batched=True``): methods that compute many pairs at once on an
  accelerator (e.g. ``"tvl1-keras"`` from ``utils/tvl1_keras.py``). Extraction runs them in
  the main process, over frame pairs of several videos at once, while ``workers`` processes
  decode and write (``utils/extract_batched.py``).

Built in: ``"tvl1"`` (Dual TV-L1, Zach et al. 2007, from opencv-contrib, OpenCV defaults; the
flow used by the two-stream paper family, accurate but slow), ``"farneback"`` (polynomial
expansion, OpenCV tutorial settings), ``"dis"`` / ``"dis-medium"`` and ``"dis-fast"`` (Dense
Inverse Search presets; fast and, at the medium preset, close to TV-L1 on benchmarks).

Storage
-------
Flow is clipped to +-``FLOW_BOUND`` (20 px) and mapped linearly to 0..255
(``round(255 * (v + 20) / 40)``), one grayscale JPEG per component (``flow_x_*.jpg``,
``flow_y_*.jpg``). Almost all motion in 320x240 video is well under 20 px per frame, the step
is 0.16 px, and JPEG makes a whole dataset of flow fit on a laptop disk.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from utils.rawframes import flow_files   # flow_x_/flow_y_, or mmaction2's x_/y_ names

FLOW_BOUND = 20.0        # |flow| is clipped to this many pixels before quantisation
UNKNOWN_FLOW = 1e9       # Middlebury .flo: components above this mean "no ground truth here"
FLO_MAGIC = 202021.25    # first float32 of every Middlebury .flo file

VideoFlow = Callable[[np.ndarray], np.ndarray]   # uint8[T, H, W] -> float32[T-1, H, W, 2]

OPENCV_CONTRIB_FIX = (
    "pip uninstall -y opencv-python opencv-python-headless opencv-contrib-python "
    "opencv-contrib-python-headless && pip install opencv-contrib-python-headless==5.0.0.93"
)


class FlowMethodUnavailable(RuntimeError):
    """A flow method cannot run in this environment (missing package or module)."""


# --- storage: quantisation ---------------------------------------------------------------------
def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Flow in pixels -> uint8: clip to +-``bound``, then ``round(255 * (v + bound) / (2 * bound))``.

    0 px maps to 128; -bound to 0; +bound to 255. The step is ``2 * bound / 255`` px.
    """
    flow = np.clip(np.asarray(flow, dtype=np.float32), -bound, bound)
    return np.rint((flow + bound) * (255.0 / (2.0 * bound))).astype(np.uint8)


def dequantize_flow(quantized: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """uint8 -> flow in pixels (float32): the inverse of :func:`quantize_flow`."""
    return np.asarray(quantized, dtype=np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def read_flow_jpegs(video_dir: str | Path, index: int, bound: float = FLOW_BOUND) -> np.ndarray:
    """Stored flow ``index`` (1-based) of an extracted video as float32[H, W, 2] pixels."""
    components = []
    for path in flow_files(video_dir, index):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FileNotFoundError(f"cannot read flow image {path}")
        components.append(image)
    return dequantize_flow(np.stack(components, axis=-1), bound)


# --- looking at flow ---------------------------------------------------------------------------
def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-code flow[H, W, 2] as uint8 RGB: hue = direction, brightness = speed.

    Speeds are scaled by ``max_magnitude`` (default: the largest speed in this flow), so pass
    the same value to compare several flows. Still pixels are black.
    """
    flow = np.asarray(flow, dtype=np.float32)
    magnitude, angle = cv2.cartToPolar(flow[..., 0], flow[..., 1], angleInDegrees=True)
    if max_magnitude is None:
        max_magnitude = float(magnitude.max())
    hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (angle / 2).astype(np.uint8)                        # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / max(max_magnitude, 1e-6) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def flow_colour_key(size: int = 65) -> np.ndarray:
    """The key of :func:`flow_to_color`: a disc (uint8 RGB, white outside) whose every pixel has the
    colour of flow pointing from the centre to it; the rim is the brightest speed (``max_magnitude``)."""
    ys, xs = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    key = flow_to_color(np.stack([xs, ys], axis=-1), max_magnitude=1.0)
    key[np.hypot(xs, ys) >= 1] = 255
    return key


def draw_flow_colour_key(ax, max_magnitude: float | None = None, fontsize: float = 8) -> None:
    """Draw :func:`flow_colour_key` into matplotlib axes ``ax``, with the speed of its rim in px per frame."""
    ax.imshow(flow_colour_key())
    rim = "" if max_magnitude is None else f"\nrim = {max_magnitude:.3g} px/frame"
    ax.set_title(f"colour key{rim}", fontsize=fontsize)
    ax.axis("off")


# --- ground truth and error --------------------------------------------------------------------
def read_flo(path: str | Path) -> np.ndarray:
    """Read a Middlebury ``.flo`` file as float32[H, W, 2] (unknown pixels keep values > 1e9)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 12 or np.frombuffer(data, np.float32, 1)[0] != np.float32(FLO_MAGIC):
        raise ValueError(f"{path} is not a Middlebury .flo file (magic number {FLO_MAGIC} missing)")
    width, height = (int(n) for n in np.frombuffer(data, np.int32, 2, offset=4))
    expected = 12 + width * height * 2 * 4
    if width <= 0 or height <= 0 or len(data) != expected:
        raise ValueError(f"{path}: header says {width}x{height}, so {expected} bytes, but the file has {len(data)}")
    return np.frombuffer(data, np.float32, offset=12).reshape(height, width, 2).copy()


def endpoint_error(flow: np.ndarray, ground_truth: np.ndarray) -> float:
    """Average end-point error (px) over the pixels where the ground truth is known."""
    known = np.all(np.abs(ground_truth) < UNKNOWN_FLOW, axis=-1) & np.all(np.isfinite(ground_truth), axis=-1)
    error = np.linalg.norm(np.asarray(flow, np.float32) - ground_truth, axis=-1)
    return float(error[known].mean())


# --- the method registry -----------------------------------------------------------------------
@dataclass(frozen=True)
class FlowMethod:
    """A named flow method. ``factory(**options)`` returns a per-video callable (:data:`VideoFlow`)."""

    name: str
    factory: Callable[..., VideoFlow]
    batched: bool = False                       # True: in-process batched (flow in the main process)
    check: Callable[[], None] | None = None     # raises FlowMethodUnavailable when it cannot run
    description: str = ""
    chunk_frames: int = 64                      # frames per call during extraction (bounds memory)

    @property
    def execution(self) -> str:
        return "in-process batched" if self.batched else "per process"


FLOW_METHODS: dict[str, FlowMethod] = {}


def register_flow_method(name: str, factory: Callable[..., VideoFlow], *, batched: bool = False,
                         check: Callable[[], None] | None = None, description: str = "",
                         chunk_frames: int = 64) -> FlowMethod:
    """Add (or replace) a flow method; returns its :class:`FlowMethod`.

    ``factory(**options)`` must return a callable ``uint8[T, H, W] -> float32[T-1, H, W, 2]``
    (it may carry a ``.device`` string, which extraction logs). ``batched=True`` marks methods
    that compute flow in the main process (``utils.extract_batched``); ``chunk_frames`` is how
    many frames extraction hands over per call (batched methods want whole videos).
    """
    FLOW_METHODS[name] = FlowMethod(name, factory, batched, check, description, chunk_frames)
    return FLOW_METHODS[name]


def get_flow_method(name: str) -> FlowMethod:
    """The registered method ``name``; a clear error lists the known ones."""
    try:
        return FLOW_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown flow method {name!r}; known: {sorted(FLOW_METHODS)}") from None


def check_flow_method(name: str) -> FlowMethod:
    """Fail early, with an actionable message, if method ``name`` cannot run here."""
    method = get_flow_method(name)
    if method.check is not None:
        method.check()
    return method


def make_video_flow(method: str = "tvl1", **options) -> VideoFlow:
    """Per-video flow function: ``uint8[T, H, W]`` grayscale frames -> ``float32[T-1, H, W, 2]``."""
    return check_flow_method(method).factory(**options)


def video_flow(gray_frames: np.ndarray, method: str = "tvl1", **options) -> np.ndarray:
    """Flow between consecutive frames of one video (see :func:`make_video_flow`)."""
    return make_video_flow(method, **options)(gray_frames)


def compute_flow(prev_gray: np.ndarray, next_gray: np.ndarray, method: str = "tvl1", **options) -> np.ndarray:
    """Flow from ``prev_gray`` to ``next_gray`` (uint8[H, W]) as float32[H, W, 2] pixels."""
    return video_flow(np.stack([prev_gray, next_gray]), method, **options)[0]


def as_gray_video(frames: np.ndarray) -> np.ndarray:
    """Check a video's grayscale frames: uint8[T, H, W] with T >= 2."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"expected grayscale frames uint8[T>=2, H, W], got {frames.dtype}{list(frames.shape)}")
    return frames


def pairwise(pair_flow: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> VideoFlow:
    """Turn a per-pair function ``(prev, next) -> float32[H, W, 2]`` into a per-video one."""
    def flow_of_video(gray_frames: np.ndarray) -> np.ndarray:
        gray_frames = as_gray_video(gray_frames)
        flows = np.empty((len(gray_frames) - 1, *gray_frames.shape[1:], 2), np.float32)
        for i in range(len(flows)):
            flows[i] = pair_flow(gray_frames[i], gray_frames[i + 1])
        return flows
    return flow_of_video


# --- OpenCV methods (per process) --------------------------------------------------------------
def require_opencv_contrib() -> None:
    """Raise :class:`FlowMethodUnavailable` unless ``cv2.optflow.DualTVL1OpticalFlow_create`` exists."""
    if not hasattr(getattr(cv2, "optflow", None), "DualTVL1OpticalFlow_create"):
        raise FlowMethodUnavailable(
            f"TV-L1 optical flow needs OpenCV's contrib modules, but cv2.optflow.DualTVL1OpticalFlow_create "
            f"is missing (OpenCV {cv2.__version__} from {getattr(cv2, '__file__', '?')}). This usually means "
            f"plain opencv-python was installed over opencv-contrib-python (both provide the 'cv2' module). "
            f"Fix: {OPENCV_CONTRIB_FIX} . Or choose a method that plain OpenCV has: 'farneback' or 'dis'."
        )


def _opencv_video_flow(algorithm) -> VideoFlow:
    """Per-video callable for an OpenCV ``DenseOpticalFlow`` object (its ``calc(prev, next, None)``)."""
    return pairwise(lambda prev, nxt: algorithm.calc(prev, nxt, None))


def _tvl1(**params) -> VideoFlow:
    require_opencv_contrib()
    return _opencv_video_flow(cv2.optflow.DualTVL1OpticalFlow_create(**params))


FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def _farneback(**params) -> VideoFlow:
    params = {**FARNEBACK_PARAMS, **params}
    return pairwise(lambda prev, nxt: cv2.calcOpticalFlowFarneback(prev, nxt, None, **params))


def _dis(preset: str = "medium") -> VideoFlow:
    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    if preset not in presets:
        raise ValueError(f"unknown DIS preset {preset!r}; known: {sorted(presets)}")
    return _opencv_video_flow(cv2.DISOpticalFlow_create(presets[preset]))


register_flow_method("tvl1", _tvl1, check=require_opencv_contrib,
                     description="Dual TV-L1 (opencv-contrib, OpenCV defaults); accurate, ~1 s per 320x240 pair")
register_flow_method("farneback", _farneback,
                     description="Farneback polynomial expansion (OpenCV tutorial settings); fast, blurry edges")
register_flow_method("dis", lambda: _dis("medium"), description="DIS optical flow, medium preset (same as 'dis-medium')")
register_flow_method("dis-medium", lambda: _dis("medium"), description="DIS optical flow, medium preset")
register_flow_method("dis-fast", lambda: _dis("fast"), description="DIS optical flow, fast preset")
register_flow_method("dis-ultrafast", lambda: _dis("ultrafast"),
                     description="DIS optical flow, ultrafast preset; fastest, least accurate")


# --- accelerator methods (in-process batched), imported only when used --------------------------
def _lazy_module_method(module: str, function: str) -> tuple[Callable[..., VideoFlow], Callable[[], None]]:
    """A factory and a check for a method that lives in another module, imported on first use."""
    def check() -> None:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise FlowMethodUnavailable(f"flow method needs module {module!r}, which cannot be imported: {error}") from error

    def factory(**options) -> VideoFlow:
        check()
        return getattr(importlib.import_module(module), function)(**options)

    return factory, check


_factory, _check = _lazy_module_method("utils.tvl1_keras", "make_video_flow")
register_flow_method("tvl1-keras", _factory, batched=True, check=_check, chunk_frames=2048,
                     description="batched TV-L1 in Keras ops (utils/tvl1_keras.py); fast on a GPU")
del _factory, _check
