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
``slots`` pairs in flight and, every ``chunk`` inner iterations, takes a scheduling step: a fixed
number (``side_work``) of the slots that need it are served -- a finished pair writes its flow
back and the slot takes the next pair of the queue, a slot that starts a warp is warped, one that
starts an outer iteration is median-filtered -- then every ready slot runs ``chunk`` inner
iterations, each stopping by itself. Masks select what each slot keeps, so the pairs stay
independent (a pair's flow does not depend on its neighbours in the batch) and no step branches on
a device value: under XLA on a GPU every branch (``cond``) and every loop test is a copy to the
host and a wait. The only data-dependent control flow left is each level's "work left?", tested on
the device every ``check_every`` steps (on a CPU, where a branch costs no wait, a step also skips
its service when no slot needs one: ``skip_idle_service``). The coarsest level takes the pairs in order; every finer
level takes them longest first by the coarser level's iteration counts, so the slowest pairs do not
start last. All levels, and (``quantize``) the uint8 quantisation of the stored flow, run in one
Keras program compiled once per (pairs per call, height, width): about a minute per frame size
on a CPU with XLA. With JAX, set ``JAX_COMPILATION_CACHE_DIR`` to keep compiled programs between
runs.

Options for the GPU: ``storage="float16"`` (or ``"bfloat16"``) keeps the dual variables and the
warp terms in 16 bits (``u`` stays float32), ``kernel="pallas"`` (JAX only) runs each chunk of
inner iterations as one fused kernel on tiles (:mod:`utils.tvl1_pallas`). ``python -m utils.bench
--stages tvl1keras-storage`` measures what 16 bits cost in EPE and iterations.

Usage::

    from utils.tvl1_keras import TVL1Keras
    flow = TVL1Keras()                      # OpenCV defaults
    flows = flow(gray_frames)               # uint8[T, H, W] -> float32[T-1, H, W, 2]
    print(flow.device)                      # e.g. "jax on gpu:0 (NVIDIA H100 80GB HBM3)"
    stored = flow.pairs(frames0, frames1, quantize=20.0)   # uint8, as utils.flow.quantize_flow

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


STORAGE_DTYPES = ("float32", "float16", "bfloat16")     # storage of p and the warp terms (u: float32)
KERNELS = ("keras", "pallas")                           # the inner loop: Keras ops (any backend) or Pallas (JAX)
_FLOW_DUAL = ("u1", "u2", "p11", "p12", "p21", "p22")
_TERMS = ("I1wx", "I1wy", "grad", "rho_c")
_SLOT_STATE = ("index", "alive", "finished", "needs_warp", "needs_median", "warp", "n", "total") + _FLOW_DUAL + _TERMS
_LEVEL_STATE = ("U1", "U2", "counts", "starts", "queue", "steps")


def make_keras_inner_iterations(params: TVL1Params, chunk: int, storage: str = "float32"):
    """``chunk`` inner iterations of every ready slot in Keras ops, masked per slot.

    ``inner(state, terms, ready, scaled_epsilon)``: ``state`` = (u1, u2, p11, p12, p21, p22)
    [slots, h, w] (u float32, p in ``storage``), ``terms`` = (I1wx, I1wy, grad, rho_c) in
    ``storage``, ``ready`` bool[slots]; returns the new state, the iterations each slot ran and
    whether it converged (``sum((u - u_old)^2) <= scaled_epsilon`` after an iteration: it then stops).
    ``p`` is rounded to ``storage`` after every iteration (what storing it between kernels does).
    """
    l_t = np.float32(params.lambda_ * params.theta)
    taut = np.float32(params.tau / params.theta)
    theta = np.float32(params.theta)

    def inner(state, terms, ready, scaled_epsilon):
        I1wx, I1wy, grad, rho_c = (ops.cast(t, "float32") for t in terms)

        def step(_, carry):
            u1, u2, p11, p12, p21, p22, n, converged = carry
            running = ready & ~converged
            p11f, p12f, p21f, p22f = (ops.cast(p, "float32") for p in (p11, p12, p21, p22))
            rho = rho_c + (I1wx * u1 + I1wy * u2)
            v1 = _threshold(u1, I1wx, rho, grad, l_t)
            v2 = _threshold(u2, I1wy, rho, grad, l_t)
            new_u1 = v1 + theta * divergence(p11f, p12f)
            new_u2 = v2 + theta * divergence(p21f, p22f)
            error = ops.sum(ops.square(new_u1 - u1) + ops.square(new_u2 - u2), axis=(1, 2))
            u1x, u1y = forward_gradient(new_u1)
            u2x, u2y = forward_gradient(new_u2)
            new_p11, new_p12 = _dual_update(p11f, p12f, u1x, u1y, taut)
            new_p21, new_p22 = _dual_update(p21f, p22f, u2x, u2y, taut)
            run = running[:, None, None]
            keep = lambda new, old: ops.where(run, ops.cast(new, old.dtype), old)   # noqa: E731
            return (keep(new_u1, u1), keep(new_u2, u2), keep(new_p11, p11), keep(new_p12, p12),
                    keep(new_p21, p21), keep(new_p22, p22),
                    n + ops.cast(running, "int32"), converged | (running & (error <= scaled_epsilon)))

        slots = ready.shape[0]
        carry = (*state, ops.zeros((slots,), "int32"), ops.zeros((slots,), "bool"))
        *state, ran, converged = ops.fori_loop(0, chunk, step, carry)
        return tuple(state), ran, converged

    return inner


def _first_flagged(flags, count: int):
    """Indices of ``count`` slots, flagged ones first (lowest index first), and whether each is flagged."""
    slots = flags.shape[0]
    order = ops.where(flags, 0, slots) + ops.arange(slots, dtype="int32")
    _, chosen = ops.top_k(-order, k=count)
    return chosen, ops.take(flags, chosen, axis=0)


def longest_first(counts, valid, params: TVL1Params = TVL1Params()):
    """Queue order for the next finer level: real pairs by decreasing ``counts`` (the inner
    iterations they took at the coarser level; ties by index), padding pairs last. int32[N]."""
    pairs = counts.shape[0]
    most = params.warps * params.inner_iterations * params.outer_iterations
    rank = ops.where(valid, most - ops.cast(counts, "int32"), 2 * most + 1)   # 0 .. 2 * most + 1, smaller first
    key = rank * pairs + ops.arange(pairs, dtype="int32")                     # unique: any sort gives one order
    return ops.cast(ops.argsort(key), "int32")


def solve_level(I0_all, I1_all, U1, U2, order, n_valid, params: TVL1Params, slots: int, chunk: int,
                side_work: int | None = None, check_every: int = 1, storage: str = "float32", inner=None,
                skip_idle_service: bool = False):
    """Run every pair through all warps of one pyramid level, ``slots`` at a time.

    ``I*_all`` float32[N, h, w]; ``U1``, ``U2`` float32[N + 1, h, w], the flow each pair starts
    from (row N is a scratch row that absorbs the writes of empty slots); ``order`` int32[N] the
    queue (pairs ``order[0 .. n_valid-1]`` are real). Returns ``U1``, ``U2``, ``counts`` and
    ``starts`` int32[N + 1] (inner iterations of each pair; the step it entered a slot) and the
    number of scheduling steps.

    One scheduling step: (1) service, always the same amount of work, on ``side_work`` slots that
    need it (lowest index first): a finished pair writes its flow back, an empty slot takes the
    next pair of the queue, a slot that starts a warp is warped, a slot that starts an outer
    iteration is median-filtered; masks select what each served slot keeps. (2) ``chunk`` inner
    iterations (``inner``, default the Keras-ops loop) of the slots that are ready, each stopping
    by itself. (3) Bookkeeping: which warps and pairs ended. No step branches on a device value:
    the only data-dependent control flow is the loop's test "work left?", evaluated on the device
    every ``check_every`` steps (extra steps after the end do nothing). ``skip_idle_service``: skip
    the service when no slot needs it, one ``cond`` per step (cheap on a CPU, where it saves most
    of the service's work; a host round trip per step under XLA on a GPU).
    """
    pairs, height, width = I0_all.shape
    side_work = max(1, min(slots, side_work or -(-slots // 4)))
    scaled_epsilon = np.float32(params.epsilon * params.epsilon * height * width)
    max_iterations = params.inner_iterations * params.outer_iterations
    median = params.median_filtering > 1
    inner = inner or make_keras_inner_iterations(params, chunk, storage)
    I1x_all, I1y_all = centered_gradient(I1_all)
    mask = lambda flags: flags[:, None, None]  # noqa: E731  (per-slot flag -> image mask)
    keys = _SLOT_STATE + _LEVEL_STATE

    def needs_service(s):
        return s["finished"] | s["needs_warp"] | s["needs_median"] | (~s["alive"] & (s["queue"] < n_valid))

    def service(s):
        chosen, served = _first_flagged(needs_service(s), side_work)
        rows = ops.expand_dims(chosen, 1)
        old = {name: ops.take(s[name], chosen, axis=0) for name in _SLOT_STATE}   # the chosen slots
        index, alive, finished, u1, u2 = (old[k] for k in ("index", "alive", "finished", "u1", "u2"))
        # 1. a finished pair writes its flow and its iteration count back (others: the scratch row)
        target = ops.expand_dims(ops.where(served & finished, index, pairs), 1)
        s["U1"], s["U2"] = ops.scatter_update(s["U1"], target, u1), ops.scatter_update(s["U2"], target, u2)
        s["counts"] = ops.scatter_update(s["counts"], target, old["total"])
        # 2. a freed or empty slot takes the next pair of the queue
        take = served & (finished | ~alive)
        position = s["queue"] + ops.cumsum(ops.cast(take, "int32")) - 1
        fill = take & (position < n_valid)
        s["queue"] = ops.minimum(s["queue"] + ops.sum(ops.cast(take, "int32")), n_valid)
        queued = ops.take(order, ops.minimum(position, pairs - 1), axis=0)
        index = ops.where(fill, queued, ops.where(take, pairs, index))
        u1 = ops.where(mask(fill), ops.take(s["U1"], index, axis=0), u1)
        u2 = ops.where(mask(fill), ops.take(s["U2"], index, axis=0), u2)
        s["starts"] = ops.scatter_update(s["starts"], ops.expand_dims(ops.where(fill, index, pairs), 1),
                                         ops.zeros_like(index) + s["steps"])
        # 3. warp I1 and its gradient by the current flow (OpenCV: remap + calcGradRho)
        warp = served & (old["needs_warp"] | fill)
        safe = ops.minimum(index, pairs - 1)
        terms = _warp_terms(*(ops.take(a, safe, axis=0) for a in (I0_all, I1_all, I1x_all, I1y_all)), u1, u2)
        new = {name: ops.where(mask(warp), ops.cast(value, storage), old[name]) for name, value in zip(_TERMS, terms)}
        # 4. median filter at the start of an outer iteration (a warp starts one)
        if median:
            smooth = served & (old["needs_median"] | warp)
            both = median_blur(ops.concatenate([u1, u2], axis=0), params.median_filtering)
            u1 = ops.where(mask(smooth), both[:side_work], u1)
            u2 = ops.where(mask(smooth), both[side_work:], u2)
        new.update({name: ops.where(mask(fill), ops.zeros_like(old[name]), old[name])   # a new pair's p start at 0
                    for name in ("p11", "p12", "p21", "p22")})
        new.update(u1=u1, u2=u2, index=index, alive=fill | (alive & ~take), finished=finished & ~served,
                   needs_warp=old["needs_warp"] & ~served, needs_median=old["needs_median"] & ~served,
                   warp=ops.where(fill, 0, old["warp"]), n=ops.where(fill, 0, old["n"]),
                   total=ops.where(fill, 0, old["total"]))
        for name, value in new.items():
            s[name] = ops.scatter_update(s[name], rows, value)

    def served(values):
        s = dict(zip(keys, values))
        service(s)
        return tuple(s[k] for k in keys)

    def step(s):
        if skip_idle_service:
            values = tuple(s[k] for k in keys)
            s.update(zip(keys, ops.cond(ops.any(needs_service(s)), lambda: served(values), lambda: values)))
        else:
            service(s)
        ready = s["alive"] & ~s["finished"] & ~s["needs_warp"] & ~s["needs_median"]
        state, ran, converged = inner(tuple(s[k] for k in _FLOW_DUAL), tuple(s[k] for k in _TERMS), ready,
                                      scaled_epsilon)
        s.update(zip(_FLOW_DUAL, state))
        s["n"], s["total"] = s["n"] + ran, s["total"] + ran
        # A warp ends when it converged or ran out of iterations; after the last warp the pair is
        # finished (its flow is written back by the next service). Otherwise an outer iteration may begin.
        warp_end = ready & (converged | (s["n"] >= max_iterations))
        s["warp"] = s["warp"] + ops.cast(warp_end, "int32")
        if median:
            s["needs_median"] = s["needs_median"] | (ready & ~warp_end & (s["n"] % params.inner_iterations == 0))
        s["n"] = ops.where(warp_end, 0, s["n"])
        done = warp_end & (s["warp"] >= params.warps)
        s["finished"] = s["finished"] | done
        s["needs_warp"] = s["needs_warp"] | (warp_end & ~done)
        s["steps"] = s["steps"] + 1

    def steps(values):
        s = dict(zip(keys, values))
        step(s)
        return tuple(s[k] for k in keys)

    def body(*values):
        if check_every == 1:
            return steps(values)
        return ops.fori_loop(0, check_every, lambda _, v: steps(v), tuple(values))

    def more_work(*values):
        s = dict(zip(keys, values))
        return ops.any(s["alive"]) | (s["queue"] < n_valid)

    no, none = ops.zeros((slots,), "bool"), ops.zeros((slots,), "int32")
    state = dict(index=none + pairs, alive=no, finished=no, needs_warp=no, needs_median=no, warp=none, n=none,
                 total=none, U1=U1, U2=U2, counts=ops.zeros((pairs + 1,), "int32"),
                 starts=ops.zeros((pairs + 1,), "int32") - 1, queue=ops.convert_to_tensor(0, "int32"),
                 steps=ops.convert_to_tensor(0, "int32"))
    for name in _FLOW_DUAL + _TERMS:
        state[name] = ops.zeros((slots, height, width), "float32" if name in ("u1", "u2") else storage)
    final = dict(zip(keys, ops.while_loop(more_work, body, tuple(state[k] for k in keys))))
    return final["U1"], final["U2"], final["counts"], final["starts"], final["steps"]


def quantize_flow_ops(flow, bound: float):
    """:func:`utils.flow.quantize_flow` in Keras ops (on the device): clip to +-``bound``, then
    ``round(255 * (v + bound) / (2 * bound))`` as uint8, the same bytes as the NumPy version."""
    bound = float(bound)
    scaled = (ops.clip(flow, -bound, bound) + np.float32(bound)) * np.float32(255.0 / (2.0 * bound))
    return ops.cast(ops.round(scaled), "uint8")


def flow_pyramid(frames0, frames1, valid=None, *, params: TVL1Params = TVL1Params(), slots: int | None = None,
                 chunk: int = 2, side_work: int | None = None, check_every: int = 1, storage: str = "float32",
                 inner=None, skip_idle_service: bool = False):
    """TV-L1 flow of N pairs, every pyramid level: float32[N, H, W, 2] and, per level (coarsest
    first), the scheduling steps, each pair's inner iterations and the step it entered a slot.

    ``frames*`` uint8 or float32[N, H, W]; ``valid`` bool[N] marks real pairs (they come first;
    padding gets 0). The coarsest level takes the pairs in order, each finer level longest first
    by the coarser level's iteration counts (:func:`longest_first`).
    """
    frames0, frames1 = ops.convert_to_tensor(frames0), ops.convert_to_tensor(frames1)
    pairs, height, width = frames0.shape
    valid = ops.ones((pairs,), "bool") if valid is None else ops.convert_to_tensor(valid)
    slots = pairs if slots is None else max(1, min(int(slots), pairs))
    if params.inner_iterations % chunk:
        raise ValueError(f"chunk={chunk} must divide inner_iterations={params.inner_iterations}")
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage={storage!r}: expected one of {STORAGE_DTYPES}")
    sizes = pyramid_sizes(height, width, params.nscales, params.scale_step)
    downscale = (1.0 / params.scale_step, 1.0 / params.scale_step)
    levels0, levels1 = [ops.cast(frames0, "float32")], [ops.cast(frames1, "float32")]
    for size in sizes[1:]:
        levels0.append(resize_linear(levels0[-1], size, downscale))
        levels1.append(resize_linear(levels1[-1], size, downscale))
    n_valid = ops.sum(ops.cast(valid, "int32"))
    zoom = np.float32(1.0 / params.scale_step)
    steps, counts, starts = [], [], []
    for level in reversed(range(len(sizes))):
        if level == len(sizes) - 1:
            U1 = U2 = ops.zeros((pairs + 1, *sizes[level]), "float32")
            order = ops.arange(pairs, dtype="int32")
        else:       # the coarser flow, resized and scaled by 1 / scale_step; the slowest pairs first
            spare = ops.zeros((1, *sizes[level]), "float32")
            U1 = ops.concatenate([resize_linear(U1[:pairs], sizes[level]) * zoom, spare], axis=0)
            U2 = ops.concatenate([resize_linear(U2[:pairs], sizes[level]) * zoom, spare], axis=0)
            order = longest_first(counts[-1], valid, params)
        U1, U2, level_counts, level_starts, level_steps = solve_level(
            levels0[level], levels1[level], U1, U2, order, n_valid, params, slots, chunk, side_work, check_every,
            storage, inner, skip_idle_service)
        steps.append(level_steps)
        counts.append(level_counts[:pairs])
        starts.append(level_starts[:pairs])
    return ops.stack([U1[:pairs], U2[:pairs]], axis=-1), steps, counts, starts


def tvl1_flow_batch(frames0, frames1, valid=None, *, params: TVL1Params = TVL1Params(), slots: int | None = None,
                    chunk: int = 2, side_work: int | None = None, check_every: int = 1, storage: str = "float32"):
    """TV-L1 flow of N frame pairs: uint8/float32[N, H, W] x2 -> float32[N, H, W, 2] (pixels).

    Plain ``keras.ops`` (eagerly, or inside a compiled function: :class:`TVL1Keras` compiles it).
    ``slots`` pairs are iterated together (default: all); ``chunk`` inner iterations run between
    two scheduling steps and must divide ``params.inner_iterations``; ``side_work`` slots at most
    are served (warped, median-filtered, refilled) per step (default: a quarter of the slots);
    ``storage``: dtype of the dual variables and warp terms (``u`` stays float32).
    """
    return flow_pyramid(frames0, frames1, valid, params=params, slots=slots, chunk=chunk, side_work=side_work,
                        check_every=check_every, storage=storage)[0]


# --- compiled programs, batch sizes, devices -------------------------------------------------------
class _FlowProgram(keras.Model):
    """:func:`flow_pyramid`, every level, as one Keras model, so that ``predict_on_batch``
    compiles it (XLA on TensorFlow and JAX) once per input shape, on whichever backend is active.
    Outputs: the flow (float32, or uint8 with ``quantize``), then per level (coarsest first) the
    steps, the iteration counts and the start steps."""

    def __init__(self, shape: tuple[int, int, int], params: TVL1Params, slots: int, chunk: int,
                 side_work: int | None, check_every: int, storage: str, inner, quantize: float | None,
                 skip_idle_service: bool):
        super().__init__(name="tvl1_keras")
        self.shape, self.params, self.slots, self.chunk = shape, params, slots, chunk
        self.side_work, self.check_every, self.storage = side_work, check_every, storage
        self.inner, self.quantize, self.skip_idle_service = inner, quantize, skip_idle_service
        self.built = True       # nothing to build; and predict_on_batch would otherwise run it eagerly once

    def call(self, inputs):
        frames0, frames1, valid = inputs
        # Static shapes, even where the backend traces with an unknown batch size.
        frames0, frames1 = ops.reshape(frames0, self.shape), ops.reshape(frames1, self.shape)
        valid = ops.reshape(valid, self.shape[:1])
        flow, steps, counts, starts = flow_pyramid(
            frames0, frames1, valid, params=self.params, slots=self.slots, chunk=self.chunk, side_work=self.side_work,
            check_every=self.check_every, storage=self.storage, inner=self.inner,
            skip_idle_service=self.skip_idle_service)
        if self.quantize is not None:
            flow = quantize_flow_ops(flow, self.quantize)
        return flow, ops.stack(steps), ops.stack(counts), ops.stack(starts)



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


# Float32 images held per slot (state, warp terms, service and median temporaries, ...) and per
# queued pair (pyramid, flow, output), with a margin; measured peaks stay below these. The Pallas
# kernel adds its scratch tiles (6 per program, halo included; two launches: about 21 images per slot).
_IMAGES_PER_SLOT = 64
_IMAGES_PER_PAIR = 12
_PALLAS_IMAGES_PER_SLOT = 24


def choose_slots(height: int, width: int, *, memory_fraction: float = 0.5, max_slots: int | None = None,
                 pairs_per_slot: int = 4, kernel: str = "keras") -> int:
    """How many pairs to iterate together at this frame size, from the device's memory.

    On a GPU as many as ``memory_fraction`` of its memory holds (no fixed cap: more slots make
    every kernel larger and the scheduling steps fewer); on a CPU at most 4 (measured fastest on
    2 cores: more slots only add memory traffic).
    """
    memory, kind = device_memory_bytes()
    images = _IMAGES_PER_SLOT + (_PALLAS_IMAGES_PER_SLOT if kernel == "pallas" else 0)
    per_slot = 4 * height * width * (images + pairs_per_slot * _IMAGES_PER_PAIR)
    cap = max_slots if max_slots is not None else (None if kind == "gpu" else 4)
    fits = int(memory * memory_fraction // per_slot)
    return int(max(1, fits if cap is None else min(cap, fits)))


class TVL1Keras:
    """Batched TV-L1 optical flow with Keras ops, the same flow as OpenCV's ``DualTVL1OpticalFlow``.

    ``TVL1Keras(**opts)(gray_frames)`` maps ``uint8[T, H, W]`` to ``float32[T-1, H, W, 2]``;
    :meth:`pairs` takes any list of pairs of one size. Options: the :class:`TVL1Params` fields
    (OpenCV names in snake case, e.g. ``lambda_=0.15``), and

    * ``slots`` (pairs iterated together, default from device memory), ``pairs_per_slot`` (queue
      depth: pairs per call = slots x this), ``chunk`` (inner iterations between scheduling steps),
      ``side_work`` (slots served per step, default a quarter of the slots), ``check_every``
      (scheduling steps between two evaluations of the loop's "work left?" test: on a GPU each
      evaluation is a wait for the device), ``skip_idle_service`` (skip a step's service when no
      slot needs it: one ``cond`` per step; default on a CPU only, where it costs no wait);
    * ``storage``: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"`` for the dual
      variables and the warp terms (``u`` stays float32): less memory traffic, slightly
      different flow (see report/benchmarks.md);
    * ``kernel``: ``"keras"`` (default, any backend) or ``"pallas"`` (JAX only: the inner loop as
      one fused kernel per chunk, :mod:`utils.tvl1_pallas`; ``block`` its tile size with halo,
      ``interpret`` to force Pallas' interpreter, default on a CPU);
    * ``jit_compile`` (passed to ``Model.compile``; ``"auto"``: XLA with JAX, and with TensorFlow
      when a GPU is present; PyTorch runs eagerly).

    All pyramid levels run in one compiled program per (pairs per call, frame size). After each
    call, ``last_steps`` holds the scheduling steps each level took (coarsest first),
    ``last_iterations`` int[levels, N] each pair's inner iterations per level, ``last_starts``
    the step at which each pair entered a slot, and ``last_stats`` the slots' occupancy.
    """

    quantizes_on_device = True      # pairs(..., quantize=bound) returns utils.flow.quantize_flow's uint8

    def __init__(self, *, slots: int | None = None, pairs_per_slot: int = 4, chunk: int | None = None,
                 side_work: int | None = None, check_every: int | None = None, storage: str = "float32",
                 kernel: str = "keras", block: tuple[int, int] | None = None, interpret: bool | None = None,
                 skip_idle_service: bool | None = None, jit_compile: bool | str = "auto",
                 memory_fraction: float = 0.5, **params):
        self.params = TVL1Params(**params)
        if storage not in STORAGE_DTYPES:
            raise ValueError(f"storage={storage!r}: expected one of {STORAGE_DTYPES}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: expected one of {KERNELS}")
        self.device = device_description()
        on_cpu = device_memory_bytes()[1] == "cpu"
        self.slots, self.pairs_per_slot = slots, int(pairs_per_slot)
        # measured best on a 2-core CPU: chunk 1; on a GPU longer chunks mean fewer scheduling steps
        self.chunk = int(chunk) if chunk else (1 if on_cpu else 5 if kernel == "pallas" else 3)
        self.check_every = int(check_every) if check_every else (1 if on_cpu else 4)
        self.skip_idle_service = on_cpu if skip_idle_service is None else bool(skip_idle_service)
        if self.check_every < 1:
            raise ValueError(f"check_every={check_every} must be >= 1")
        self.side_work, self.jit_compile, self.memory_fraction = side_work, jit_compile, memory_fraction
        self.storage, self.kernel = storage, kernel
        if self.params.inner_iterations % self.chunk:
            raise ValueError(f"chunk={chunk} must divide inner_iterations={self.params.inner_iterations}")
        self._inner = None
        if kernel == "pallas":
            if keras.backend.backend() != "jax":
                raise ValueError(f"kernel='pallas' runs on the JAX backend only (KERAS_BACKEND=jax); this process "
                                 f"uses {keras.backend.backend()!r}: use kernel='keras', the portable path")
            try:
                from utils import tvl1_pallas
            except ImportError as error:
                raise ImportError(f"kernel='pallas' needs jax with jax.experimental.pallas: {error}") from error
            self.block = tuple(block) if block else tvl1_pallas.DEFAULT_BLOCK
            self.interpret = tvl1_pallas.default_interpret() if interpret is None else bool(interpret)
            tvl1_pallas.tile_grid(64, 64, self.chunk, self.block)          # checks block against chunk
            self._inner = tvl1_pallas.make_inner_iterations(
                chunk=self.chunk, lambda_theta=self.params.lambda_ * self.params.theta, theta=self.params.theta,
                tau_theta=self.params.tau / self.params.theta, storage=storage, block=self.block,
                interpret=self.interpret)
        elif block is not None or interpret is not None:
            raise ValueError("block and interpret are options of kernel='pallas'")
        self._programs: dict[tuple, _FlowProgram] = {}
        self.last_steps: list[int] = []
        self.last_iterations = np.zeros((0, 0), np.int32)
        self.last_starts = np.zeros((0, 0), np.int32)
        self.last_stats: dict = {}

    def __repr__(self):
        kernel = self.kernel if self.kernel == "keras" else \
            f"pallas, block={self.block}{', interpreted' if self.interpret else ''}"
        return (f"TVL1Keras({self.device}, kernel={kernel}, slots={self.slots or 'auto'}, "
                f"pairs_per_slot={self.pairs_per_slot}, chunk={self.chunk}, side_work={self.side_work or 'auto'}, "
                f"check_every={self.check_every}, skip_idle_service={self.skip_idle_service}, storage={self.storage}, "
                f"{asdict(self.params)})")

    def plan(self, height: int, width: int, n_pairs: int, full_call: bool = False) -> tuple[int, int]:
        """(pairs per call, slots) for ``n_pairs`` pairs of this size.

        A call holds ``slots x pairs_per_slot`` pairs; fewer pairs are padded to a power of two,
        at least a quarter of that, so a frame size compiles at most three programs
        (``full_call``: always the full call, one program). Padding pairs never enter a slot:
        they cost memory and transfers, not iterations.
        """
        max_slots = self.slots or choose_slots(height, width, memory_fraction=self.memory_fraction,
                                               pairs_per_slot=self.pairs_per_slot, kernel=self.kernel)
        max_call = max_slots * self.pairs_per_slot
        call = max_call if full_call else \
            min(max_call, max(-(-max_call // 4), 2 ** math.ceil(math.log2(max(1, n_pairs)))))
        return call, max(1, min(max_slots, math.ceil(call / self.pairs_per_slot)))

    def program(self, height: int, width: int, call: int, slots: int, quantize: float | None = None) -> _FlowProgram:
        """The compiled program (all levels) for calls of ``call`` pairs of this size."""
        key = (call, height, width, slots, quantize)
        if key not in self._programs:
            program = _FlowProgram((call, height, width), self.params, slots, self.chunk, self.side_work,
                                   self.check_every, self.storage, self._inner, quantize, self.skip_idle_service)
            program.compile(jit_compile=self.jit_compile)
            self._programs[key] = program
        return self._programs[key]

    def pairs(self, frames0: np.ndarray, frames1: np.ndarray, full_call: bool = False,
              quantize: float | None = None) -> np.ndarray:
        """Flow from ``frames0[i]`` to ``frames1[i]``: uint8[N, H, W] x2 -> float32[N, H, W, 2].

        ``full_call``: every call has the full planned size (see :meth:`plan`). ``quantize``: a
        bound in pixels (e.g. ``utils.flow.FLOW_BOUND``): the flow is quantised on the device and
        returned as uint8[N, H, W, 2], the same bytes as ``utils.flow.quantize_flow(flow, bound)``."""
        frames0, frames1 = np.asarray(frames0), np.asarray(frames1)
        if frames0.shape != frames1.shape or frames0.ndim != 3 or frames0.shape[0] < 1:
            raise ValueError(f"expected two uint8[N, H, W] stacks of the same shape, "
                             f"got {frames0.shape} and {frames1.shape}")
        if frames0.dtype != np.uint8 or frames1.dtype != np.uint8:
            raise ValueError(f"expected uint8 grayscale frames, got {frames0.dtype} and {frames1.dtype}")
        if quantize is not None and not float(quantize) > 0:
            raise ValueError(f"quantize={quantize}: the bound must be a positive number of pixels")
        n, height, width = frames0.shape
        if min(height, width) < 3:
            raise ValueError(f"frames of {height}x{width} are too small for TV-L1 (at least 3x3)")
        call, slots = self.plan(height, width, n, full_call)
        program = self.program(height, width, call, slots, None if quantize is None else float(quantize))
        flows = np.empty((n, height, width, 2), np.float32 if quantize is None else np.uint8)
        steps, iterations, starts = [], [], []
        for start in range(0, n, call):
            count = min(call, n - start)
            batch0 = np.zeros((call, height, width), np.uint8)
            batch1 = np.zeros((call, height, width), np.uint8)
            batch0[:count], batch1[:count] = frames0[start:start + count], frames1[start:start + count]
            valid = np.arange(call) < count
            with _quiet_retracing_warnings():
                flow, level_steps, counts, level_starts = program.predict_on_batch([batch0, batch1, valid])
            flows[start:start + count] = np.asarray(flow)[:count]
            steps.append(np.asarray(level_steps).reshape(-1))
            iterations.append(np.asarray(counts)[:, :count])
            starts.append(np.asarray(level_starts)[:, :count])
        self.last_steps = [int(s) for s in steps[-1]]
        self.last_iterations = np.concatenate(iterations, axis=1)
        self.last_starts = np.concatenate(starts, axis=1)
        slot_iterations = float(sum(s.sum() for s in steps)) * slots * self.chunk
        self.last_stats = dict(calls=len(steps), call=call, slots=slots, chunk=self.chunk,
                               steps=int(sum(s.sum() for s in steps)),
                               inner_iterations=int(self.last_iterations.sum()),
                               occupancy=float(self.last_iterations.sum() / max(slot_iterations, 1.0)))
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
