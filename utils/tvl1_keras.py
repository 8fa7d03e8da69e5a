"""Dual TV-L1 optical flow as batched Keras ops, step for step like OpenCV.

OpenCV's ``cv2.optflow.DualTVL1OpticalFlow`` (Zach, Pock & Bischof 2007, in the formulation of
Sanchez, Meinhardt-Llopis & Facciolo, IPOL 2013) is accurate but slow: about a second per 320x240
pair on one CPU core. This module writes the same algorithm with ``keras.ops`` so that it runs on
TensorFlow, JAX or PyTorch and, above all, on a GPU, many frame pairs at a time.

It follows OpenCV 5.0's CPU code (``opencv_contrib/modules/optflow/src/tvl1flow.cpp``) closely
enough to give the same flow to within a few hundredths of a pixel:

* grayscale ``uint8`` frames become float32 0..255 (no normalisation);
* pyramid: each level is ``cv::resize(previous, scale 0.8, INTER_LINEAR)`` (half-pixel centres,
  no anti-alias blur, size rounded from the previous level), at most 5 levels, none under 16 px;
* per level the dual variables ``p`` start at 0; the flow starts at the coarser level's flow,
  resized (INTER_LINEAR) and multiplied by 1/0.8;
* per warp: ``I1``, ``dI1/dx``, ``dI1/dy`` (centred differences, border replicated) are warped
  with bicubic interpolation (``cv::remap INTER_CUBIC``, a = -0.75, 0 outside the image);
* at the start of every outer iteration a 5x5 median filter (border replicated) smooths the flow;
* each inner iteration: thresholding step ``v``, divergence of ``p`` (``p`` is 0 outside the image),
  ``u = v + theta * div p``, forward differences of ``u`` (0 in the last row/column), dual update;
* per-pair stopping rule: a warp ends when ``sum((u - u_old)^2) <= epsilon^2 * pixels`` or after
  ``inner x outer`` iterations.

Batching. Pairs converge at very different speeds (a warp takes 2 to 300 inner iterations), so
a fixed batch would make every pair pay for the slowest. Instead each pyramid level keeps
``slots`` pairs in flight and, every ``chunk`` inner iterations, takes a scheduling step: free
slots take the next pairs of the queue, finished pairs write their flow back, and the slots that
start a warp (or an outer iteration) are warped (median-filtered) -- at most ``side_work`` of them
per step, gathered into a small batch, because a warp costs several iterations. Masks keep the
pairs independent: a pair's flow does not depend on its neighbours in the batch. Each pyramid
level is one Keras program (loops included, ``keras.ops.while_loop``), compiled once per
(pairs per call, height, width): about a minute per frame size on a CPU with XLA. With JAX, set
``JAX_COMPILATION_CACHE_DIR`` to keep compiled programs between runs.

Usage::

    from utils.tvl1_keras import TVL1Keras
    flow = TVL1Keras()                      # OpenCV defaults
    flows = flow(gray_frames)               # uint8[T, H, W] -> float32[T-1, H, W, 2]
    print(flow.device)                      # e.g. "jax on gpu:0 (NVIDIA H100 80GB HBM3)"

Its speed (real 320x240 clips) and parity with OpenCV (the ground-truth pairs) are measured by
``python -m utils.bench --stages tvl1keras,tvl1keras-parity``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops

FLT_EPSILON = float(np.finfo(np.float32).eps)
MIN_PYRAMID_SIDE = 16            # OpenCV stops the pyramid before a level narrower than this
CUBIC_A = -0.75                  # OpenCV's bicubic kernel parameter


@dataclass(frozen=True)
class TVL1Params:
    """TV-L1 parameters with OpenCV's defaults (``cv2.optflow.DualTVL1OpticalFlow_create()``)."""

    tau: float = 0.25               # time step of the dual update
    lambda_: float = 0.15           # weight of the data term (smaller: smoother flow)
    theta: float = 0.3              # coupling between u and v
    nscales: int = 5                # pyramid levels
    warps: int = 5                  # warps per level
    epsilon: float = 0.01           # stopping threshold (per pixel)
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8         # size ratio between pyramid levels
    gamma: float = 0.0              # illumination term; only 0 (OpenCV's default) is implemented
    median_filtering: int = 5       # median filter size between warps: 1 (off), 3 or 5

    def __post_init__(self):
        if self.gamma != 0:
            raise NotImplementedError(f"gamma={self.gamma}: only gamma=0 (OpenCV's default) is implemented")
        if self.median_filtering not in (1, 3, 5):
            raise ValueError(f"median_filtering must be 1, 3 or 5 (OpenCV's float median), got {self.median_filtering}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"scale_step must be in (0, 1), got {self.scale_step}")
        if min(self.nscales, self.warps, self.inner_iterations, self.outer_iterations) < 1:
            raise ValueError(f"nscales, warps, inner_iterations and outer_iterations must be >= 1: {self}")

    def opencv_kwargs(self) -> dict:
        """The same settings as keyword arguments of ``cv2.optflow.DualTVL1OpticalFlow_create``."""
        return dict(tau=self.tau, lambda_=self.lambda_, theta=self.theta, nscales=self.nscales,
                    warps=self.warps, epsilon=self.epsilon, innnerIterations=self.inner_iterations,
                    outerIterations=self.outer_iterations, scaleStep=self.scale_step, gamma=self.gamma,
                    medianFiltering=self.median_filtering)


def pyramid_sizes(height: int, width: int, nscales: int = 5, scale_step: float = 0.8) -> list[tuple[int, int]]:
    """(height, width) of each pyramid level, finest first, exactly as OpenCV computes them."""
    sizes = [(int(height), int(width))]
    for _ in range(1, nscales):
        h, w = sizes[-1]
        h, w = round(h * scale_step), round(w * scale_step)     # cv::resize: saturate_cast<int>(size * fx)
        if h < MIN_PYRAMID_SIDE or w < MIN_PYRAMID_SIDE:
            break
        sizes.append((h, w))
    return sizes


# --- image operations on batches float32[B, H, W] ------------------------------------------------
def _linear_taps(src_len: int, dst_len: int, scale: float):
    """Source indices and weights of cv::resize INTER_LINEAR along one axis (``scale`` = src/dst)."""
    pos = (np.arange(dst_len) + 0.5) * scale - 0.5          # float64, as OpenCV 5 does
    first = np.floor(pos).astype(np.int64)
    frac = (pos - first).astype(np.float32)
    frac[first < 0], first[first < 0] = 0, 0
    last = first >= src_len - 1
    frac[last], first[last] = 0, src_len - 1
    second = np.minimum(first + 1, src_len - 1)
    return (first.astype("int32"), second.astype("int32"),
            (np.float32(1) - frac).astype(np.float32), frac.astype(np.float32))


def resize_linear(images, size: tuple[int, int], scale: tuple[float, float] | None = None):
    """``cv::resize(..., INTER_LINEAR)`` of float32[B, H, W] to ``size`` = (height, width).

    ``scale`` = (source/destination) per axis as OpenCV uses it: ``1 / fx`` when the call gave a
    scale factor, else (by default) ``1 / (dst/src)``. Gathers and weights, not matrix products,
    so the result stays full float32 on GPUs that default matrix products to TF32.
    """
    images = ops.convert_to_tensor(images)
    src_h, src_w = images.shape[1], images.shape[2]
    dst_h, dst_w = size
    scale_y, scale_x = scale if scale is not None else (1.0 / (dst_h / src_h), 1.0 / (dst_w / src_w))
    # Constants become tensors first: a NumPy array cannot meet a GPU tensor in a PyTorch operator.
    x0, x1, ax0, ax1 = _linear_taps(src_w, dst_w, scale_x)
    ax0, ax1 = ops.convert_to_tensor(ax0), ops.convert_to_tensor(ax1)
    rows = ops.take(images, x0, axis=2) * ax0 + ops.take(images, x1, axis=2) * ax1
    y0, y1, ay0, ay1 = _linear_taps(src_h, dst_h, scale_y)
    ay0, ay1 = ops.convert_to_tensor(ay0[:, None]), ops.convert_to_tensor(ay1[:, None])
    return ops.take(rows, y0, axis=1) * ay0 + ops.take(rows, y1, axis=1) * ay1


def _cubic_weights(t):
    """OpenCV's ``interpolateCubic`` (a = -0.75) for fractional offsets ``t``."""
    a = CUBIC_A
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return w0, w1, w2, 1 - w0 - w1 - w2


def remap_cubic(images, flow_x, flow_y):
    """``cv::remap(image, x + flow_x, y + flow_y, INTER_CUBIC)`` with 0 outside the image.

    ``images``: a list of float32[B, H, W] warped with the same coordinates; ``flow_*``
    float32[B, H, W]. Returns the list of warped images. Each tap is a gather of single values
    from a flat zero-padded copy (gathers of single values are the fast kind on every backend).
    """
    flow_x, flow_y = ops.convert_to_tensor(flow_x), ops.convert_to_tensor(flow_y)
    batch, height, width = flow_x.shape
    pad = 4                                  # taps reach 2 px beyond the clamped corner below
    padded_h, padded_w = height + 2 * pad, width + 2 * pad
    tables = [ops.reshape(ops.pad(image, ((0, 0), (pad, pad), (pad, pad))), (-1,)) for image in images]

    map_x = flow_x + ops.arange(width, dtype="float32")[None, None, :]
    map_y = flow_y + ops.arange(height, dtype="float32")[:, None]
    floor_x, floor_y = ops.floor(map_x), ops.floor(map_y)
    wx = _cubic_weights(map_x - floor_x)
    wy = _cubic_weights(map_y - floor_y)
    # Far outside the image all 16 taps read 0; clamping keeps them inside the zero padding.
    col = ops.cast(ops.clip(floor_x, -3, width + 1), "int32") + (pad - 1)
    row = ops.cast(ops.clip(floor_y, -3, height + 1), "int32") + (pad - 1)
    first = ops.arange(batch, dtype="int32")[:, None, None] * (padded_h * padded_w) + row * padded_w + col

    warped = []
    for table in tables:
        out = None
        for j in range(4):
            line = None
            for i in range(4):
                tap = ops.take(table, first + (j * padded_w + i), axis=0) * wx[i]
                line = tap if line is None else line + tap
            out = line * wy[j] if out is None else out + line * wy[j]
        warped.append(out)
    return warped


def _replicate_pad(x, radius: int):
    """Pad float32[B, H, W] by ``radius`` pixels on each side, repeating the border pixels."""
    x = ops.convert_to_tensor(x)
    x = ops.concatenate([x[:, :1]] * radius + [x] + [x[:, -1:]] * radius, axis=1)
    return ops.concatenate([x[:, :, :1]] * radius + [x] + [x[:, :, -1:]] * radius, axis=2)


def centered_gradient(images):
    """OpenCV ``centeredGradient``: 0.5 * (next - previous), border replicated."""
    height, width = images.shape[1], images.shape[2]
    padded = _replicate_pad(images, 1)
    dx = 0.5 * (padded[:, 1:height + 1, 2:] - padded[:, 1:height + 1, :width])
    dy = 0.5 * (padded[:, 2:, 1:width + 1] - padded[:, :height, 1:width + 1])
    return dx, dy


def forward_gradient(u):
    """OpenCV ``forwardGradient``: u[x+1] - u[x], 0 in the last column / row."""
    u = ops.convert_to_tensor(u)
    zero_col = ops.zeros_like(u[:, :, :1])
    zero_row = ops.zeros_like(u[:, :1, :])
    dx = ops.concatenate([u[:, :, 1:] - u[:, :, :-1], zero_col], axis=2)
    dy = ops.concatenate([u[:, 1:, :] - u[:, :-1, :], zero_row], axis=1)
    return dx, dy


def divergence(v1, v2):
    """OpenCV ``divergence``: backward differences, the field is 0 outside the image."""
    v1, v2 = ops.convert_to_tensor(v1), ops.convert_to_tensor(v2)
    v1x = v1 - ops.concatenate([ops.zeros_like(v1[:, :, :1]), v1[:, :, :-1]], axis=2)
    v2y = v2 - ops.concatenate([ops.zeros_like(v2[:, :1, :]), v2[:, :-1, :]], axis=1)
    return v1x + v2y


# OpenCV's sorting networks (imgproc/src/median_blur.simd.hpp, medianBlur_SortNet), window read
# row by row; only the compare-exchanges that lead to the middle element are evaluated.
_MEDIAN3_NETWORK = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
    (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)
_MEDIAN5_NETWORK = (
    (1, 2), (0, 1), (1, 2), (4, 5), (3, 4), (4, 5), (0, 3), (2, 5), (2, 3), (1, 4), (1, 2), (3, 4),
    (7, 8), (6, 7), (7, 8), (10, 11), (9, 10), (10, 11), (6, 9), (8, 11), (8, 9), (7, 10), (7, 8), (9, 10),
    (0, 6), (4, 10), (4, 6), (2, 8), (2, 4), (6, 8), (1, 7), (5, 11), (5, 7), (3, 9), (3, 5), (7, 9),
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (13, 14), (12, 13), (13, 14), (16, 17), (15, 16), (16, 17), (12, 15),
    (14, 17), (14, 15), (13, 16), (13, 14), (15, 16), (19, 20), (18, 19), (19, 20), (21, 22), (23, 24), (21, 23),
    (22, 24), (22, 23), (18, 21), (20, 23), (20, 21), (19, 22), (22, 24), (19, 20), (21, 22), (23, 24), (12, 18),
    (16, 22), (16, 18), (14, 20), (20, 24), (14, 16), (18, 20), (22, 24), (13, 19), (17, 23), (17, 19), (15, 21),
    (15, 17), (19, 21), (13, 14), (15, 16), (17, 18), (19, 20), (21, 22), (23, 24), (0, 12), (8, 20), (8, 12),
    (4, 16), (16, 24), (12, 16), (2, 14), (10, 22), (10, 14), (6, 18), (6, 10), (10, 12), (1, 13), (9, 21),
    (9, 13), (5, 17), (13, 17), (3, 15), (11, 23), (11, 15), (7, 19), (7, 11), (11, 13), (11, 12),
)


def _pruned(network, output: int):
    """The network's steps as (a, b, keep_min, keep_max), without work that cannot reach ``output``."""
    live, steps = {output}, []
    for a, b in reversed(network):
        keep_min, keep_max = a in live, b in live
        if keep_min or keep_max:
            steps.append((a, b, keep_min, keep_max))
            live |= {a, b}
    return steps[::-1]


_MEDIAN_STEPS = {3: _pruned(_MEDIAN3_NETWORK, 4), 5: _pruned(_MEDIAN5_NETWORK, 12)}


def median_blur(images, ksize: int = 5):
    """``cv::medianBlur`` of float32[B, H, W] (ksize 3 or 5, border replicated), by a sorting network."""
    height, width = images.shape[1], images.shape[2]
    padded = _replicate_pad(images, ksize // 2)
    p = [padded[:, dy:dy + height, dx:dx + width] for dy in range(ksize) for dx in range(ksize)]
    for a, b, keep_min, keep_max in _MEDIAN_STEPS[ksize]:
        low = ops.minimum(p[a], p[b]) if keep_min else None
        high = ops.maximum(p[a], p[b]) if keep_max else None
        p[a], p[b] = low, high
    return p[ksize * ksize // 2]


# --- the solver ------------------------------------------------------------------------------------
def _warp_terms(I0, I1, I1x, I1y, u1, u2):
    """Warp I1 and its gradient by the flow; return I1wx, I1wy, |grad|^2 and rho's constant part."""
    I1w, I1wx, I1wy = remap_cubic([I1, I1x, I1y], u1, u2)
    grad = I1wx * I1wx + I1wy * I1wy
    rho_c = I1w - I1wx * u1 - I1wy * u2 - I0
    return I1wx, I1wy, grad, rho_c


def _threshold(u, I1wd, rho, grad, l_t):
    """OpenCV ``estimateV`` for one flow component."""
    safe_grad = ops.where(grad > FLT_EPSILON, grad, 1.0)
    inside = ops.where(grad > FLT_EPSILON, -rho / safe_grad * I1wd, 0.0)
    step = ops.where(rho < -l_t * grad, l_t * I1wd, ops.where(rho > l_t * grad, -l_t * I1wd, inside))
    return u + step


def _dual_update(p1, p2, ux, uy, taut):
    """OpenCV ``estimateDualVariables`` for one flow component."""
    norm = 1.0 + taut * ops.sqrt(ux * ux + uy * uy)
    return (p1 + taut * ux) / norm, (p2 + taut * uy) / norm


_SLOT_STATE = ("index", "alive", "needs_warp", "needs_median", "warp", "n", "u1", "u2", "p11", "p12", "p21",
               "p22", "I0", "I1", "I1x", "I1y", "I1wx", "I1wy", "grad", "rho_c")


def _first_flagged(flags, count: int):
    """Indices of ``count`` slots, flagged ones first (lowest index first), and whether each is flagged."""
    slots = flags.shape[0]
    order = ops.where(flags, 0, slots) + ops.arange(slots, dtype="int32")
    _, chosen = ops.top_k(-order, k=count)
    return chosen, ops.take(flags, chosen, axis=0)


def _solve_level(I0_all, I1_all, U1, U2, n_valid, params: TVL1Params, slots: int, chunk: int,
                 side_work: int | None = None):
    """Run every pair through all warps of one pyramid level; returns U1, U2 and the step count.

    ``I*_all`` float32[N, h, w]; ``U1``, ``U2`` float32[N + 1, h, w], the flow each pair starts
    from (row N is a scratch row that absorbs writes from empty slots); pairs ``0 .. n_valid-1``
    are real, the rest padding.

    One loop step = one scheduling step: fill empty slots from the queue; warp the images of up
    to ``side_work`` slots that start a warp; median-filter up to ``side_work`` slots that start an
    outer iteration; run ``chunk`` inner iterations on the slots that are ready (a slot waiting
    for its warp or median sits the chunk out); then see which warps and pairs have finished.
    Warps and medians cost several iterations each, so they run only on the slots that need them.
    """
    pairs, height, width = I0_all.shape
    side_work = max(1, min(slots, side_work or -(-slots // 4)))
    scaled_epsilon = np.float32(params.epsilon * params.epsilon * height * width)
    max_iterations = params.inner_iterations * params.outer_iterations
    l_t = np.float32(params.lambda_ * params.theta)
    taut = np.float32(params.tau / params.theta)
    theta = np.float32(params.theta)
    mask = lambda flags: flags[:, None, None]  # noqa: E731  (per-slot flag -> image mask)
    zeros = lambda: ops.zeros((slots, height, width), "float32")  # noqa: E731  (fresh: some backends scatter in place)

    def refill(s, U1, U2, queue):
        """Give each empty slot the next pair of the queue (flow from U, dual variables 0)."""
        empty = ~s["alive"]
        next_index = queue + ops.cumsum(ops.cast(empty, "int32")) - 1
        fill = empty & (next_index < n_valid)
        index = ops.where(fill, next_index, s["index"])
        names = ("I0", "I1", "I1x", "I1y", "u1", "u2", "p11", "p12", "p21", "p22")

        def load():
            safe = ops.minimum(index, pairs - 1)
            I1 = ops.take(I1_all, safe, axis=0)
            new = (ops.take(I0_all, safe, axis=0), I1, *centered_gradient(I1),
                   ops.take(U1, index, axis=0), ops.take(U2, index, axis=0), zeros(), zeros(), zeros(), zeros())
            return tuple(ops.where(mask(fill), a, s[k]) for k, a in zip(names, new))

        s.update(zip(names, ops.cond(ops.any(fill), load, lambda: tuple(s[k] for k in names))))
        s["index"], s["alive"] = index, s["alive"] | fill
        s["needs_warp"] = s["needs_warp"] | fill
        s["warp"] = ops.where(fill, 0, s["warp"])
        s["n"] = ops.where(fill, 0, s["n"])
        return ops.minimum(queue + ops.sum(ops.cast(empty, "int32")), n_valid)

    def update_some(s, flag: str, names, compute):
        """Replace ``names`` by ``compute(s, chosen)`` in up to ``side_work`` slots flagged ``flag``;
        returns the slots that were served (the others keep their flag for the next step)."""
        flags = s[flag]

        def work():
            chosen, chosen_flags = _first_flagged(flags, side_work)
            new = compute(s, chosen)
            rows = ops.expand_dims(chosen, 1)
            served = flags & ops.any(ops.arange(slots, dtype="int32")[:, None] == chosen[None, :], axis=1)
            updated = tuple(ops.scatter_update(s[k], rows, ops.where(mask(chosen_flags), a,
                                                                     ops.take(s[k], chosen, axis=0)))
                            for k, a in zip(names, new))
            return updated + (served,)

        out = ops.cond(ops.any(flags), work, lambda: tuple(s[k] for k in names) + (ops.zeros_like(flags),))
        s.update(zip(names, out[:-1]))
        served = out[-1]
        s[flag] = flags & ~served
        return served

    def warp(s, chosen):
        """Warp I1 and its gradient by the current flow (OpenCV: remap + calcGradRho)."""
        return _warp_terms(*(ops.take(s[k], chosen, axis=0) for k in ("I0", "I1", "I1x", "I1y", "u1", "u2")))

    def median(s, chosen):
        """Median filter of the flow at the start of an outer iteration (u1 and u2 in one batch)."""
        both = ops.concatenate([ops.take(s["u1"], chosen, axis=0), ops.take(s["u2"], chosen, axis=0)], axis=0)
        both = median_blur(both, params.median_filtering)
        return both[:side_work], both[side_work:]

    def inner_iterations(s):
        """``chunk`` inner iterations of every ready slot; returns which slots converged."""
        ready = s["alive"] & ~s["needs_warp"] & ~s["needs_median"]
        I1wx, I1wy, grad, rho_c = s["I1wx"], s["I1wy"], s["grad"], s["rho_c"]

        def step(_, carry):
            u1, u2, p11, p12, p21, p22, n, converged = carry
            running = ready & ~converged
            rho = rho_c + (I1wx * u1 + I1wy * u2)
            v1 = _threshold(u1, I1wx, rho, grad, l_t)
            v2 = _threshold(u2, I1wy, rho, grad, l_t)
            new_u1 = v1 + theta * divergence(p11, p12)
            new_u2 = v2 + theta * divergence(p21, p22)
            error = ops.sum(ops.square(new_u1 - u1) + ops.square(new_u2 - u2), axis=(1, 2))
            u1x, u1y = forward_gradient(new_u1)
            u2x, u2y = forward_gradient(new_u2)
            new_p11, new_p12 = _dual_update(p11, p12, u1x, u1y, taut)
            new_p21, new_p22 = _dual_update(p21, p22, u2x, u2y, taut)
            run = mask(running)
            return (ops.where(run, new_u1, u1), ops.where(run, new_u2, u2),
                    ops.where(run, new_p11, p11), ops.where(run, new_p12, p12),
                    ops.where(run, new_p21, p21), ops.where(run, new_p22, p22),
                    n + ops.cast(running, "int32"), converged | (running & (error <= scaled_epsilon)))

        carry = (s["u1"], s["u2"], s["p11"], s["p12"], s["p21"], s["p22"], s["n"], ops.zeros((slots,), "bool"))
        s["u1"], s["u2"], s["p11"], s["p12"], s["p21"], s["p22"], s["n"], converged = ops.fori_loop(
            0, chunk, step, carry)
        return ready, converged

    def body(*values):
        s = dict(zip(_SLOT_STATE, values[:-4]))
        U1, U2, queue, steps = values[-4:]
        queue = refill(s, U1, U2, queue)
        warped = update_some(s, "needs_warp", ("I1wx", "I1wy", "grad", "rho_c"), warp)
        if params.median_filtering > 1:
            s["needs_median"] = s["needs_median"] | warped       # a warp starts with an outer iteration
            update_some(s, "needs_median", ("u1", "u2"), median)
        ready, converged = inner_iterations(s)
        # A warp ends when it converged or ran out of iterations; after the last warp the pair
        # writes its flow back to U and leaves its slot. Otherwise an outer iteration may begin.
        warp_end = ready & (converged | (s["n"] >= max_iterations))
        s["warp"] = s["warp"] + ops.cast(warp_end, "int32")
        if params.median_filtering > 1:
            outer_start = ready & ~warp_end & (s["n"] % params.inner_iterations == 0)
            s["needs_median"] = s["needs_median"] | outer_start
        s["n"] = ops.where(warp_end, 0, s["n"])
        done = warp_end & (s["warp"] >= params.warps)

        def write_back():
            target = ops.expand_dims(ops.where(done, s["index"], pairs), 1)
            return ops.scatter_update(U1, target, s["u1"]), ops.scatter_update(U2, target, s["u2"])

        U1, U2 = ops.cond(ops.any(done), write_back, lambda: (U1, U2))
        s["needs_warp"] = s["needs_warp"] | (warp_end & ~done)
        s["alive"] = s["alive"] & ~done
        return tuple(s[k] for k in _SLOT_STATE) + (U1, U2, queue, steps + 1)

    def more_work(*values):
        alive, queue = values[_SLOT_STATE.index("alive")], values[-2]
        return ops.any(alive) | (queue < n_valid)

    no = ops.zeros((slots,), "bool")
    none = ops.zeros((slots,), "int32")
    state = dict(index=none + pairs, alive=no, needs_warp=no, needs_median=no, warp=none, n=none)
    state.update((k, zeros()) for k in _SLOT_STATE[6:])
    counter = ops.convert_to_tensor(0, "int32")
    final = ops.while_loop(more_work, body, tuple(state[k] for k in _SLOT_STATE) + (U1, U2, counter, counter))
    return final[-4], final[-3], final[-1]


def level_flow(frames0, frames1, coarse_flow, valid, *, level: int, params: TVL1Params = TVL1Params(),
               slots: int | None = None, chunk: int = 2, side_work: int | None = None, return_steps: bool = False):
    """TV-L1 flow of N pairs at pyramid ``level`` (0 = full size), float32[N, h, w, 2].

    ``frames*`` uint8 or float32[N, H, W] full-size frames (the level's images are resized from
    them here); ``coarse_flow`` float32[N, h', w', 2] the result of level + 1 (ignored for the
    coarsest level); ``valid`` bool[N] marks real pairs (they come first; padding gets 0).
    """
    pairs, height, width = frames0.shape
    sizes = pyramid_sizes(height, width, params.nscales, params.scale_step)
    slots = pairs if slots is None else max(1, min(int(slots), pairs))
    if params.inner_iterations % chunk:
        raise ValueError(f"chunk={chunk} must divide inner_iterations={params.inner_iterations}")
    images0, images1 = ops.cast(frames0, "float32"), ops.cast(frames1, "float32")
    downscale = (1.0 / params.scale_step, 1.0 / params.scale_step)
    for size in sizes[1:level + 1]:
        images0, images1 = resize_linear(images0, size, downscale), resize_linear(images1, size, downscale)

    spare = ops.zeros((1, *sizes[level]), "float32")
    if level == len(sizes) - 1:
        U1 = U2 = ops.zeros((pairs + 1, *sizes[level]), "float32")
    else:       # the coarser flow, resized and scaled by 1 / scale_step
        zoom = np.float32(1.0 / params.scale_step)
        U1 = ops.concatenate([resize_linear(coarse_flow[..., 0], sizes[level]) * zoom, spare], axis=0)
        U2 = ops.concatenate([resize_linear(coarse_flow[..., 1], sizes[level]) * zoom, spare], axis=0)
    n_valid = ops.sum(ops.cast(valid, "int32"))
    U1, U2, steps = _solve_level(images0, images1, U1, U2, n_valid, params, slots, chunk, side_work)
    flow = ops.stack([U1[:pairs], U2[:pairs]], axis=-1)
    return (flow, steps) if return_steps else flow


def tvl1_flow_batch(frames0, frames1, valid=None, *, params: TVL1Params = TVL1Params(), slots: int | None = None,
                    chunk: int = 2, side_work: int | None = None):
    """TV-L1 flow of N frame pairs: uint8/float32[N, H, W] x2 -> float32[N, H, W, 2] (pixels).

    Plain ``keras.ops``, all levels in one call (eagerly, or inside one compiled function);
    :class:`TVL1Keras` compiles one program per level instead, which compiles much faster.
    ``slots`` pairs are iterated together (default: all); ``chunk`` inner iterations run between
    two scheduling steps and must divide ``params.inner_iterations``; ``side_work`` slots at most
    are warped or median-filtered per step (default: a quarter of the slots).
    """
    frames0, frames1 = ops.convert_to_tensor(frames0), ops.convert_to_tensor(frames1)
    pairs, height, width = frames0.shape
    valid = ops.ones((pairs,), "bool") if valid is None else ops.convert_to_tensor(valid)
    levels = len(pyramid_sizes(height, width, params.nscales, params.scale_step))
    flow = ops.zeros((pairs, 1, 1, 2), "float32")
    for level in reversed(range(levels)):
        flow = level_flow(frames0, frames1, flow, valid, level=level, params=params, slots=slots, chunk=chunk,
                          side_work=side_work)
    return flow


# --- compiled programs, batch sizes, devices -------------------------------------------------------
class _LevelProgram(keras.Model):
    """:func:`level_flow` of one pyramid level as a Keras model, so that ``predict_on_batch``
    compiles it (XLA on TensorFlow and JAX) once per input shape, on whichever backend is active.
    One program per level: a single program for all levels compiles several times slower."""

    def __init__(self, shape: tuple[int, int, int], level: int, params: TVL1Params, slots: int, chunk: int,
                 side_work: int | None):
        super().__init__(name=f"tvl1_keras_level{level}")
        self.shape, self.level, self.params = shape, level, params
        self.slots, self.chunk, self.side_work = slots, chunk, side_work
        self.built = True       # nothing to build; and predict_on_batch would otherwise run it eagerly once

    def call(self, inputs):
        frames0, frames1, coarse_flow, valid = inputs
        # Static shapes, even where the backend traces with an unknown batch size.
        frames0, frames1 = ops.reshape(frames0, self.shape), ops.reshape(frames1, self.shape)
        sizes = pyramid_sizes(*self.shape[1:], self.params.nscales, self.params.scale_step)
        coarse_size = sizes[self.level + 1] if self.level + 1 < len(sizes) else (1, 1)
        coarse_flow = ops.reshape(coarse_flow, (self.shape[0], *coarse_size, 2))
        valid = ops.reshape(valid, self.shape[:1])
        flow, steps = level_flow(frames0, frames1, coarse_flow, valid, level=self.level, params=self.params,
                                 slots=self.slots, chunk=self.chunk, side_work=self.side_work, return_steps=True)
        return flow, ops.reshape(steps, (1,))


def default_device() -> str:
    """The device Keras ops run on by default, e.g. ``"gpu:0"``, ``"cuda:0"`` or ``"cpu:0"``."""
    try:
        devices = keras.distribution.list_devices()      # JAX and TensorFlow
        if devices:
            return devices[0]
    except (AttributeError, NotImplementedError, RuntimeError):
        pass                                              # backends without keras.distribution
    return str(getattr(ops.convert_to_tensor(np.zeros(1, np.float32)), "device", "cpu:0")).lower()


def device_description() -> str:
    """Backend and device the Keras ops run on, e.g. ``"jax on gpu:0 (NVIDIA H100 80GB HBM3)"``."""
    device = default_device()
    text = f"{keras.backend.backend()} on {device}"
    if "cpu" not in device.lower():
        gpu = _nvidia_smi("name")
        if gpu:
            text += f" ({gpu[0]})"
    return text


def _nvidia_smi(field: str) -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def device_memory_bytes() -> tuple[int, str]:
    """Memory the flow may plan with: the first GPU's total memory, else the host's available RAM."""
    if "cpu" not in default_device().lower():
        total = _nvidia_smi("memory.total")
        if total:
            return int(float(total[0]) * 2**20), "gpu"
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available_kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable")))
        return available_kb * 1024, "cpu"
    except (OSError, StopIteration, ValueError):
        return 4 * 2**30, "cpu"


# Float32 images held per slot (state, warp terms, median temporaries, ...) and per queued pair
# (pyramid, flow, output), with a margin; measured peaks stay below these.
_IMAGES_PER_SLOT = 64
_IMAGES_PER_PAIR = 12


def choose_slots(height: int, width: int, *, memory_fraction: float = 0.5, max_slots: int | None = None,
                 pairs_per_slot: int = 4) -> int:
    """How many pairs to iterate together at this frame size, from the device's memory.

    Default caps: 4 on a CPU (measured fastest on 2 cores: more slots only add memory traffic),
    64 on a GPU (about 5 million pixels per operation at 320x240: enough to fill a large GPU).
    """
    memory, kind = device_memory_bytes()
    per_slot = 4 * height * width * (_IMAGES_PER_SLOT + pairs_per_slot * _IMAGES_PER_PAIR)
    cap = max_slots if max_slots is not None else (64 if kind == "gpu" else 4)
    return int(max(1, min(cap, memory * memory_fraction // per_slot)))


class TVL1Keras:
    """Batched TV-L1 optical flow with Keras ops, the same flow as OpenCV's ``DualTVL1OpticalFlow``.

    ``TVL1Keras(**opts)(gray_frames)`` maps ``uint8[T, H, W]`` to ``float32[T-1, H, W, 2]``;
    :meth:`pairs` takes any list of pairs of one size. Options: the :class:`TVL1Params` fields
    (OpenCV names in snake case, e.g. ``lambda_=0.15``), ``slots`` (pairs iterated together,
    default from device memory), ``pairs_per_slot`` (queue depth: pairs per call = slots x this),
    ``chunk`` (inner iterations between scheduling steps), ``side_work`` (slots warped or
    median-filtered per step, default a quarter of the slots), ``jit_compile`` (passed to
    ``Model.compile``; ``"auto"``: XLA with JAX, and with TensorFlow when a GPU is present;
    PyTorch runs eagerly).
    After each call, ``last_steps`` holds the scheduling steps each level took (coarsest first).
    """

    def __init__(self, *, slots: int | None = None, pairs_per_slot: int = 4, chunk: int | None = None,
                 side_work: int | None = None, jit_compile: bool | str = "auto", memory_fraction: float = 0.5,
                 **params):
        self.params = TVL1Params(**params)
        self.device = device_description()
        on_cpu = device_memory_bytes()[1] == "cpu"
        self.slots, self.pairs_per_slot = slots, int(pairs_per_slot)
        self.chunk = int(chunk) if chunk else (1 if on_cpu else 2)     # measured best on a 2-core CPU: 1
        self.side_work, self.jit_compile, self.memory_fraction = side_work, jit_compile, memory_fraction
        if self.params.inner_iterations % self.chunk:
            raise ValueError(f"chunk={chunk} must divide inner_iterations={self.params.inner_iterations}")
        self._programs: dict[tuple, list[_LevelProgram]] = {}
        self.last_steps: list[int] = []

    def __repr__(self):
        return (f"TVL1Keras({self.device}, slots={self.slots or 'auto'}, pairs_per_slot={self.pairs_per_slot}, "
                f"chunk={self.chunk}, side_work={self.side_work or 'auto'}, {asdict(self.params)})")

    def plan(self, height: int, width: int, n_pairs: int, full_call: bool = False) -> tuple[int, int]:
        """(pairs per call, slots) for ``n_pairs`` pairs of this size.

        A call holds ``slots x pairs_per_slot`` pairs; fewer pairs are padded to a power of two,
        at least a quarter of that, so a frame size compiles at most three program sets
        (``full_call``: always the full call, one program set). Padding pairs never enter a slot:
        they cost memory and transfers, not iterations.
        """
        max_slots = self.slots or choose_slots(height, width, memory_fraction=self.memory_fraction,
                                               pairs_per_slot=self.pairs_per_slot)
        max_call = max_slots * self.pairs_per_slot
        call = max_call if full_call else \
            min(max_call, max(-(-max_call // 4), 2 ** math.ceil(math.log2(max(1, n_pairs)))))
        return call, max(1, min(max_slots, math.ceil(call / self.pairs_per_slot)))

    def programs(self, height: int, width: int, call: int, slots: int) -> list[_LevelProgram]:
        """The compiled level programs for calls of ``call`` pairs of this size, coarsest first."""
        levels = len(pyramid_sizes(height, width, self.params.nscales, self.params.scale_step))
        key = (call, height, width, slots)
        if key not in self._programs:
            self._programs[key] = []
            for level in reversed(range(levels)):
                program = _LevelProgram((call, height, width), level, self.params, slots, self.chunk,
                                        self.side_work)
                program.compile(jit_compile=self.jit_compile)
                self._programs[key].append(program)
        return self._programs[key]

    def pairs(self, frames0: np.ndarray, frames1: np.ndarray, full_call: bool = False) -> np.ndarray:
        """Flow from ``frames0[i]`` to ``frames1[i]``: uint8[N, H, W] x2 -> float32[N, H, W, 2].

        ``full_call``: every call has the full planned size (see :meth:`plan`)."""
        frames0, frames1 = np.asarray(frames0), np.asarray(frames1)
        if frames0.shape != frames1.shape or frames0.ndim != 3 or frames0.shape[0] < 1:
            raise ValueError(f"expected two uint8[N, H, W] stacks of the same shape, "
                             f"got {frames0.shape} and {frames1.shape}")
        if frames0.dtype != np.uint8 or frames1.dtype != np.uint8:
            raise ValueError(f"expected uint8 grayscale frames, got {frames0.dtype} and {frames1.dtype}")
        n, height, width = frames0.shape
        if min(height, width) < 3:
            raise ValueError(f"frames of {height}x{width} are too small for TV-L1 (at least 3x3)")
        call, slots = self.plan(height, width, n, full_call)
        programs = self.programs(height, width, call, slots)
        flows = np.empty((n, height, width, 2), np.float32)
        for start in range(0, n, call):
            count = min(call, n - start)
            batch0 = np.zeros((call, height, width), np.uint8)
            batch1 = np.zeros((call, height, width), np.uint8)
            batch0[:count], batch1[:count] = frames0[start:start + count], frames1[start:start + count]
            valid = np.arange(call) < count
            flow = np.zeros((call, 1, 1, 2), np.float32)
            self.last_steps = []
            for program in programs:              # coarse to fine, one compiled program per level
                with _quiet_retracing_warnings():
                    flow, steps = program.predict_on_batch([batch0, batch1, flow, valid])
                flow = np.asarray(flow)
                self.last_steps.append(int(np.asarray(steps).reshape(-1)[0]))
            flows[start:start + count] = flow[:count]
        return flows

    def video(self, gray_frames: np.ndarray) -> np.ndarray:
        """Flow between consecutive frames: uint8[T, H, W] -> float32[T-1, H, W, 2]."""
        gray_frames = np.asarray(gray_frames)
        if gray_frames.dtype != np.uint8 or gray_frames.ndim != 3 or gray_frames.shape[0] < 2:
            raise ValueError(f"expected grayscale frames uint8[T>=2, H, W], "
                             f"got {gray_frames.dtype}{list(gray_frames.shape)}")
        return self.pairs(gray_frames[:-1], gray_frames[1:])

    __call__ = video


@contextlib.contextmanager
def _quiet_retracing_warnings():
    """TensorFlow warns when several models trace their predict step; one model per level does."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def make_video_flow(**options) -> TVL1Keras:
    """Factory for the flow registry (``utils.flow``): a per-video callable
    ``uint8[T, H, W] -> float32[T-1, H, W, 2]``; its ``.device`` names where it runs."""
    return TVL1Keras(**options)


make_tvl1_keras = make_video_flow


# --- the reference --------------------------------------------------------------------------------
def opencv_flow(frame0: np.ndarray, frame1: np.ndarray, params: TVL1Params) -> np.ndarray:
    """OpenCV's own Dual TV-L1 on one pair with the same parameters: the reference this solver matches."""
    import cv2
    # A fresh object per pair: OpenCV lowers its own nscales for small images and keeps it.
    return cv2.optflow.DualTVL1OpticalFlow_create(**params.opencv_kwargs()).calc(frame0, frame1, None)
