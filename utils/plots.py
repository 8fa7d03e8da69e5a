"""Small figures for the training notebooks (02, 03): predictions on inputs, flow stacks, learning rates.

Frames are shown after undoing the ResNet preprocessing; flow stacks as colour pictures
(hue = direction, brightness = speed; see :func:`utils.flow.flow_to_color`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from utils.flow import FLOW_BOUND
from utils.generators import flow_stack_to_color, undo_preprocessing


def input_picture(x: np.ndarray, pair: int = 0, max_magnitude: float | None = None) -> np.ndarray:
    """RGB ``uint8`` picture of one network input: a preprocessed frame (3 channels) or flow pair ``pair``."""
    if x.shape[-1] == 3:
        return undo_preprocessing(x)
    return flow_stack_to_color(x, pair, max_magnitude)


def predictions_figure(x: np.ndarray, labels: Sequence[int], scores: np.ndarray, class_names: Sequence[str],
                       max_items: int = 8, pair: int | None = None) -> Figure:
    """Inputs with their true class and the predicted one (green: right, red: wrong) and its probability.

    ``pair``: which flow pair of a stack to show (default: the middle one).
    """
    n = min(max_items, len(x))
    fig = Figure(figsize=(2.3 * n, 2.9))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, xi, yi, si in zip(axes, x[:n], labels[:n], scores[:n]):
        k = (xi.shape[-1] // 4) if pair is None else pair
        predicted = int(np.argmax(si))
        ax.imshow(input_picture(xi, k))
        ax.set_title(f"true: {class_names[int(yi)]}\npred: {class_names[predicted]} ({si[predicted]:.2f})",
                     fontsize=8, color="green" if predicted == int(yi) else "red")
        ax.axis("off")
    fig.tight_layout()
    return fig


def flow_stack_figure(stacks: dict[str, np.ndarray], pairs: Sequence[int] | None = None) -> Figure:
    """One row per named flow stack ``[S, S, 2L]``, one column per flow pair, on a common colour scale."""
    first = next(iter(stacks.values()))
    length = first.shape[-1] // 2
    pairs = list(pairs) if pairs is not None else sorted({0, length // 2, length - 1})
    magnitude = max(float(np.percentile(np.hypot(s[..., 0::2], s[..., 1::2]), 99)) for s in stacks.values())
    magnitude = max(magnitude, 1e-6) * FLOW_BOUND   # stacks are in units of FLOW_BOUND px; colours use pixels
    fig = Figure(figsize=(2.4 * len(pairs), 2.5 * len(stacks)))
    axes = fig.subplots(len(stacks), len(pairs), squeeze=False)
    for row, (name, stack) in zip(axes, stacks.items()):
        for ax, k in zip(row, pairs):
            ax.imshow(flow_stack_to_color(stack, k, magnitude))
            ax.set_title(f"{name}: flow {k + 1}/{length}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


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
