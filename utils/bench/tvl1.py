"""TV-L1 in Keras stage: ``utils/tvl1_keras.py`` against OpenCV's TV-L1 in the same run (speed, parity)."""
from __future__ import annotations

import time

import cv2
import numpy as np

from utils.bench.context import FLOW_SIZE, Bench, read_gray
from utils.bench.flow import flow_callable, gt_flow, pair_stepper, threads_setting
from utils.bench.machine import device_label, keras_device, time_until
from utils.bench.rows import DERIVED, NOT_MEASURED, row


def stage_tvl1keras(bench: Bench) -> None:
    try:
        keras_fn = flow_callable("tvl1-keras")
    except Exception as error:  # noqa: BLE001
        bench.log(f"tvl1keras: cannot build the 'tvl1-keras' method: {error}")
        bench.add(row("tvl1keras", "tvl1-keras", "-", "pairs_per_s", None, status=NOT_MEASURED, note=str(error)[:200]))
        return
    device = device_label(getattr(keras_fn, "device", keras_device()))
    clip = bench.clips(native_size=FLOW_SIZE)[0]
    n_pairs = bench.s.tvl1_keras_pairs or (64 if device.startswith("GPU") else 4)
    frames = bench.gray_pairs_clip(clip, max(2, n_pairs))
    size = f"{frames.shape[2]}x{frames.shape[1]}"
    n = len(frames) - 1
    bench.log(f"tvl1keras: {n} pairs at {size} per call on {getattr(keras_fn, 'device', device)} "
              "(the first call compiles)")
    started = time.perf_counter()
    keras_flows = keras_fn(frames)                      # compiles
    compile_s = time.perf_counter() - started
    pairs, seconds = time_until(lambda: len(keras_fn(frames)), bench.s.min_time, 1, warmup=0)
    keras_rate = pairs / seconds
    setting = f"{n} pairs per call, {size}"
    bench.add(row("tvl1keras", "tvl1-keras", setting, "pairs_per_s", keras_rate, device=device),
              row("tvl1keras", "tvl1-keras", setting, "compile_seconds", compile_s, device=device,
                  note="first call: compilation + one run"))
    if not bench.methods_available(["tvl1"]):
        return
    opencv = flow_callable("tvl1")
    previous = cv2.getNumThreads()
    try:
        for threads in sorted({1, bench.cores}):
            cv2.setNumThreads(threads)
            p, s = time_until(pair_stepper(opencv, frames), bench.s.min_time, 1)
            bench.add(row("tvl1keras", "tvl1 (OpenCV)", f"{threads_setting(threads)}, {size}", "pairs_per_s", p / s))
            bench.add(row("tvl1keras", "tvl1-keras", f"{setting} vs OpenCV {threads} thread(s)", "speed_vs_opencv",
                          keras_rate / (p / s), status=DERIVED, device=device))
    finally:
        cv2.setNumThreads(previous)
    k = min(n, 2 if bench.s.quick else 4)
    opencv_flows = opencv(frames[:k + 1])
    bench.add(row("tvl1keras", "tvl1-keras", f"{clip.parent.name} clip, {k} pairs, {size}", "epe_vs_opencv_px",
                  float(np.mean([np.linalg.norm(a - b, axis=-1).mean() for a, b in zip(keras_flows[:k], opencv_flows)])),
                  device=device))
    # Parity on the ground-truth pairs: every pair size compiles a new program (a minute or more
    # on a CPU), so a CPU run checks the smallest pair only unless --tvl1keras-gt-pairs says otherwise.
    gt_pairs = sorted(bench.gt_pairs(), key=lambda p: read_gray(p / "frame1.png").size)
    limit = bench.s.tvl1_keras_gt_pairs
    if limit is None:
        limit = len(gt_pairs) if device.startswith("GPU") else (0 if bench.s.quick else 1)
    from utils.flow import endpoint_error, read_flo
    for pair in gt_pairs[:limit]:
        gt = read_flo(pair / "gt.flo")
        prev, nxt = (read_gray(pair / name) for name in ("frame1.png", "frame2.png"))
        ours = keras_fn.pairs(prev[None], nxt[None])[0]
        reference, _ = gt_flow(bench, pair, "tvl1")
        bench.add(row("tvl1keras", "tvl1-keras", pair.name, "epe_px", endpoint_error(ours, gt), device=device),
                  row("tvl1keras", "tvl1 (OpenCV)", pair.name, "epe_px", endpoint_error(reference, gt)),
                  row("tvl1keras", "tvl1-keras", pair.name, "epe_vs_opencv_px",
                      float(np.linalg.norm(ours - reference, axis=-1).mean()), device=device))
