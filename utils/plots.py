"""Figures of the notebooks: inputs and predictions, flow stacks, learning rates (02, 03), confusion
matrices side by side, fusion margins and per-class accuracy (04, 05), clips of a 3D network and fusions
compared (07, 08), and clips as animations (01, ``utils.predict``).

Frames are shown after undoing the ResNet preprocessing; flow stacks as colour pictures
(hue = direction, brightness = speed; see :func:`utils.flow.flow_to_color`), always with their
colour key (:func:`utils.flow.draw_flow_colour_key`) and one speed scale per figure.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.evaluation import one_frame_start
from utils.flow import FLOW_BOUND, draw_flow_colour_key
from utils.generators import flow_stack_to_color, read_flow_stack, undo_preprocessing

KEY_WIDTH = 0.6   # width of the colour-key column, relative to a picture
MIN_FONT = 9      # points, at the saved size: no text of these figures is smaller


def input_picture(x: np.ndarray, pair: int = 0, max_magnitude: float | None = None) -> np.ndarray:
    """RGB ``uint8`` picture of one network input: a preprocessed frame (3 channels) or flow pair ``pair``."""
    if x.shape[-1] == 3:
        return undo_preprocessing(x)
    return flow_stack_to_color(x, pair, max_magnitude)


def flow_speed_scale(stacks: Sequence[np.ndarray], pairs: Sequence[int] | None = None) -> float:
    """One colour scale for network-ready flow stacks: the 99th percentile of their speed, in px per frame.

    ``pairs``: the flow pairs (0-based) that will be shown (default: all).
    """
    k = slice(None) if pairs is None else list(pairs)
    speeds = [np.hypot(stack[..., 0::2][..., k], stack[..., 1::2][..., k]).ravel() for stack in stacks]
    return max(float(np.percentile(np.concatenate(speeds), 99)), 1e-6) * FLOW_BOUND   # stacks: units of 20 px


def input_strip_figure(x: np.ndarray, titles: Sequence[str], colours: Sequence[str] | None = None,
                       pair: int | None = None, height: float = 2.5) -> Figure:
    """Network inputs in a row, each with its title: frames as pictures, flow stacks as the colour picture
    of flow pair ``pair`` (default: the middle one) on one speed scale, with the colour key."""
    n = len(titles)
    is_flow = x.shape[-1] != 3
    k = (x.shape[-1] // 4 if pair is None else pair) if is_flow else 0
    scale = flow_speed_scale(x[:n], [k]) if is_flow else None
    fig = Figure(figsize=(2.2 * (n + KEY_WIDTH * is_flow), height))
    axes = fig.subplots(1, n + is_flow, squeeze=False, width_ratios=[1] * n + [KEY_WIDTH] * is_flow)[0]
    for ax, xi, title, colour in zip(axes, x[:n], titles, colours or ["black"] * n):
        ax.imshow(input_picture(xi, k, scale))
        ax.set_title(title, fontsize=MIN_FONT, color=colour)
        ax.axis("off")
    if is_flow:
        draw_flow_colour_key(axes[-1], scale, fontsize=MIN_FONT)
    fig.tight_layout()
    return fig


def predictions_figure(x: np.ndarray, labels: Sequence[int], scores: np.ndarray, class_names: Sequence[str],
                       max_items: int = 8, pair: int | None = None) -> Figure:
    """Inputs with their true class and the predicted one (green: right, red: wrong) and its probability.

    Flow stacks show flow pair ``pair`` (default: the middle one) on one colour scale, with the key.
    """
    n = min(max_items, len(x))
    predicted = [int(np.argmax(si)) for si in scores[:n]]
    titles = [f"true: {class_names[int(y)]}\npred: {class_names[p]} ({si[p]:.2f})"
              for y, p, si in zip(labels[:n], predicted, scores[:n])]
    colours = ["green" if p == int(y) else "red" for y, p in zip(labels[:n], predicted)]
    return input_strip_figure(x, titles, colours, pair, height=2.9)


def batch_figure(x: np.ndarray, labels: Sequence[int], class_names: Sequence[str], max_items: int = 8,
                 pair: int | None = None) -> Figure:
    """The first inputs of a batch with their class (see :func:`input_strip_figure`)."""
    n = min(max_items, len(x))
    return input_strip_figure(x, [str(class_names[int(y)]).replace("_", "\n", 1) for y in labels[:n]], pair=pair)


def flow_stack_figure(stacks: dict[str, np.ndarray], pairs: Sequence[int] | None = None) -> Figure:
    """One row per named flow stack ``[S, S, 2L]``, one column per flow pair, on a common colour scale (keyed)."""
    first = next(iter(stacks.values()))
    length = first.shape[-1] // 2
    pairs = list(pairs) if pairs is not None else sorted({0, length // 2, length - 1})
    scale = flow_speed_scale(list(stacks.values()), pairs)
    fig = Figure(figsize=(2.4 * (len(pairs) + KEY_WIDTH), 2.5 * len(stacks)))
    axes = fig.subplots(len(stacks), len(pairs) + 1, squeeze=False, width_ratios=[1] * len(pairs) + [KEY_WIDTH])
    for row, (name, stack) in zip(axes, stacks.items()):
        for ax, k in zip(row, pairs):
            ax.imshow(flow_stack_to_color(stack, k, scale))
            ax.set_title(f"{name}: flow {k + 1}/{length}", fontsize=9)
            ax.axis("off")
        row[-1].axis("off")
    draw_flow_colour_key(axes[0, -1], scale, fontsize=MIN_FONT)
    fig.tight_layout()
    return fig


def flow_channels_figure(frame: np.ndarray, stack: np.ndarray, pair: int = 0, title: str = "") -> Figure:
    """A frame next to channels x and y of flow pair ``pair`` of a network-ready stack, in px per frame.

    Both channels share one symmetric colour scale (the 99.5th percentile of their absolute values),
    shown by a colour bar: red = right / down, blue = left / up, white = the image's mean motion.
    """
    channels = stack[..., 2 * pair:2 * pair + 2] * np.float32(FLOW_BOUND)   # units of 20 px -> px
    limit = max(float(np.percentile(np.abs(channels), 99.5)), 0.01)
    fig = Figure(figsize=(10, 3.1), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(frame)
    axes[0].set_title("frame", fontsize=9)
    for ax, c, axis, positive in zip(axes[1:], range(2), "xy", ("right", "down")):
        image = ax.imshow(channels[..., c], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"channel {axis}{pair + 1} ({positive} +)", fontsize=9)
    bar = fig.colorbar(image, ax=list(axes[1:]), shrink=0.9)
    bar.set_label("px per frame, minus the mean", fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def horizontal_motion_example(rows: pd.DataFrame, stack_length: int, candidates: int = 8) -> pd.Series:
    """A clip that moves sideways, for showing the flip (mirrored, vertical motion looks the same).

    The first clip of a demo ``*_sideways`` class if there is one; otherwise, among the first clip of
    each of the first ``candidates`` classes, the one whose middle flow stack has the largest mean
    ``|x|`` after removing each channel's mean (camera motion).
    """
    sideways = rows[rows["class_name"].str.endswith("_sideways") & (rows["n_flows"] >= stack_length)]
    if len(sideways):
        return sideways.iloc[0]
    pool = rows[rows["n_flows"] >= stack_length].groupby("class_name", sort=False).head(1).head(candidates)
    if pool.empty:
        raise ValueError(f"no clip has {stack_length} flows: run notebook 01 (extraction) first")

    def mean_abs_x(row) -> float:
        start = one_frame_start(int(row["n_flows"]), stack_length)
        x = read_flow_stack(row["frames_path"], start, stack_length)[..., 0::2]
        return float(np.abs(x - x.mean(axis=(0, 1))).mean())

    return pool.loc[pool.apply(mean_abs_x, axis=1).idxmax()]


def learning_rate_figure(history) -> Figure:
    """The learning rate of each epoch (``history.csv``), phases marked."""
    fig = Figure(figsize=(5, 2.6))
    ax = fig.add_subplot()
    epochs = history["epoch"].to_numpy() + 1
    if "phase" in history:
        for phase in dict.fromkeys(history["phase"]):
            rows = history["phase"] == phase
            ax.plot(epochs[rows], history.loc[rows, "learning_rate"], marker=".", label=str(phase))
        ax.legend(fontsize=9)
    else:
        ax.plot(epochs, history["learning_rate"], marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# Scores of the test videos: confusion matrices side by side, margins, per-class accuracy
# ----------------------------------------------------------------------------------------
def class_order(class_names: Sequence[str]) -> list[int]:
    """Indices of ``class_names`` in the order the figures show them: on the demo colour by colour
    (red, green, blue) and within a colour up, down, sideways, so each stream's blocks show; else as given."""
    from utils.demo_data import APPEARANCES, DEMO_CLASSES, MOTIONS

    if not set(class_names) <= set(DEMO_CLASSES):
        return list(range(len(class_names)))
    rank = {f"{c}_{m}": (i, j) for i, c in enumerate(APPEARANCES) for j, m in enumerate(MOTIONS)}
    return sorted(range(len(class_names)), key=lambda k: rank[class_names[k]])


def confusion_matrices_figure(results: dict, title: str = "") -> Figure:
    """Confusion matrices (counts of videos: true class x predicted class) of several networks side by side.

    ``results``: ``{name: evaluation.Scores}`` on the same videos, e.g. spatial, temporal and their
    average. Cells hold whole numbers of videos; on the demo the classes are grouped by colour, so the
    spatial stream's matrix has 3 x 3 blocks (colour right, motion a guess) and the temporal stream's
    stripes (motion right, colour a guess).
    """
    from sklearn.metrics import confusion_matrix

    first = next(iter(results.values()))
    order = class_order(first.class_names)
    names = [first.class_names[k] for k in order]
    n = len(names)
    side = min(7.0, max(3.4, 0.33 * n + 1.2))
    fig = Figure(figsize=(side * len(results) + 0.6, side + 0.9), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    label_font = MIN_FONT if n <= 20 else None
    for ax, (name, scores) in zip(axes, results.items()):
        cm = confusion_matrix(scores.label, scores.predicted, labels=order)
        right = int(np.trace(cm))
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.sum(axis=1).max()))
        if n <= 15:
            for (i, j), count in np.ndenumerate(cm):
                if count:
                    ax.text(j, i, str(int(count)), ha="center", va="center", fontsize=MIN_FONT,
                            color="white" if count > 0.6 * cm.sum(axis=1).max() else "black")
        if label_font:
            ax.set_xticks(range(n), names, rotation=90, fontsize=label_font)
            ax.set_yticks(range(n), names if ax is axes[0] else [""] * n, fontsize=label_font)
        else:    # many classes: numbers every 5, the names are in the index
            ticks = list(range(0, n, 5))
            ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=MIN_FONT)
            ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=MIN_FONT)
        if order != list(range(n)) and n == 9:      # the demo: lines between the colours
            for edge in (2.5, 5.5):
                ax.axhline(edge, color="grey", lw=0.8)
                ax.axvline(edge, color="grey", lw=0.8)
        ax.set_title(f"{name}: {right}/{int(cm.sum())} right", fontsize=MIN_FONT + 1)
        ax.set_xlabel("predicted class", fontsize=MIN_FONT)
    axes[0].set_ylabel("true class (videos per cell)", fontsize=MIN_FONT)
    if title:
        fig.suptitle(title, fontsize=MIN_FONT + 1)
    return fig


def fusion_margins_figure(scores, threshold: float = 0.03, title: str = "") -> Figure:
    """Each test video's margin under a fusion: the true class's probability minus the best other one's,
    sorted; below 0 the video is wrong, below ``threshold`` it is won by a hair."""
    from utils.narrative import fusion_margins

    margins = np.sort(fusion_margins(scores))
    fig = Figure(figsize=(7.5, 2.8), layout="constrained")
    ax = fig.add_subplot()
    colours = np.where(margins < 0, "tab:red", np.where(margins < threshold, "tab:orange", "tab:green"))
    ax.bar(np.arange(1, len(margins) + 1), margins, color=colours, width=0.8)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(threshold, color="tab:orange", lw=0.8, ls="--", label=f"margin {threshold:.2f}")
    close = int(((margins >= 0) & (margins < threshold)).sum())
    ax.set_title(title or f"{int((margins > 0).sum())}/{len(margins)} right, {close} by less than {threshold:.2f}",
                 fontsize=MIN_FONT + 1)
    ax.set_xlabel("test videos, sorted by margin", fontsize=MIN_FONT)
    ax.set_ylabel("P(true) - P(best other)", fontsize=MIN_FONT)
    ax.tick_params(labelsize=MIN_FONT)
    ax.legend(fontsize=MIN_FONT, loc="upper left")
    return fig


def per_class_accuracy_figure(results: dict, title: str = "") -> Figure:
    """Per-class top-1 (%) of each network as grouped horizontal bars, the legend above the bars."""
    from utils.evaluation import per_class_accuracy

    frame = pd.DataFrame({name: per_class_accuracy(s) for name, s in results.items()}) * 100
    first = next(iter(results.values()))
    frame = frame.reindex([first.class_names[k] for k in class_order(first.class_names)][::-1])
    n, k = len(frame), len(frame.columns)
    fig = Figure(figsize=(8, max(3.0, 0.9 + 0.16 * n * k)), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / max(1, k)
    for i, name in enumerate(frame.columns):
        ax.barh(np.arange(n) + ((k - 1) / 2 - i) * height, frame[name].fillna(0), height, label=name)
    ax.set_yticks(range(n), frame.index, fontsize=MIN_FONT)
    ax.set_xlim(0, 100)
    ax.tick_params(axis="x", labelsize=MIN_FONT)
    ax.set_xlabel("top-1 (%) on the class's test videos", fontsize=MIN_FONT)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=min(k, 4), fontsize=MIN_FONT)
    if title:
        ax.set_title(title, fontsize=MIN_FONT + 1)
    return fig


# ----------------------------------------------------------------------------------------
# Moving pictures: a clip beside its colour-coded flow, as an animated GIF
# ----------------------------------------------------------------------------------------
def clip_animation(frames: Sequence[np.ndarray], flows: Sequence[np.ndarray], *, zoom: int | None = None,
                   fps: float = 10.0, max_magnitude: float | None = None) -> bytes:
    """An animated GIF (bytes): each RGB frame beside the colour-coded flow that starts at it, and the key.

    ``flows[i]`` is the flow from ``frames[i]`` to ``frames[i + 1]`` in px ([H, W, 2] float). One colour
    scale for the whole clip (the 99th percentile of its speeds unless ``max_magnitude``); small frames
    (the demo's 48 px) are enlarged ``zoom`` times with square pixels. Written with imageio (Pillow).
    """
    import cv2
    import imageio.v3 as iio

    from utils.flow import flow_colour_key, flow_to_color

    if len(frames) != len(flows) or not len(frames):
        raise ValueError(f"need as many flows as frames (the flow after each frame), got {len(frames)} "
                         f"frames and {len(flows)} flows")
    height, width = frames[0].shape[:2]
    zoom = zoom or max(1, int(round(160 / max(height, width))))
    if max_magnitude is None:
        speeds = np.concatenate([np.hypot(f[..., 0], f[..., 1]).ravel() for f in flows])
        max_magnitude = max(float(np.percentile(speeds, 99)), 1e-3)
    size = (width * zoom, height * zoom)
    key = cv2.resize(flow_colour_key(65), (height * zoom // 2,) * 2, interpolation=cv2.INTER_AREA)
    key_column = np.full((height * zoom, key.shape[1], 3), 255, np.uint8)
    key_column[:key.shape[0]] = key
    gap = np.full((height * zoom, max(2, zoom * 2), 3), 255, np.uint8)
    pictures = []
    for frame, flow in zip(frames, flows):
        big = lambda image: cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
        pictures.append(np.concatenate([big(frame), gap, big(flow_to_color(flow, max_magnitude)), gap, key_column],
                                       axis=1))
    return iio.imwrite("<bytes>", np.stack(pictures), extension=".gif", duration=1000 / fps, loop=0)


def rawframes_animation(frames_path, max_pairs: int = 48, **options) -> bytes:
    """:func:`clip_animation` of an extracted video folder: up to ``max_pairs`` consecutive frames from the
    middle of the clip, each with the stored flow after it (as the temporal stream reads it)."""
    from utils.rawframes import count_frames
    from utils.flow import read_flow_jpegs
    from utils.generators import read_frame

    n_frames, n_flows = count_frames(frames_path)
    if n_flows < 1:
        raise ValueError(f"{frames_path}: no flow to show (extract the video first)")
    count = min(max_pairs, n_flows)
    first = 1 + (n_flows - count) // 2
    indices = range(first, first + count)
    return clip_animation([read_frame(frames_path, i) for i in indices],
                          [read_flow_jpegs(frames_path, i) for i in indices], **options)


class Animation:
    """A GIF for a notebook, as an ``<img>`` with the GIF inline: it plays in JupyterLab (trusted or not) and
    nbviewer, and is kept in the saved notebook."""

    def __init__(self, gif: bytes, caption: str = ""):
        self.gif, self.caption = gif, caption

    def _repr_mimebundle_(self, include=None, exclude=None):
        import base64

        data = base64.b64encode(self.gif).decode("ascii")
        html = f'<img src="data:image/gif;base64,{data}" alt="{self.caption}"/>'
        if self.caption:
            html = f"<figure>{html}<figcaption>{self.caption}</figcaption></figure>"
        # HTML only (one copy of the GIF): every viewer draws it, JupyterLab's sanitizer included (it checks the
        # schemes of href and cite, not of src), and nbconvert/nbviewer, which draw no image/gif output.
        return {"text/html": html, "text/plain": f"<animated GIF, {len(self.gif) // 1024} KB: {self.caption}>"}

    def save(self, path):
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(self.gif)
        tmp.replace(path)
        return path


def clip_figure(clips: dict[str, np.ndarray], steps: Sequence[int] | None = None, title: str = "") -> Figure:
    """One row per named clip ``[T, S, S, C]`` of a 3D network, one column per time step ``steps`` (default:
    all, at most 8 evenly spaced): RGB clips as frames, flow volumes as colour pictures on one scale (keyed)."""
    first = next(iter(clips.values()))
    length = first.shape[0]
    steps = list(steps) if steps is not None else sorted({int(round(k)) for k in np.linspace(0, length - 1, min(8, length))})
    flows = [clip for clip in clips.values() if clip.shape[-1] == 2]
    scale = flow_speed_scale([c.transpose(1, 2, 0, 3).reshape(*c.shape[1:3], -1) for c in flows]) if flows else None
    fig = Figure(figsize=(1.6 * (len(steps) + KEY_WIDTH * bool(flows)), 1.9 * len(clips) + 0.3))
    axes = fig.subplots(len(clips), len(steps) + bool(flows), squeeze=False,
                        width_ratios=[1] * len(steps) + [KEY_WIDTH] * bool(flows))
    for row, (name, clip) in zip(axes, clips.items()):
        for ax, t in zip(row, steps):
            ax.imshow(input_picture(clip[t], 0, scale))
            ax.set_title(f"{name}: t = {t + 1}/{length}", fontsize=MIN_FONT)
            ax.axis("off")
        if flows:
            row[-1].axis("off")
    if flows:
        draw_flow_colour_key(axes[0, -1], scale, fontsize=MIN_FONT)
    if title:
        fig.suptitle(title, fontsize=MIN_FONT)
    fig.tight_layout()
    return fig


def fusion_comparison_figure(table: pd.DataFrame, title: str = "") -> Figure:
    """Top-1 (%) of each fusion (``table``: columns ``fusion``, ``protocol``, ``videos``, ``top1``) on the videos
    it was fitted on (validation) and on the test videos, one panel per protocol."""
    protocols = list(dict.fromkeys(table["protocol"]))
    fig = Figure(figsize=(4.2 * len(protocols), 3.2))
    axes = fig.subplots(1, len(protocols), squeeze=False)[0]
    for ax, protocol in zip(axes, protocols):
        part = table[table["protocol"] == protocol].pivot(index="fusion", columns="videos", values="top1")
        part = part.reindex(index=list(dict.fromkeys(table["fusion"])), columns=list(dict.fromkeys(table["videos"])))
        width = 0.8 / max(1, len(part.columns))
        for i, column in enumerate(part.columns):
            bars = ax.bar(np.arange(len(part)) + (i - (len(part.columns) - 1) / 2) * width, part[column], width,
                          label=column)
            ax.bar_label(bars, fmt="%.0f", fontsize=MIN_FONT)
        ax.set_xticks(range(len(part)), part.index, fontsize=MIN_FONT)
        ax.set_ylim(0, 125)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("top-1 (%)")
        ax.set_title(protocol, fontsize=MIN_FONT)
        ax.legend(fontsize=MIN_FONT, loc="upper center", ncol=len(part.columns))
    if title:
        fig.suptitle(title, fontsize=MIN_FONT)
    fig.tight_layout()
    return fig
