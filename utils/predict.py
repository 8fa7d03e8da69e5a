"""What is happening in this video? Both trained streams of a run on any clip, and their fusion.

    python -m utils.predict VIDEO                        # the models of run demo_split1
    python -m utils.predict VIDEO --run hmdb51_split1 --out picture.png
    python -m utils.predict VIDEO --flow-method dis      # faster flow than the run's (TV-L1 by default)

The clip goes through the pipeline's own steps, with the pipeline's functions:

1. frames and optical flow by :func:`utils.extract_job.extract_video`, with the run's flow method,
   frame size and JPEG storage, into a temporary rawframes folder that is deleted at the end
   (the network sees exactly what it saw in training: the same resizing, clipping and quantisation);
2. each stream's video score by the whole-video protocol of :func:`utils.evaluation.score_videos`,
   the same inputs as the test videos of notebook 05, from the checkpoints notebook 05 tests
   (``models/<run>/{spatial,temporal}/best.keras``, or ``refit/last.keras`` where a final fit is finished);
3. their fusion by :func:`utils.evaluation.average_fusion` (the paper's average).

It prints the top-5 classes of each stream and of the fusion and saves a picture (a few frames,
their colour-coded flow with a colour key, and the three bar charts), by default
``report/<run>/predictions/<clip>.png``, and beside it ``<clip>.gif``: the clip (up to 48 frames from
its middle) playing next to its colour-coded flow.

The flow method is the run's own (its extraction settings), or ``--flow-method``; where the run's
frames were made elsewhere (method unknown), TV-L1, the default; the output says which and why.
The clip's path is checked, and a clip too short for the temporal stream refused, before any
network is loaded (Keras and its backend are imported only then).

A run's class names and extraction settings are kept in ``models/<run>/run_info.json``
(:func:`save_run_info`), so predicting needs no dataset folder. When that file is missing they
are read once from the dataset the run was trained on (``data/<name>`` for a run
``<name>_split<k>``, or ``--dataset PATH``) and recorded there.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from utils import config
from utils.config import BUILTIN_DATASETS, Config

if TYPE_CHECKING:   # imported where needed: `python -m utils.predict` checks its arguments before Keras loads
    from utils import evaluation as ev

RUN_INFO_FILE = "run_info.json"
CHECKPOINT = "best"
TOP = 5
N_PICTURES = 4        # frames (and flows) shown in the picture
ANIMATION_PAIRS = 48  # consecutive frames (with the flow after each) in the animation, from the clip's middle
DEFAULT_FLOW_METHOD = "tvl1"   # where the run's own method is unknown
DEMO_NOTE = ("the models of run {run} were trained on the synthetic demo dataset: {n} classes of "
             "coloured squares moving up, down or sideways ({classes}), not on real actions.")


# ----------------------------------------------------------------------------------------
# The run: checkpoints, class names, extraction settings
# ----------------------------------------------------------------------------------------
def run_folder(run: str) -> Path:
    """``models/<run>/``."""
    return Path(config.MODELS_DIR) / run


def checkpoint_paths(run: str) -> dict[str, Path]:
    """``{"spatial": models/<run>/spatial/best.keras, "temporal": ...}``, or a stream's final fit on all
    training clips (``refit/last.keras``) where the run has a finished one, as notebooks 04 and 05 test."""
    from utils.training import LAST_FILE, REFIT_DIR, refit_problem

    folders = {stream: run_folder(run) / stream for stream in ("spatial", "temporal")}
    return {stream: folder / REFIT_DIR / LAST_FILE if refit_problem(folder) is None
            else folder / f"{CHECKPOINT}.keras" for stream, folder in folders.items()}


def runs_with_checkpoints() -> list[str]:
    """Names of the runs under ``models/`` that have both streams' checkpoints."""
    models_dir = Path(config.MODELS_DIR)
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir()
                  if p.is_dir() and all(c.is_file() for c in checkpoint_paths(p.name).values()))


def check_checkpoints(run: str) -> dict[str, Path]:
    """The run's two checkpoints, or a FileNotFoundError that names the missing ones and how to make them."""
    paths = checkpoint_paths(run)
    missing = [p for p in paths.values() if not p.is_file()]
    if missing:
        others = [r for r in runs_with_checkpoints() if r != run]
        dataset = _parse_run(run)[0] or "demo"
        raise FileNotFoundError(
            f"run {run!r} has no trained model(s): missing {', '.join(str(p) for p in missing)}. "
            f"Train them with notebooks 02 (spatial) and 03 (temporal), e.g. "
            f"`python -m utils.run --dataset {dataset}`"
            + (f"; or pick a run that has both: --run {' / '.join(others)}" if others else ""))
    return paths


def _parse_run(run: str) -> tuple[str | None, int | None]:
    match = re.fullmatch(r"(?P<name>.+)_split(?P<split>[123])", run)
    return (match["name"], int(match["split"])) if match else (None, None)


def save_run_info(cfg: Config, index: pd.DataFrame | None = None) -> Path:
    """Record what predicting with the run ``cfg.run_name`` needs: ``models/<run>/run_info.json``.

    The class names in label order, the dataset, and how its frames were extracted
    (``rawframes/extraction_settings.json`` and the size of an extracted frame), so that a new
    clip gets the same flow method and frame size. Call it where the run's index is at hand
    (notebooks 02/03); :func:`load_run_info` calls it when the file is missing.
    """
    import cv2

    from utils import evaluation as ev
    from utils.rawframes import frame_file, read_extraction_settings

    if index is None:
        from utils.dataset import build_index
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # videos missing on disk do not matter here
            index = build_index(cfg)
    extraction = read_extraction_settings(cfg.frames_dir)    # frames made elsewhere: {"origin": ..., "method": None}
    frame_size = None
    extracted = index[index["n_frames"] > 0]
    if len(extracted):
        image = cv2.imread(str(frame_file(extracted["frames_path"].iloc[0], 1)))
        if image is not None:
            frame_size = [int(image.shape[1]), int(image.shape[0])]
    info = {"run": cfg.run_name, "dataset": cfg.dataset_name, "split": cfg.split,
            "class_names": ev.index_class_names(index), "extraction": extraction, "frame_size": frame_size}
    path = run_folder(cfg.run_name) / RUN_INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_run_info(run: str, dataset: str | None = None) -> dict:
    """The run's ``run_info.json``; if missing, made from its dataset (``dataset``, else ``data/<name>``)."""
    path = run_folder(run) / RUN_INFO_FILE
    damage = None
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            info, damage = None, f"not JSON ({error})"
        if isinstance(info, dict) and isinstance(info.get("class_names"), list) and info["class_names"]:
            return info
        damage = damage or "no list of class names in it"
    name, split = _parse_run(run)
    if dataset is None and name is not None:
        if name in BUILTIN_DATASETS or (Path(config.DATA_DIR) / name).is_dir():
            dataset = name if name in BUILTIN_DATASETS else str(Path(config.DATA_DIR) / name)
    cfg = Config(dataset=dataset, split=split or 1) if dataset is not None else None
    if cfg is None or not Path(cfg.data_root).is_dir():
        if damage:
            raise ValueError(f"{path}: not a run's record ({damage}: a damaged file?), and the dataset the run was "
                             f"trained on is not at hand to make it again; pass --dataset PATH (the dataset "
                             f"folder), or call utils.predict.save_run_info(cfg) where the run was trained")
        raise FileNotFoundError(
            f"cannot tell the classes of run {run!r}: {path} is missing and the dataset it was trained "
            f"on is not at hand; pass --dataset PATH (the dataset folder), or call "
            f"utils.predict.save_run_info(cfg) where the run was trained")
    if cfg.run_name != run:
        raise ValueError(f"dataset {cfg.data_root} with split {cfg.split} makes run {cfg.run_name!r}, not {run!r}")
    if damage:
        print(f"note: {path}: not a run's record ({damage}); made again from {cfg.data_root}", file=sys.stderr)
    save_run_info(cfg)
    return json.loads(path.read_text())


def clip_settings(info: dict, flow_method: str | None = None, max_frames: int | None = None):
    """:class:`utils.extract_job.ExtractionSettings` for a new clip: the run's extraction, same frame size.

    Frames are resized as the training frames were (``size`` / ``short_side``), or, if those were
    stored at their native size, to the short side of the training frames.
    """
    from utils.extract_job import ExtractionSettings

    extraction = dict(info.get("extraction") or {})
    method = flow_method or extraction.get("method") or DEFAULT_FLOW_METHOD
    size = tuple(extraction["size"]) if extraction.get("size") else None
    short_side = extraction.get("short_side")
    if size is None and short_side is None and info.get("frame_size"):
        short_side = int(min(info["frame_size"]))
    options = (extraction.get("method_options") or {}) if method == extraction.get("method") else {}
    known = {k: extraction[k] for k in ("jpeg_quality", "flow_bound", "fps") if extraction.get(k) is not None}
    return ExtractionSettings(method=method, size=size, short_side=short_side, max_frames=max_frames,
                              method_options=options, **known)


def flow_method_reason(info: dict, flow_method: str | None = None) -> str:
    """Why the clip's flow is computed with the method :func:`clip_settings` picks, in words."""
    extraction = info.get("extraction") or {}
    trained, run = extraction.get("method"), info.get("run", "the run")
    if flow_method:
        return f"{flow_method!r}, as asked (--flow-method)"
    if trained:
        return f"{trained!r}, the method the frames of run {run} were extracted with (its run_info.json)"
    why = (f"the frames of run {run} were {extraction['origin']}" if extraction.get("origin")
           else f"run {run} records no extraction settings")
    return (f"{DEFAULT_FLOW_METHOD!r}, the default (the paper's TV-L1), because {why}; if they were made with "
            "another method, pass it with --flow-method")


# ----------------------------------------------------------------------------------------
# Predicting
# ----------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """The scores of one clip and what the picture shows."""

    video: Path
    run: str
    class_names: list[str]
    scores: dict[str, ev.Scores]          # "spatial", "temporal", "fusion": one row each
    n_frames: int
    n_flows: int
    native_size: tuple[int, int]          # (width, height) of the video
    stored_size: tuple[int, int]          # (width, height) the frames were extracted at
    flow_method: str
    seconds: dict[str, float]
    frames: list[np.ndarray] = field(default_factory=list)   # RGB uint8, N_PICTURES of them
    flows: list[np.ndarray] = field(default_factory=list)    # float32 [H, W, 2] px, the flow after each frame
    picture_positions: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    animation: bytes | None = None       # GIF: the clip beside its colour-coded flow (utils.plots.clip_animation)
    flow_reason: str = ""                 # which flow method, and why (see flow_method_reason)

    def top(self, name: str, k: int = TOP) -> list[tuple[str, float]]:
        """The ``k`` best classes of ``"spatial"``, ``"temporal"`` or ``"fusion"`` with their probabilities."""
        probs = self.scores[name].scores[0]
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]


def _input_geometry(model) -> tuple[int, int]:
    """(image side, stack length) from a stream model's input shape ``(None, S, S, C)``."""
    _, side, _, channels = model.input_shape
    return int(side), int(channels) // 2


def predict_video(video, run: str = "demo_split1", *, dataset: str | None = None,
                  flow_method: str | None = None, max_frames: int | None = None,
                  batch_size: int = 32, progress: bool = False) -> Prediction:
    """Both streams of ``run`` and their average on one clip (whole-video protocol); see the module docstring."""
    video = Path(video)
    if not video.is_file():      # before anything heavy is imported
        raise FileNotFoundError(f"no video {video}" + (" (a folder)" if video.is_dir() else ""))
    from utils import evaluation as ev
    from utils import flow as flow_lib
    from utils.dataset import video_metadata
    from utils.extract_job import VideoReadError, check_name, extract_video
    from utils.rawframes import count_frames

    try:
        check_name(video)     # before OpenCV opens it: VideoCapture crashes the process on such a name
    except VideoReadError as error:
        raise ValueError(f"{os.fsencode(video)!r}: {error}") from None
    paths = check_checkpoints(run)
    info = load_run_info(run, dataset)
    classes = list(info["class_names"])
    settings = clip_settings(info, flow_method, max_frames)
    temporal_shape = ev.checkpoint_input_shape(paths["temporal"])   # read from the file, no model built
    needed = int(temporal_shape[-1]) // 2 if temporal_shape and temporal_shape[-1] else None
    meta = video_metadata(video)
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        folder = Path(tmp) / "rawframes" / video.stem
        if progress:
            print(f"{video.name}: extracting frames and {settings.method} optical flow "
                  f"({meta['frames']} frames in the header)", flush=True)
        started = time.perf_counter()
        try:
            extract_video(video, folder, settings=settings)
        except VideoReadError as error:
            raise ValueError(f"cannot use {video}: {error}") from error
        seconds["extract"] = time.perf_counter() - started
        n_frames, n_flows = count_frames(folder)
        if needed is not None and n_flows < needed:   # before either stream runs
            raise ValueError(f"{video} has {n_frames} decodable frames; the temporal stream of run {run!r} needs "
                             f"at least {needed + 1} (stacks of {needed} flows): give a longer clip")
        from utils import generators, plots    # Keras and its backend from here on
        rows = pd.DataFrame({"frames_path": [folder], "n_frames": [n_frames], "n_flows": [n_flows]})
        scores = {}
        for stream in ev.STREAMS:
            model = ev.load_stream_model(paths[stream])
            if int(model.output_shape[-1]) != len(classes):
                raise ValueError(f"{paths[stream]} predicts {model.output_shape[-1]} classes but run {run!r} "
                                 f"has {len(classes)} ({run_folder(run) / RUN_INFO_FILE})")
            image_size, stack_length = _input_geometry(model)
            if stream == "temporal" and n_flows < stack_length:
                raise ValueError(f"{video} has {n_frames} decodable frames; the temporal stream needs at "
                                 f"least {stack_length + 1} (stacks of {stack_length} flows)")
            started = time.perf_counter()
            probs, n_inputs = ev.score_videos(model, rows, stream, "whole_video", n_classes=len(classes),
                                              image_size=image_size, stack_length=stack_length,
                                              **ev.whole_video_settings(str(info.get("dataset"))),
                                              batch_size=batch_size, progress=progress)
            seconds[stream] = time.perf_counter() - started
            scores[stream] = ev.Scores([video.stem], [-1], probs, classes, n_inputs,
                                       {"checkpoint": str(paths[stream])})
        scores["fusion"] = ev.average_fusion(scores["spatial"], scores["temporal"])
        positions = [int(p) for p in generators.evenly_spaced(n_flows, min(N_PICTURES, n_flows))]
        frames = [generators.read_frame(folder, i) for i in positions]
        flows = [flow_lib.read_flow_jpegs(folder, i, settings.flow_bound) for i in positions]
        animation = plots.rawframes_animation(folder, max_pairs=ANIMATION_PAIRS)
    prediction = Prediction(video, run, classes, scores, n_frames, n_flows,
                            (meta["width"], meta["height"]), (frames[0].shape[1], frames[0].shape[0]),
                            settings.method, seconds, frames, flows, positions, animation=animation,
                            flow_reason=flow_method_reason(info, flow_method))
    prediction.notes = _notes(prediction, info)
    return prediction


def _notes(prediction: Prediction, info: dict) -> list[str]:
    """What the reader of the answer must know: demo models on a real clip, another flow method."""
    notes = []
    if info.get("dataset") == "demo":
        note = DEMO_NOTE.format(run=prediction.run, n=len(prediction.class_names),
                                classes=", ".join(prediction.class_names))
        stem = prediction.video.stem
        demo_like = (any(f"_{c}_" in stem for c in prediction.class_names)
                     and list(prediction.native_size) == list(info.get("frame_size") or []))
        if demo_like:
            notes.append(note + " This clip looks like a demo clip.")
        else:
            notes.append("WARNING: " + note + " This clip is not a demo clip, so the answer below is "
                         "meaningless; for real clips use models trained on HMDB51 or UCF101 "
                         "(python -m utils.run --dataset hmdb51, then --run hmdb51_split1).")
    if prediction.flow_reason:
        notes.append(f"optical flow: {prediction.flow_reason}.")
    trained_method = (info.get("extraction") or {}).get("method")
    if trained_method and trained_method != prediction.flow_method:
        notes.append(f"flow computed with {prediction.flow_method!r}; the temporal stream was trained on "
                     f"{trained_method!r} flow, so its scores may be off.")
    folder_class = prediction.video.parent.name
    if folder_class in prediction.class_names:
        notes.append(f"the clip's folder names the class {folder_class!r}.")
    return notes


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------
STREAM_TITLES = {"spatial": "spatial stream (RGB frames)", "temporal": "temporal stream (optical flow)",
                 "fusion": "fusion (average of the two)"}


def format_prediction(prediction: Prediction, k: int = TOP) -> str:
    """The printed answer: the clip, the notes, and the top-``k`` classes of each stream and the fusion."""
    p = prediction
    lines = [f"{p.video}: {p.n_frames} frames ({p.native_size[0]}x{p.native_size[1]}, extracted at "
             f"{p.stored_size[0]}x{p.stored_size[1]}), {p.n_flows} flows ({p.flow_method}), "
             f"{p.seconds['extract']:.1f} s",
             f"run {p.run}: {len(p.class_names)} classes, whole-video protocol"]
    lines += [f"note: {note}" if not note.startswith("WARNING") else note for note in p.notes]
    for name in ("spatial", "temporal", "fusion"):
        inputs = int(p.scores[name].n_inputs[0])
        lines.append(f"{STREAM_TITLES[name]}, {inputs} inputs:")
        width = max(len(c) for c, _ in p.top(name, k))
        lines += [f"  {rank}. {c:<{width}}  {100 * prob:5.1f} %" for rank, (c, prob) in enumerate(p.top(name, k), 1)]
    return "\n".join(lines)


def colour_key(size: int = 65) -> np.ndarray:
    """The flow colour of every direction and speed (flow from the centre to each pixel), white outside."""
    from utils.flow import flow_to_color

    ys, xs = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    key = flow_to_color(np.stack([xs, ys], axis=-1), max_magnitude=1.0)
    key[np.hypot(xs, ys) > 1] = 255
    return key


def prediction_figure(prediction: Prediction, k: int = TOP):
    """Frames and their colour-coded flow (with a colour key) beside the top-``k`` bars of each stream."""
    from matplotlib.figure import Figure

    from utils.flow import flow_to_color

    p = prediction
    n = len(p.frames)
    fig = Figure(figsize=(2.2 * (n + 1) + 5.5, 6.2), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[2.2 * (n + 1), 5.5])
    axes = left.subplots(2, n + 1, squeeze=False)
    speed = max(float(np.percentile(np.hypot(f[..., 0], f[..., 1]), 99)) for f in p.flows)
    for j, (frame, flow, t) in enumerate(zip(p.frames, p.flows, p.picture_positions)):
        axes[0, j].imshow(frame)
        axes[0, j].set_title(f"frame {t}", fontsize=9)
        axes[1, j].imshow(flow_to_color(flow, max(speed, 1e-3)))
        axes[1, j].set_title(f"flow {t} -> {t + 1}", fontsize=9)
    axes[1, n].imshow(colour_key())
    axes[1, n].set_title(f"colour key\n(edge = {speed:.1f} px)", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    left.suptitle(f"{p.video.name}", fontsize=9)
    bars = right.subplots(3, 1)
    for ax, name, colour in zip(bars, ("spatial", "temporal", "fusion"), ("tab:blue", "tab:orange", "tab:green")):
        top = p.top(name, k)[::-1]
        ax.barh([c for c, _ in top], [prob for _, prob in top], color=colour)
        ax.set_xlim(0, 1)
        ax.set_title(STREAM_TITLES[name], fontsize=9)
        ax.tick_params(labelsize=9)
    bars[-1].set_xlabel("probability (softmax, averaged over the video)", fontsize=9)
    if any(note.startswith("WARNING") for note in p.notes):
        right.suptitle(f"run {p.run}: demo models, meaningless on this clip", fontsize=9, color="tab:red")
    else:
        right.suptitle(f"run {p.run}", fontsize=9)
    return fig


def default_picture_path(prediction: Prediction) -> Path:
    """``report/<run>/predictions/<clip>.png``."""
    return Path(config.REPORT_DIR) / prediction.run / "predictions" / f"{prediction.video.stem}.png"


def _at_least(low: int, why: str = ""):
    """An argparse type: a whole number >= ``low`` (``why`` says why, in the message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}{f' ({why})' if why else ''}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.predict",
                                     description="Classify one video with both trained streams of a run.")
    parser.add_argument("video", type=Path, help="any clip OpenCV can read")
    parser.add_argument("--run", default="demo_split1", help="models/<run>/ (default: demo_split1)")
    parser.add_argument("--dataset", help="the run's dataset folder, if models/<run>/run_info.json is missing")
    parser.add_argument("--flow-method", help="optical flow for the clip (default: the run's, TV-L1)")
    parser.add_argument("--max-frames", type=_at_least(2, "a flow needs two frames"),
                        help="only the first N frames (quicker on long clips; >= 2)")
    parser.add_argument("--batch-size", type=_at_least(1), default=32, help="network inputs per forward pass")
    parser.add_argument("--top", type=_at_least(1), default=TOP, help="classes shown per stream (default: 5)")
    parser.add_argument("--out", type=Path, help="picture file (default: report/<run>/predictions/<clip>.png)")
    args = parser.parse_args(argv)
    try:
        prediction = predict_video(args.video, args.run, dataset=args.dataset, flow_method=args.flow_method,
                                   max_frames=args.max_frames, batch_size=args.batch_size, progress=True)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from utils.report import save_figure

    print(format_prediction(prediction, args.top))
    picture = save_figure(prediction_figure(prediction, args.top), args.out or default_picture_path(prediction))
    print(f"picture: {picture}")
    if prediction.animation is not None:
        from utils.plots import Animation

        print(f"animation: {Animation(prediction.animation).save(picture.with_suffix('.gif'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
