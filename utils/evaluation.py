"""Video-level evaluation of the two streams, score files on disk, and late fusion.

Two test protocols, both scoring *videos* (one label per clip), not single inputs:

- ``"one_frame"``: one input per video. The temporal stream sees the stack of
  ``L = stack_length`` flows starting at the middle of the clip,
  ``start = clamp(n_flows // 2 - L // 2 + 1, 1, n_flows - L + 1)`` (1-based, so the stack
  ``start ... start + L - 1`` always fits), and the spatial stream sees RGB frame ``start``,
  the first frame of that same stack. Deterministic: the same inputs on every run.
- ``"whole_video"``: every frame ``1 ... n_frames`` through the spatial stream and every stack
  ``start = 1 ... n_flows - L + 1`` through the temporal stream (with ``stride`` > 1: every
  stride-th one), and the video's score is the average of the softmax outputs.

Per-video scores are written to ``cfg.scores_dir/<stream>_<protocol>.npz`` (``..._val.npz`` for
the validation subset) with the arrays ``video``, ``label``, ``scores`` (videos x classes),
``n_inputs`` and ``class_names`` and the settings used, so fusion and every table can be
recomputed without the models. Score files are written to a temporary file and renamed; a long
evaluation saves its progress every few videos and resumes from it.

The SG3I stream (:mod:`utils.sg3i`, stream name ``"sg3i"``) is scored the same way: its SG3Is
start where the temporal stream's stacks start and span the same L + 1 frames, counted on the
frames, so a dataset extracted without flow is enough for it and for the spatial stream.

Fusion is late fusion of softmax scores: the plain average of the two streams (Simonyan &
Zisserman 2014) or a weighted average ``w * spatial + (1 - w) * temporal`` whose weight is
chosen on the *validation* videos, never on the test videos.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, top_k_accuracy_score

from utils.config import Config
from utils.rawframes import holds_no_flow
from utils.writers import remove_dead_temporaries

STREAMS = ("spatial", "temporal")       # the two streams of the paper, fused by notebooks 04 and 05
ALL_STREAMS = STREAMS + ("sg3i",)       # every stream this module can score (sg3i: utils.sg3i)
PROTOCOLS = ("one_frame", "whole_video")
SUBSETS = ("test", "val")
FUSION_WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)  # candidate w, steps of 0.05
# The whole-video protocol per dataset: the paper's 25 equally spaced frames / stacks per clip, each
# as 10 crops (Simonyan & Zisserman 2014, sec. 6); the demo (a CPU) takes the centre crop only
# (its clips are shorter than 25 frames, so "25" means every frame there).
WHOLE_VIDEO_DEFAULTS = {"demo": dict(segments=25, crops=1), "hmdb51": dict(segments=25, crops=10)}


def whole_video_settings(dataset_name: str, **given) -> dict:
    """``{"segments", "crops"}`` of the whole-video protocol for a dataset, overridden by non-None ``given``."""
    settings = dict(WHOLE_VIDEO_DEFAULTS["demo" if dataset_name == "demo" else "hmdb51"])
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise KeyError(f"unknown whole-video setting(s) {unknown}; known: {sorted(settings)}")
    settings.update({k: v for k, v in given.items() if v is not None})
    settings["segments"] = settings["segments"] or None     # 0: every frame / stack
    return settings


# ----------------------------------------------------------------------------------------
# Which inputs a protocol feeds to a stream
# ----------------------------------------------------------------------------------------
def one_frame_start(n_flows: int, stack_length: int = 10) -> int:
    """1-based start of the middle flow stack that still fits in the clip.

    ``clamp(n_flows // 2 - L // 2 + 1, 1, n_flows - L + 1)``; the spatial stream uses RGB
    frame ``start`` (the first frame of that stack) so both streams look at the same moment.
    """
    if n_flows < stack_length:
        raise ValueError(f"a clip with {n_flows} flows is too short for a stack of {stack_length}")
    middle = n_flows // 2 - stack_length // 2 + 1
    return int(min(max(middle, 1), n_flows - stack_length + 1))


def input_positions(stream: str, protocol: str, n_frames: int, n_flows: int,
                    stack_length: int = 10, stride: int = 1, segments: int | None = None) -> list[int]:
    """1-based frame indices (spatial) or stack / SG3I starts (temporal, sg3i) that a protocol evaluates.

    ``"whole_video"`` takes every ``stride``-th frame / stack start, or, with ``segments``, that many
    equally spaced ones (the paper's 25; all of them when the clip has fewer). The spatial and SG3I
    positions are counted on the frames (a clip of ``n_frames`` frames has room for ``n_frames - 1``
    flows), so they need no flow on disk; with flow they are the positions of the temporal stream's.
    """
    _check_choice("stream", stream, ALL_STREAMS)
    _check_choice("protocol", protocol, PROTOCOLS)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if segments is not None and segments < 1:
        raise ValueError(f"segments must be >= 1 or None, got {segments}")
    if protocol == "one_frame":
        return [one_frame_start(n_flows if stream == "temporal" else n_frames - 1, stack_length)]
    if stream == "spatial":
        if n_frames < 1:
            raise ValueError("a clip without frames cannot be evaluated")
        n_positions = n_frames
    else:
        n_stacks = n_flows if stream == "temporal" else n_frames - 1
        if n_stacks < stack_length:
            raise ValueError(f"a clip with {n_stacks} flows is too short for a stack of {stack_length}")
        n_positions = n_stacks - stack_length + 1
    if segments is not None:
        from utils.generators import evenly_spaced

        return evenly_spaced(n_positions, min(segments, n_positions)).tolist()
    return list(range(1, n_positions + 1, stride))


def protocol_settings(protocol: str, *, stride: int = 1, segments: int | None = None, crops: int = 1) -> dict:
    """What identifies a protocol's inputs (stored with the scores, shown in the report)."""
    _check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "one_frame":
        return {"protocol": protocol, "stride": 1, "segments": None, "crops": int(crops)}
    return {"protocol": protocol, "stride": int(stride) if segments is None else 1,
            "segments": None if segments is None else int(segments), "crops": int(crops)}


def describe_protocol(settings: dict) -> str:
    """Words for a protocol's inputs, e.g. "25 equally spaced frames / stacks x 10 crops"."""
    crops = "10 crops (4 corners + centre, and mirrored)" if settings.get("crops") == 10 else "the centre crop"
    if settings.get("protocol") == "one_frame":
        where = "the middle stack of each clip and the frame it starts at"
    elif settings.get("segments"):
        where = (f"{settings['segments']} equally spaced frames / stacks per clip (every one where a clip "
                 f"has fewer)")
    else:
        stride = settings.get("stride") or 1
        where = "every frame / stack" if stride == 1 else f"every {stride}th frame / stack"
    return f"{where}, {crops}"


# ----------------------------------------------------------------------------------------
# Score files
# ----------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Per-video softmax scores of one stream (or a fusion) under one protocol."""

    video: np.ndarray             # (n,) str, video stems in index order
    label: np.ndarray             # (n,) int, true class
    scores: np.ndarray            # (n, n_classes) float32, averaged softmax
    class_names: list[str]
    n_inputs: np.ndarray | None = None   # (n,) int, inputs averaged per video
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.video = np.asarray(self.video).astype(str)
        self.label = np.asarray(self.label, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.class_names = [str(c) for c in self.class_names]
        if self.n_inputs is None:
            self.n_inputs = np.ones(len(self.video), dtype=np.int64)
        self.n_inputs = np.asarray(self.n_inputs, dtype=np.int64)
        n = len(self.video)
        if self.scores.shape != (n, len(self.class_names)) or len(self.label) != n or len(self.n_inputs) != n:
            raise ValueError(
                f"inconsistent scores: {n} videos, labels {self.label.shape}, scores "
                f"{self.scores.shape}, n_inputs {self.n_inputs.shape}, {len(self.class_names)} classes")

    def __len__(self) -> int:
        return len(self.video)

    @property
    def predicted(self) -> np.ndarray:
        return self.scores.argmax(axis=1)

    def metrics(self) -> dict:
        return classification_metrics(self.label, self.scores)


def scores_path(cfg: Config, stream: str, protocol: str, subset: str = "test") -> Path:
    """``<scores_dir>/<stream>_<protocol>.npz``; other subsets get a suffix (``..._val.npz``)."""
    _check_choice("protocol", protocol, PROTOCOLS)
    _check_choice("subset", subset, SUBSETS)
    suffix = "" if subset == "test" else f"_{subset}"
    return Path(cfg.scores_dir) / f"{stream}_{protocol}{suffix}.npz"


def save_scores(path: str | os.PathLike, scores: Scores) -> Path:
    """Write a score file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, video=scores.video, label=scores.label, scores=scores.scores,
                     n_inputs=scores.n_inputs, class_names=np.asarray(scores.class_names, dtype=str),
                     meta=np.asarray(json.dumps(scores.meta, default=str)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class DamagedScoreFile(ValueError):
    """A score file that cannot be read (empty, cut short, not a score file); the message names it."""


def load_scores(path: str | os.PathLike) -> Scores:
    """Read a score file written by :func:`save_scores`; :class:`DamagedScoreFile` naming it if it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no score file {path}; run the evaluation of that stream first")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"video", "label", "scores", "class_names"} - set(data.files)
            if missing:
                raise ValueError(f"missing arrays {sorted(missing)}")
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
            if not isinstance(meta, dict):
                raise ValueError("its settings are not a JSON object")
            n_inputs = data["n_inputs"] if "n_inputs" in data.files else None
            return Scores(data["video"], data["label"], data["scores"], list(data["class_names"]),
                          n_inputs, meta)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        size = path.stat().st_size
        raise DamagedScoreFile(f"{path}: not a readable score file ({size} bytes; {type(error).__name__}: "
                               f"{error}); delete it, and the evaluation that made it recomputes it") from None


# ----------------------------------------------------------------------------------------
# Metrics and fusion
# ----------------------------------------------------------------------------------------
def classification_metrics(labels: Sequence[int], scores: np.ndarray, k: int = 5) -> dict:
    """Top-1, top-k and mean per-class accuracy (fractions in [0, 1]) of video scores.

    Mean class accuracy averages the recall of the classes present in ``labels`` (classes
    without any test video have no accuracy to average). With ``k >= n_classes`` the top-k
    accuracy is 1 by definition.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if len(labels) == 0:
        raise ValueError("no videos to score")
    n_classes = scores.shape[1]
    predicted = scores.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, labels=np.arange(n_classes))
    present = cm.sum(axis=1) > 0
    if k >= n_classes:  # every class is in the top k
        top_k = 1.0
    else:
        top_k = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(n_classes))
    return {
        "top1": float(accuracy_score(labels, predicted)),
        f"top{k}": float(top_k),
        "mean_class": float((cm.diagonal()[present] / cm.sum(axis=1)[present]).mean()),
        "n_videos": int(len(labels)),
    }


def per_class_accuracy(scores: Scores) -> pd.Series:
    """Recall of each class (NaN for a class without videos), indexed by class name."""
    cm = confusion_matrix(scores.label, scores.predicted, labels=np.arange(len(scores.class_names)))
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, cm.diagonal() / np.maximum(support, 1), np.nan)
    return pd.Series(recall, index=scores.class_names, name="accuracy")


def check_aligned(first: Scores, second: Scores) -> None:
    """Raise unless two score sets cover the same videos, in the same order, with the same classes."""
    if list(first.class_names) != list(second.class_names):
        raise ValueError("the score files use different class lists")
    if len(first) != len(second) or not np.array_equal(first.video, second.video):
        only_first = sorted(set(first.video.tolist()) - set(second.video.tolist()))
        only_second = sorted(set(second.video.tolist()) - set(first.video.tolist()))
        detail = (f"only in the first: {only_first[:5]}{' ...' if len(only_first) > 5 else ''}; "
                  f"only in the second: {only_second[:5]}{' ...' if len(only_second) > 5 else ''}"
                  if only_first or only_second else "same videos in a different order")
        raise ValueError(f"the score files do not cover the same videos ({len(first)} vs "
                         f"{len(second)}): {detail}; re-run the evaluation of both streams")
    if not np.array_equal(first.label, second.label):
        raise ValueError("the score files disagree on the labels of the same videos")


def weighted_fusion(spatial: Scores, temporal: Scores, weight: float) -> Scores:
    """``weight * spatial + (1 - weight) * temporal`` per video (``weight=0.5`` is the average)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    check_aligned(spatial, temporal)
    fused = weight * spatial.scores + (1.0 - weight) * temporal.scores
    meta = {"fusion": "weighted", "weight": float(weight),
            "spatial": spatial.meta.get("checkpoint"), "temporal": temporal.meta.get("checkpoint")}
    return Scores(spatial.video, spatial.label, fused, spatial.class_names,
                  spatial.n_inputs + temporal.n_inputs, meta)


def average_fusion(spatial: Scores, temporal: Scores) -> Scores:
    """The two-stream paper's fusion: the mean of the two streams' softmax scores."""
    fused = weighted_fusion(spatial, temporal, 0.5)
    fused.meta["fusion"] = "average"
    return fused


def product_fusion(spatial: Scores, temporal: Scores) -> Scores:
    """The normalised product of the two streams' probabilities (the sum of log-probabilities),
    for comparison with the paper's average: it needs both streams to agree, so a stream's
    preference among classes it cannot tell apart counts for less."""
    check_aligned(spatial, temporal)
    log_sum = np.log(np.clip(spatial.scores, 1e-12, None)) + np.log(np.clip(temporal.scores, 1e-12, None))
    fused = np.exp(log_sum - log_sum.max(axis=1, keepdims=True))
    meta = {"fusion": "product", "spatial": spatial.meta.get("checkpoint"), "temporal": temporal.meta.get("checkpoint")}
    return Scores(spatial.video, spatial.label, fused / fused.sum(axis=1, keepdims=True), spatial.class_names,
                  spatial.n_inputs + temporal.n_inputs, meta)


def choose_fusion_weight(spatial_val: Scores, temporal_val: Scores,
                         weights: Iterable[float] = FUSION_WEIGHTS) -> tuple[float, pd.DataFrame]:
    """Pick ``w`` for :func:`weighted_fusion` on validation scores (never on the test split).

    The best ``w`` has the highest top-1 accuracy; ties (common on small validation sets) go
    to the lower mean negative log-likelihood of the true class, then to the ``w`` closest to
    0.5. Returns ``(w, table)`` with one row per candidate ``w``.
    """
    check_aligned(spatial_val, temporal_val)
    rows = []
    for w in weights:
        fused = weighted_fusion(spatial_val, temporal_val, float(w)).scores
        true_prob = fused[np.arange(len(fused)), spatial_val.label]
        rows.append({"weight": float(w),
                     "top1": float(accuracy_score(spatial_val.label, fused.argmax(axis=1))),
                     "nll": float(-np.log(np.clip(true_prob, 1e-12, None)).mean())})
    table = pd.DataFrame(rows)
    order = table.assign(centre=(table.weight - 0.5).abs()).sort_values(
        ["top1", "nll", "centre"], ascending=[False, True, True], kind="stable")
    return float(order.weight.iloc[0]), table


# ----------------------------------------------------------------------------------------
# Running a model over videos
# ----------------------------------------------------------------------------------------
InputLoader = Callable[..., Iterator[np.ndarray]]


def load_video_inputs(stream: str, frames_path: str | os.PathLike, positions: Sequence[int], *,
                      image_size: int, stack_length: int, batch_size: int, crops: int = 1) -> Iterator[np.ndarray]:
    """Yield the network inputs of one video at ``positions``, about ``batch_size`` at a time.

    Each position gives ``crops`` inputs (:func:`utils.generators.eval_crop_boxes`: the centre crop,
    or the paper's ten), made as in training (mirrored flow negates x). Every JPEG of the video
    is read once: the flows shared by overlapping stacks are kept (as stored uint8) until no
    later stack needs them. ``positions`` must be increasing.
    """
    from utils import generators

    positions = [int(p) for p in positions]
    if any(b <= a for a, b in zip(positions, positions[1:])):
        raise ValueError("positions must be strictly increasing")
    if stream == "sg3i":     # SG3Is of frames start, start + L // 2, start + L (utils.sg3i)
        from utils import sg3i

        yield from sg3i.video_inputs(frames_path, positions, span=stack_length, image_size=image_size,
                                     batch_size=batch_size, crops=crops)
        return
    per_batch = max(1, batch_size // crops)
    if stream == "spatial":
        for i in range(0, len(positions), per_batch):
            yield np.concatenate([generators.spatial_test_inputs(generators.read_frame(frames_path, frame),
                                                                 image_size, crops)
                                  for frame in positions[i:i + per_batch]])
        return
    flows: dict[int, np.ndarray] = {}  # flow index -> uint8 [H, W, 2] (x, y)
    for i in range(0, len(positions), per_batch):
        chunk = positions[i:i + per_batch]
        for t in range(chunk[0], chunk[-1] + stack_length):
            if t not in flows:
                flows[t] = generators.read_flow_uint8(frames_path, t, 1)
        batch = [generators.temporal_test_inputs(
                     np.concatenate([flows[t] for t in range(start, start + stack_length)], axis=-1),
                     image_size, crops)
                 for start in chunk]
        for t in [t for t in flows if t <= chunk[-1]]:  # the next stack starts after chunk[-1]
            del flows[t]
        yield np.concatenate(batch)


def _predict_function(model) -> Callable[[np.ndarray], np.ndarray]:
    if hasattr(model, "predict_on_batch"):
        return lambda x: np.asarray(model.predict_on_batch(x))
    return lambda x: np.asarray(model(x))


def score_videos(model, rows: pd.DataFrame, stream: str, protocol: str, *, n_classes: int,
                 image_size: int = 224, stack_length: int = 10, stride: int = 1, segments: int | None = None,
                 crops: int = 1, batch_size: int = 32, loader: InputLoader = load_video_inputs,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Average softmax of ``model`` over each video's inputs; returns ``(scores, n_inputs)``.

    ``rows`` needs ``frames_path``, ``n_frames`` and ``n_flows``. Inputs of consecutive
    videos are packed into batches of ``batch_size`` so the model always sees full batches.
    ``model`` is a Keras model or any callable from a batch to softmax scores.
    """
    predict = _predict_function(model)
    sums = np.zeros((len(rows), n_classes), dtype=np.float64)
    counts = np.zeros(len(rows), dtype=np.int64)
    pending_x: list[np.ndarray] = []
    pending_owner: list[np.ndarray] = []

    def flush():
        if not pending_x:
            return
        x = np.concatenate(pending_x)
        owner = np.concatenate(pending_owner)
        n = len(x)
        if n < batch_size:  # same shape for every call: compiled predict functions trace once
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
        probs = np.asarray(predict(x))[:n]
        if probs.shape != (n, n_classes):
            raise ValueError(f"the {stream} model returned shape {probs.shape} for {n} "
                             f"inputs; expected ({n}, {n_classes})")
        if probs.min() < -1e-6 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
            raise ValueError(f"the {stream} model does not output softmax probabilities "
                             "(rows must be >= 0 and sum to 1)")
        np.add.at(sums, owner, probs)
        np.add.at(counts, owner, 1)
        pending_x.clear()
        pending_owner.clear()

    iterator = enumerate(rows.itertuples(index=False))
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, total=len(rows), desc=f"{stream} {protocol}", mininterval=5)
    n_pending = 0
    for i, row in iterator:
        positions = input_positions(stream, protocol, int(row.n_frames), int(row.n_flows),
                                    stack_length, stride, segments)
        for x in loader(stream, row.frames_path, positions, image_size=image_size,
                        stack_length=stack_length, batch_size=batch_size, crops=crops):
            while len(x):
                take = min(batch_size - n_pending, len(x))
                pending_x.append(x[:take])
                pending_owner.append(np.full(take, i))
                n_pending += take
                x = x[take:]
                if n_pending == batch_size:
                    flush()
                    n_pending = 0
    flush()
    if (counts == 0).any():
        raise RuntimeError(f"no inputs were scored for {int((counts == 0).sum())} videos")
    return (sums / counts[:, None]).astype(np.float32), counts


def evaluation_rows(cfg: Config, subset: str = "test", *, index: pd.DataFrame | None = None,
                    stack_length: int | None = None, allow_missing: bool = False,
                    needs_flow: bool = True) -> pd.DataFrame:
    """The usable videos of ``subset`` for ``cfg.split``, in index order (see ``dataset.usable_videos``).

    ``stack_length`` is L (default ``cfg.stack_length``, which the temporal model must match):
    every stream needs L + 1 frames, since the one-frame protocol pairs the RGB frame with a
    stack's start; ``needs_flow`` (the temporal stream) also needs their L flows on disk, while
    the spatial and SG3I streams count the frames only (on a complete extraction that is the same
    set of videos). A video that is on disk but not extracted is an error naming it (accuracy on
    part of the test split is not comparable with anything; run the extraction);
    ``allow_missing=True`` skips them too (for experiments only). Videos that cannot be used (not
    on disk, extraction failed, too short) are left out with a warning naming each. Either way
    ``rows.attrs`` holds ``n_missing`` (the number left out) and ``excluded``
    (``{"class/video": reason}``), which the score file records.
    """
    from utils.dataset import usable_videos

    _check_choice("subset", subset, SUBSETS)
    if index is None:
        from utils.dataset import build_index
        index = build_index(cfg)
    stack_length = stack_length or cfg.stack_length
    rows = index[index["subset"] == subset].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no '{subset}' videos in split {cfg.split} of {cfg.data_root}")
    try:
        usable = usable_videos(rows, stack_length if needs_flow else None, frames_dir=cfg.frames_dir,
                               allow_not_extracted=allow_missing, min_frames=None if needs_flow else stack_length + 1)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"'{subset}' videos: {error}") from None
    if len(usable.excluded):
        skipping = "skipping them" + (" (allow_missing=True)" if allow_missing else "")
        warnings.warn(f"'{subset}' videos: {usable.message}\n{skipping}; the score file records them", stacklevel=2)
    rows = usable.rows.reset_index(drop=True)
    rows.attrs["n_missing"] = len(usable.excluded)
    rows.attrs["excluded"] = {f"{r.class_name}/{r.video}": r.reason for r in usable.excluded.itertuples()}
    return rows


def index_class_names(index: pd.DataFrame) -> list[str]:
    """Class names by label (``names[label]``), from a dataset index: its ``attrs["class_names"]`` (the
    dataset's whole label list, set by :func:`utils.dataset.build_index`), else its ``label`` and
    ``class_name`` columns, which must then number the classes 0 ... n_classes - 1."""
    pairs = index[["label", "class_name"]].drop_duplicates().sort_values("label")
    if pairs["label"].duplicated().any() or pairs["class_name"].duplicated().any():
        raise ValueError("the index labels are not one class name each")
    names = index.attrs.get("class_names")
    if names is not None:
        wrong = [(int(k), c) for k, c in zip(pairs["label"], pairs["class_name"])
                 if not 0 <= int(k) < len(names) or names[int(k)] != c]
        if wrong:
            raise ValueError(f"the index's label {wrong[0][0]} is class {wrong[0][1]!r}, which its class list "
                             f"(attrs['class_names'], {len(names)} labels) does not say")
        return [str(c) for c in names]
    if list(pairs["label"]) != list(range(len(pairs))):
        raise ValueError("the index labels are not 0 ... n_classes - 1, one class name each")
    return [str(c) for c in pairs["class_name"]]


def checkpoint_path(cfg: Config, stream: str, checkpoint: str = "best") -> Path:
    """``models/<run>/<stream>/best.keras`` (``"best"``), ``last.keras`` (``"last"``), the final fit on
    train + val ``refit/last.keras`` (``"refit"``), or a given ``.keras`` path."""
    if checkpoint in ("best", "last"):
        return Path(cfg.stream_dir(stream)) / f"{checkpoint}.keras"
    if checkpoint == "refit":
        return Path(cfg.stream_dir(stream)) / "refit" / "last.keras"
    return Path(checkpoint)


def choose_checkpoint(cfg: Config, stream: str, checkpoint: str | None = None) -> str:
    """The checkpoint to test for a stream: ``checkpoint`` as given, or for ``None`` the paper's protocol,
    ``"refit"`` (the final fit on all training clips) whenever the run has a finished one, else ``"best"``.

    A final fit that exists but is unfinished or was made for another plan is said, and ``"best"``
    tested; asking for ``"refit"`` then is an error that says why.
    """
    if checkpoint is not None and checkpoint != "refit":
        return checkpoint
    from utils.training import REFIT_DIR, refit_problem

    run_dir = Path(cfg.stream_dir(stream))
    problem = refit_problem(run_dir)
    if problem is None:
        return "refit"
    if checkpoint == "refit":
        raise FileNotFoundError(f"checkpoint 'refit' for the {stream} stream: {problem}; train it with "
                                f"refit = True (notebook {'02' if stream == 'spatial' else '03'})")
    if (run_dir / REFIT_DIR).exists():
        print(f"{stream}: {problem}; testing best.keras instead")
    return "best"


def validation_checkpoint(checkpoint: str) -> str:
    """The checkpoint whose validation scores choose the fusion weight: a final fit on train + val has
    seen the validation videos, so its weight comes from the validated run (``"best"``)."""
    return "best" if checkpoint == "refit" else checkpoint


def load_stream_model(path: str | os.PathLike, stream: str | None = None):
    """Load a trained stream from its ``.keras`` file (custom layers of utils.models registered).

    A file that is not a Keras archive (truncated, or another kind of file), or, given ``stream``,
    a checkpoint of the other stream, is an error naming the file. The last two models loaded
    are kept, so scoring the test and the validation videos with the same checkpoint loads it
    once (a newer file with the same name is loaded again).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}; train that stream first (notebooks 02/03)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path} is not a Keras .keras archive (a truncated or wrong file, "
                         f"{path.stat().st_size} bytes); train that stream again or give another checkpoint")
    if stream is not None:
        check_stream_input(checkpoint_input_shape(path), stream, path)
    try:
        return _load_model_cached(str(path.resolve()), path.stat().st_mtime)
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise ValueError(f"checkpoint {path} does not load: {error}") from error


def checkpoint_input_shape(path: str | os.PathLike) -> tuple | None:
    """The input shape ``(None, H, W, C)`` stored in a ``.keras`` archive, read without building
    the model; None when the file is not such an archive or has no single input layer."""
    shape = checkpoint_batch_shape(path)
    return shape if shape is not None and len(shape) == 4 else None


def check_stream_input(shape, stream: str, source) -> None:
    """Raise unless ``shape`` ``(None, H, W, C)`` is an input of ``stream``: C = 3 (RGB frames, SG3Is)
    or C = 2L (flow).

    ``source`` names the checkpoint (or model) in the message; a None shape is not checked.
    """
    _check_choice("stream", stream, ALL_STREAMS)
    if shape is None or not shape[-1]:
        return
    channels = int(shape[-1])
    found = "spatial" if channels == 3 else "temporal" if channels % 2 == 0 else None
    if found == stream or (stream == "sg3i" and found == "spatial"):
        return
    size = "x".join(str(n) for n in shape[1:])
    has = (f"a spatial-stream model (input {size}: RGB frames)" if found == "spatial" else
           f"a temporal-stream model (input {size}: stacks of L = {channels // 2} flows)" if found else
           f"a model with input {size}, which is neither stream's")
    wanted = {"spatial": "RGB frames, H x W x 3", "sg3i": "SG3Is, H x W x 3"}.get(stream, "flow stacks, H x W x 2L")
    raise ValueError(f"{source} is {has}; the {stream} stream takes {wanted}: check which checkpoint "
                     f"is given for which stream")


@functools.lru_cache(maxsize=2)
def _load_model_cached(path: str, mtime: float):
    import keras
    try:
        import utils.models  # noqa: F401  registers any custom layers
    except ImportError:
        pass
    return keras.saving.load_model(path, compile=False)   # inference only: the optimizer is not needed


def evaluate_stream(cfg: Config, stream: str, protocol: str, subset: str = "test", *,
                    model=None, checkpoint: str = "best", stride: int = 1, segments: int | None = None,
                    crops: int = 1, batch_size: int = 32, index: pd.DataFrame | None = None,
                    allow_missing: bool = False, force: bool = False, save_every: int = 50,
                    loader: InputLoader = load_video_inputs, progress: bool = True) -> Scores:
    """Score every ``subset`` video with one stream under one protocol and save the score file.

    The model comes from ``checkpoint`` (``"best"``, ``"last"`` or a path) unless ``model`` is
    given. ``stride`` / ``segments`` choose the whole-video inputs (:func:`input_positions`),
    ``crops`` the crops per input (1: centre; 10: the paper's). An existing score file is reused
    only if it was made from the same checkpoint file (path and SHA-256), the same extraction
    (flow method, frame size, ...), the same stack length, protocol, crops and videos
    (``force=True`` recomputes); an interrupted run resumes from its last saved progress.
    """
    _check_choice("stream", stream, ALL_STREAMS)
    _check_choice("protocol", protocol, PROTOCOLS)
    protocol_id = protocol_settings(protocol, stride=stride, segments=segments, crops=crops)
    ckpt = checkpoint_path(cfg, stream, checkpoint)
    ckpt_id = _checkpoint_identity(ckpt, model, f"train the {stream} stream first")
    force = force or model is not None   # an in-memory model cannot be matched against a saved file

    if index is None:
        from utils.dataset import build_index
        index = build_index(cfg)
    classes = index_class_names(index)
    if model is None:    # a checkpoint of the other stream: named now, before any work (nothing is loaded)
        check_stream_input(checkpoint_input_shape(ckpt), stream, ckpt)
    else:
        check_stream_input(getattr(model, "input_shape", None), stream, "the model given")
    extraction = extraction_settings(cfg)
    if model is None and stream == "temporal":
        check_trained_flow(ckpt, extraction, Path(cfg.frames_dir))
    image_size, stack_length = cfg.image_size, cfg.stack_length
    if stream == "temporal" and holds_no_flow(extraction):
        raise ValueError(f"{cfg.frames_dir} holds frames only (extracted without optical flow, --no-flow): the "
                         f"temporal stream needs flow; extract with a flow method into another dataset folder, or "
                         f"score the streams that read frames only ({', '.join(s for s in ALL_STREAMS if s != stream)})")
    rows = evaluation_rows(cfg, subset, index=index, stack_length=stack_length,
                           allow_missing=allow_missing, needs_flow=stream == "temporal")
    settings = _score_settings(cfg, rows, extraction, ckpt_id, stream=stream, subset=subset, **protocol_id,
                               stack_length=stack_length)
    out = scores_path(cfg, stream, protocol, subset)
    done, previous = _saved_scores(out, settings, rows, force)
    if done is not None:
        return done

    if model is None:
        model = load_stream_model(ckpt)
    image_size, model_stack_length = _input_geometry(model, stream, image_size, stack_length)
    if model_stack_length != stack_length:
        raise ValueError(f"the temporal model {ckpt_id['checkpoint']} takes stacks of L = {model_stack_length} "
                         f"flows, but stack_length = {stack_length}: pass stack_length={model_stack_length} "
                         f"(`-p stack_length={model_stack_length}`) so that the one-frame RGB input sits at "
                         f"the start of the temporal stack")
    settings.update(image_size=image_size, flow_method=(settings["extraction"] or {}).get("method"))
    return _score_in_chunks(model, rows, classes, settings, out, previous, stream, protocol,
                            image_size=image_size, stack_length=stack_length, stride=protocol_id["stride"],
                            segments=protocol_id["segments"], crops=crops, batch_size=batch_size, loader=loader,
                            save_every=save_every, progress=progress)


def _score_settings(cfg: Config, rows: pd.DataFrame, extraction: dict | None, ckpt_id: dict, **what) -> dict:
    """What a score file records, and must match to be reused: ``what`` was scored (stream, subset,
    protocol, ...), on which dataset, split, carve-out, videos, extraction and checkpoint; as stored
    (through JSON: tuples become lists)."""
    settings = {**what, "dataset": cfg.dataset_name, "split": cfg.split, "val_fraction": cfg.val_fraction,
                "seed": cfg.seed, "n_missing": rows.attrs.get("n_missing", 0),
                "excluded": rows.attrs.get("excluded", {}), "extraction": extraction, **ckpt_id}
    return json.loads(json.dumps(settings, default=str))


def _checkpoint_identity(ckpt: Path, model, remedy: str) -> dict:
    """What identifies the scored model in a score file: the checkpoint's path and content hash (an error
    with ``remedy`` if it is missing), or a placeholder for a model given in memory."""
    if model is not None:
        return {"checkpoint": "<model given in memory>"}
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint {ckpt}; {remedy}")
    return {"checkpoint": str(ckpt), "checkpoint_sha256": checkpoint_sha256(ckpt)}


def _saved_scores(out: Path, settings: dict, rows: pd.DataFrame, force: bool) -> tuple[Scores | None, Scores | None]:
    """``(finished, partial)``: the score file ``out`` if it was made with ``settings`` for all ``rows``, and
    else the saved progress of an interrupted run with the same settings (each None when there is none)."""
    videos = rows["video"].astype(str).to_numpy()
    for removed in remove_dead_temporaries(out.parent):
        print(f"removed {removed}: an unfinished score file of an interrupted run")
    if not force and out.is_file():
        done = _load_if_matching(out, settings, videos)
        if done is not None and len(done) == len(videos):
            return done, None
    partial = out.with_name(out.stem + ".partial.npz")
    return None, (None if force or not partial.is_file() else _load_if_matching(partial, settings, videos))


def _score_in_chunks(model, rows: pd.DataFrame, classes: list[str], settings: dict, out: Path,
                     previous: Scores | None, stream: str, protocol: str, *, save_every: int, progress: bool,
                     **scoring) -> Scores:
    """:func:`score_videos` over ``rows`` from where ``previous`` stopped, ``save_every`` videos at a time
    (progress saved to ``<out>.partial.npz``), then the score file ``out`` with ``settings`` as its meta."""
    videos = rows["video"].astype(str).to_numpy()
    partial = out.with_name(out.stem + ".partial.npz")
    scores = np.zeros((len(rows), len(classes)), dtype=np.float32)
    n_inputs = np.zeros(len(rows), dtype=np.int64)
    start = 0
    if previous is not None:
        start = len(previous)
        scores[:start], n_inputs[:start] = previous.scores, previous.n_inputs
    started = time.perf_counter()
    for first in range(start, len(rows), max(1, save_every)):
        chunk = rows.iloc[first:first + max(1, save_every)]
        s, n = score_videos(model, chunk, stream, protocol, n_classes=len(classes), progress=False, **scoring)
        end = first + len(chunk)
        scores[first:end], n_inputs[first:end] = s, n
        if end < len(rows):
            save_scores(partial, Scores(videos[:end], rows["label"][:end], scores[:end], classes,
                                        n_inputs[:end], settings))
        if progress:
            print(f"{settings.get('stream', stream)} {protocol} ({settings.get('subset')}): {end}/{len(rows)} "
                  f"videos, {time.perf_counter() - started:.0f} s", flush=True)
    settings["seconds"] = round(time.perf_counter() - started, 1)
    result = Scores(videos, rows["label"], scores, classes, n_inputs, settings)
    save_scores(out, result)
    partial.unlink(missing_ok=True)
    return result


def _input_geometry(model, stream: str, image_size: int, stack_length: int) -> tuple[int, int]:
    """Input side and stack length: the model's input shape decides when it has one."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1]:
        image_size = int(shape[1])
        if stream == "temporal" and shape[3]:
            stack_length = int(shape[3]) // 2
    return image_size, stack_length


def extraction_settings(cfg: Config) -> dict | None:
    """The extraction's settings (flow method, frame size, ...) from ``rawframes/extraction_settings.json``
    (None when there is no such file; ValueError naming it when it is damaged)."""
    from utils.rawframes import SETTINGS_FILE, read_extraction_settings

    settings = read_extraction_settings(cfg.frames_dir)
    path = Path(cfg.frames_dir) / SETTINGS_FILE
    if settings is None and path.exists():
        raise ValueError(f"{path}: not the settings of an extraction (not a JSON object: a damaged file?), so it "
                         f"is unknown which flow the frames hold; extract the frames again into an empty folder "
                         f"(notebook 01)")
    return settings


FLOW_KEYS = ("method", "flow_bound", "method_options")   # what makes one optical flow another


def describe_flow(extraction: dict | None, short: bool = False) -> str:
    """Words for the flow an extraction made, e.g. ``'dis' flow clipped at +-20 px``; ``short``: a
    table cell, e.g. ``dis, +-20 px`` (``unknown`` without settings)."""
    if not extraction or not extraction.get("method"):
        return "unknown" if short else "unknown flow (no extraction settings recorded)"
    bound, options = extraction.get("flow_bound"), extraction.get("method_options")
    if short:
        return ", ".join([str(extraction["method"])] + ([f"+-{bound:g} px"] if isinstance(bound, (int, float)) else [])
                         + ([json.dumps(options, sort_keys=True)] if options else []))
    text = f"{extraction['method']!r} flow" + (f" clipped at +-{bound:g} px" if isinstance(bound, (int, float)) else "")
    return text + (f" (options {options})" if options else "")


def trained_extraction(checkpoint: str | os.PathLike) -> tuple[Path, dict | None] | None:
    """``(state.json, extraction settings)`` that the training of ``checkpoint`` recorded (its folder's
    ``state.json``, ``settings.run_info.extraction``); None when that folder records no training."""
    from utils.training import STATE_FILE, read_state

    state_path = Path(checkpoint).parent / STATE_FILE
    if not state_path.is_file():
        return None
    run_info = ((read_state(state_path.parent) or {}).get("settings") or {}).get("run_info") or {}
    if "extraction" not in run_info:
        return None
    return state_path, run_info["extraction"]


def check_trained_flow(checkpoint: str | os.PathLike, extraction: dict | None, frames_dir: Path) -> None:
    """Refuse to score a temporal model on flow of another method or bound than it was trained on.

    What it was trained on comes from the training's record (:func:`trained_extraction`), what
    the frames hold now from ``extraction``; both are named. A checkpoint without such a record
    (given as a path, or trained by an older version) is scored with a warning that it cannot be checked.
    """
    from utils.rawframes import SETTINGS_FILE

    record = trained_extraction(checkpoint)
    if record is None or record[1] is None or extraction is None:
        warnings.warn(f"{checkpoint}: no record of the flow this temporal model was trained on "
                      f"(its folder's state.json), so it cannot be checked against {describe_flow(extraction)} "
                      f"in {frames_dir / SETTINGS_FILE}", stacklevel=3)
        return
    state_path, trained = record
    differ = [k for k in FLOW_KEYS if (trained.get(k) or None) != (extraction.get(k) or None)]
    if differ:
        raise ValueError(
            f"{checkpoint}: this temporal model was trained on {describe_flow(trained)} ({state_path}), but "
            f"{frames_dir / SETTINGS_FILE} says the frames now hold {describe_flow(extraction)} (differs in "
            f"{', '.join(differ)}); its scores there would be wrong. Extract the frames again with the flow it "
            f"was trained on (notebook 01, -p flow_method={trained.get('method')}), or train the temporal "
            f"stream again on these frames (notebook 03)")


_digests: dict[tuple, str] = {}


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a checkpoint file's content: what identifies the model behind a score file.

    Computed once per file version in a process (about 0.5 s for the 284 MB of a ResNet-50 checkpoint
    with its optimizer state); a rewritten file (other inode, size, or modification or change time)
    is hashed again. Path and time alone do not identify a model: a copy keeps its content, a
    rewrite can keep its time.
    """
    path = Path(path)
    info = path.stat()
    key = (str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 22), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def stale_reason(scores: Scores, cfg: Config, path: str | os.PathLike) -> str | None:
    """Why the score file ``path`` no longer stands for what it names, or None when it still does.

    It does not when the checkpoint it names now has another content (trained again), when the
    frames were extracted again with other settings, or when it was made by an earlier version
    that recorded no checkpoint content. A checkpoint no longer on disk, or a model given in
    memory, cannot be checked and counts as current.
    """
    meta = scores.meta
    checkpoint = meta.get("checkpoint")
    if "fusion" in meta or checkpoint is None or str(checkpoint).startswith("<"):
        return None
    redo = ("re-run the evaluation that made it (notebook 04 for one frame, 05 for the whole video, "
            "or `python -m utils.run --from 04`)")
    if "checkpoint_sha256" not in meta:
        return (f"{path}: made by an earlier version that did not record the content of its checkpoint "
                f"{checkpoint}, so it cannot be told which model made it; {redo}")
    if Path(checkpoint).is_file():
        now = checkpoint_sha256(checkpoint)
        if now != meta["checkpoint_sha256"]:
            return (f"{path}: made by {checkpoint} with SHA-256 {meta['checkpoint_sha256'][:12]}, which now has "
                    f"SHA-256 {now[:12]} (trained again since); {redo}")
    try:
        extraction = extraction_settings(cfg)
    except ValueError as error:
        return str(error)
    if (meta.get("extraction") or None) != (extraction or None):
        return (f"{path}: made on frames extracted with {describe_flow(meta.get('extraction'))}, but the frames "
                f"now are from another extraction ({describe_flow(extraction)}); {redo}")
    return None


def extraction_method(cfg: Config) -> str | None:
    """The flow method recorded by the extraction (``None`` if nothing was extracted)."""
    return (extraction_settings(cfg) or {}).get("method")


def _load_if_matching(path: Path, settings: dict, videos: np.ndarray) -> Scores | None:
    """A saved score file if it was made with ``settings`` on a prefix of ``videos``, else None.

    ``settings`` holds what identifies the scores (checkpoint file and time, protocol, stride,
    subset, ...); the input geometry follows from the checkpoint.
    """
    try:
        saved = load_scores(path)
    except DamagedScoreFile as error:
        warnings.warn(f"{error}: recomputing it", stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    except (OSError, ValueError):
        return None
    if any(saved.meta.get(k) != v for k, v in settings.items()):
        return None
    if len(saved) > len(videos) or not np.array_equal(saved.video, videos[:len(saved)]):
        return None
    return saved


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# ----------------------------------------------------------------------------------------
# Everything a results table needs, from score files only
# ----------------------------------------------------------------------------------------
def current_scores(cfg: Config, stream: str, protocol: str, subset: str = "test",
                   problems: list[str] | None = None) -> Scores | None:
    """The score file of a stream if it exists and still stands for what it names (:func:`stale_reason`).

    A stale or damaged file gives None, with its reason (``<file>: what is wrong; what to do``)
    appended to ``problems`` when given, else warned about.
    """
    path = scores_path(cfg, stream, protocol, subset)
    if not path.is_file():
        return None
    try:
        scores = load_scores(path)
        reason = stale_reason(scores, cfg, path)
    except DamagedScoreFile as error:
        scores, reason = None, str(error)
    if reason is None:
        return scores
    if problems is None:
        warnings.warn(f"left out: {reason}", stacklevel=2)
    else:
        problems.append(reason)
    return None


def fusion_results(cfg: Config, protocol: str, problems: list[str] | None = None) -> dict[str, Scores]:
    """Test scores of both streams and both fusions under ``protocol``, read from score files.

    Keys: ``"spatial"``, ``"temporal"``, ``"average"`` and (when both validation score files
    exist) ``"weighted"``, whose ``meta["weight"]`` was chosen on the validation videos.
    Missing stream files are left out, and so are files that no longer stand for the checkpoint or
    the frames they name, or are damaged (:func:`current_scores`; their reasons go to ``problems``).
    """
    out: dict[str, Scores] = {}
    for stream in STREAMS:
        scores = current_scores(cfg, stream, protocol, "test", problems)
        if scores is not None:
            out[stream] = scores
    if len(out) == 2:
        out["average"] = average_fusion(out["spatial"], out["temporal"])
        val = [current_scores(cfg, s, protocol, "val", problems) for s in STREAMS]
        if all(v is not None for v in val):
            spatial_val, temporal_val = val
            weight, table = choose_fusion_weight(spatial_val, temporal_val)
            out["weighted"] = weighted_fusion(out["spatial"], out["temporal"], weight)
            out["weighted"].meta.update(n_val=len(spatial_val), weight_search=table.to_dict(orient="list"))
    return out


# ----------------------------------------------------------------------------------------
# Clips through a 3D network (notebook 07, utils.c3d)
# ----------------------------------------------------------------------------------------
CLIP_CHANNELS = {"rgb": 3, "flow": 2}


def load_clip_inputs(modality: str) -> InputLoader:
    """An :data:`InputLoader` of clips for :func:`score_videos`: at each position ``start`` the clip of
    ``T = stack_length`` RGB frames (``modality="rgb"``) or flows (``"flow"``) ``start .. start + T - 1``,
    ``crops`` inputs each (:func:`utils.generators.eval_crop_boxes`, the same crop on every frame;
    mirrored flow negates x). Each JPEG of the video is read once, however much the clips overlap."""
    from utils import generators

    _check_choice("modality", modality, tuple(CLIP_CHANNELS))

    def load(stream, frames_path, positions, *, image_size, stack_length, batch_size, crops=1):
        positions = [int(p) for p in positions]
        if any(b <= a for a, b in zip(positions, positions[1:])):
            raise ValueError("positions must be strictly increasing")
        read = (generators.read_frame if modality == "rgb"
                else lambda path, t: generators.read_flow_uint8(path, t, 1))
        kept: dict[int, np.ndarray] = {}          # frame / flow index -> uint8 image, until no later clip needs it
        per_batch = max(1, batch_size // crops)
        for i in range(0, len(positions), per_batch):
            chunk = positions[i:i + per_batch]
            for t in range(chunk[0], chunk[-1] + stack_length):
                if t not in kept:
                    kept[t] = read(frames_path, t)
            batch = []
            for start in chunk:
                pieces = [kept[t] for t in range(start, start + stack_length)]
                batch.append(generators.rgb_clip_test_inputs(np.stack(pieces), image_size, crops)
                             if modality == "rgb" else
                             generators.flow_volume_test_inputs(np.concatenate(pieces, axis=-1), image_size, crops))
            for t in [t for t in kept if t <= chunk[-1]]:
                del kept[t]
            yield np.concatenate(batch)

    return load


def check_clip_input(shape, modality: str, clip_length: int, source) -> None:
    """Raise unless ``shape`` ``(None, T, H, W, C)`` is a 3D network's input for ``modality`` clips of
    ``clip_length``; ``source`` names the checkpoint (or model) in the message."""
    _check_choice("modality", modality, tuple(CLIP_CHANNELS))
    if shape is None:
        return
    shape = tuple(shape)
    if len(shape) != 5:
        raise ValueError(f"{source} takes inputs of shape {shape[1:]}, not clips (T, H, W, C): it is not a "
                         f"3D network; check which checkpoint is given")
    if shape[-1] != CLIP_CHANNELS[modality]:
        raise ValueError(f"{source} takes clips with {shape[-1]} channels; {modality} clips have "
                         f"{CLIP_CHANNELS[modality]}: check which checkpoint is given for which modality")
    if shape[1] and int(shape[1]) != int(clip_length):
        raise ValueError(f"{source} takes clips of T = {shape[1]} frames, but clip_length = {clip_length}: "
                         f"pass clip_length={shape[1]}")


def checkpoint_batch_shape(path: str | os.PathLike) -> tuple | None:
    """The input shape ``(None, ...)`` stored in a ``.keras`` archive (any rank), read without building
    the model; None when the file is not such an archive or has no single input layer."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        shapes = [layer["config"]["batch_shape"] for layer in config["config"]["layers"]
                  if layer.get("class_name") == "InputLayer"]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None
    return tuple(shapes[0]) if len(shapes) == 1 else None


def evaluate_clips(cfg: Config, name: str, modality: str, protocol: str, subset: str = "test", *,
                   clip_length: int, model=None, checkpoint: str = "best", stride: int = 1,
                   segments: int | None = None, crops: int = 1, batch_size: int = 16,
                   index: pd.DataFrame | None = None, allow_missing: bool = False, force: bool = False,
                   save_every: int = 50, progress: bool = True) -> Scores:
    """Score every ``subset`` video with a 3D network on clips and save ``scores_path(cfg, name, protocol)``.

    ``name`` is the network's folder and score-file name (``"c3d_rgb"``, ``"c3d_flow"``): the model comes
    from ``models/<run>/<name>/<checkpoint>.keras`` unless ``model`` is given. The clips sit where the
    temporal stream's stacks sit, with ``L = clip_length`` (:func:`input_positions`): the one-frame
    protocol takes the clip at the middle of the video, the same moment as the two streams' one input;
    the whole-video protocol ``segments`` equally spaced clips (or every ``stride``-th one) and averages
    the softmax. Reused, resumed and recomputed by the same rules as :func:`evaluate_stream`.
    """
    _check_choice("modality", modality, tuple(CLIP_CHANNELS))
    _check_choice("protocol", protocol, PROTOCOLS)
    protocol_id = protocol_settings(protocol, stride=stride, segments=segments, crops=crops)
    ckpt = checkpoint_path(cfg, name, checkpoint)
    ckpt_id = _checkpoint_identity(ckpt, model, "train the 3D network first (notebook 07)")
    force = force or model is not None
    if model is None:
        check_clip_input(checkpoint_batch_shape(ckpt), modality, clip_length, ckpt)
    else:
        check_clip_input(getattr(model, "input_shape", None), modality, clip_length, "the model given")
    if index is None:
        from utils.dataset import build_index
        index = build_index(cfg)
    classes = index_class_names(index)
    rows = evaluation_rows(cfg, subset, index=index, stack_length=clip_length, allow_missing=allow_missing)
    settings = _score_settings(cfg, rows, extraction_settings(cfg), ckpt_id, stream=name, modality=modality,
                               subset=subset, **protocol_id, clip_length=int(clip_length),
                               stack_length=int(clip_length))
    out = scores_path(cfg, name, protocol, subset)
    done, previous = _saved_scores(out, settings, rows, force)
    if done is not None:
        return done
    if model is None:
        model = load_stream_model(ckpt)
    shape = getattr(model, "input_shape", None)
    image_size = int(shape[2]) if isinstance(shape, tuple) and len(shape) == 5 and shape[2] else cfg.image_size
    settings.update(image_size=image_size, flow_method=(settings["extraction"] or {}).get("method"))
    # the clips sit where the temporal stream's stacks of L = clip_length sit (input_positions("temporal", ...))
    return _score_in_chunks(model, rows, classes, settings, out, previous, "temporal", protocol,
                            image_size=image_size, stack_length=clip_length, stride=protocol_id["stride"],
                            segments=protocol_id["segments"], crops=crops, batch_size=batch_size,
                            loader=load_clip_inputs(modality), save_every=save_every, progress=progress)
