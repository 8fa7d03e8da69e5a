"""Small figures for the training notebooks (02, 03, 07, 08): predictions on inputs, flow stacks, clips,
learning rates, fusions compared.

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


def predictions_figure(x: np.ndarray, labels: Sequence[int], scores: np.ndarray, class_names: Sequence[str],
                       max_items: int = 8, pair: int | None = None) -> Figure:
    """Inputs with their true class and the predicted one (green: right, red: wrong) and its probability.

    Flow stacks show flow pair ``pair`` (default: the middle one) on one colour scale, with the key.
    """
    n = min(max_items, len(x))
    is_flow = x.shape[-1] != 3
    k = (x.shape[-1] // 4 if pair is None else pair) if is_flow else 0
    scale = flow_speed_scale(x[:n], [k]) if is_flow else None
    fig = Figure(figsize=(2.3 * (n + KEY_WIDTH * is_flow), 2.9))
    axes = fig.subplots(1, n + is_flow, squeeze=False, width_ratios=[1] * n + [KEY_WIDTH] * is_flow)[0]
    for ax, xi, yi, si in zip(axes, x[:n], labels[:n], scores[:n]):
        predicted = int(np.argmax(si))
        ax.imshow(input_picture(xi, k, scale))
        ax.set_title(f"true: {class_names[int(yi)]}\npred: {class_names[predicted]} ({si[predicted]:.2f})",
                     fontsize=8, color="green" if predicted == int(yi) else "red")
        ax.axis("off")
    if is_flow:
        draw_flow_colour_key(axes[-1], scale)
    fig.tight_layout()
    return fig


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
            ax.set_title(f"{name}: flow {k + 1}/{length}", fontsize=8)
            ax.axis("off")
        row[-1].axis("off")
    draw_flow_colour_key(axes[0, -1], scale)
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
        ax.legend(fontsize=8)
    else:
        ax.plot(epochs, history["learning_rate"], marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


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
            ax.set_title(f"{name}: t = {t + 1}/{length}", fontsize=7)
            ax.axis("off")
        if flows:
            row[-1].axis("off")
    if flows:
        draw_flow_colour_key(axes[0, -1], scale)
    if title:
        fig.suptitle(title, fontsize=9)
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
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(part)), part.index, fontsize=8)
        ax.set_ylim(0, 125)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("top-1 (%)")
        ax.set_title(protocol, fontsize=9)
        ax.legend(fontsize=7, loc="upper center", ncol=len(part.columns))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
