"""TV-L1 in Keras stage: ``utils/tvl1_keras.py`` against OpenCV's TV-L1 in the same run.

Speed at 320x240 in full calls (the batch the extraction pipeline uses), the batch (pairs per
call, slots), compilation time and peak memory, for each configuration asked for; parity: the
EPE against ground truth of both implementations on ``tests/data/flow_gt`` and their ratio
(target: within 1 %). OpenCV's EPE comes from the same run where ``cv2.optflow`` exists, else
from the reference figures (OpenCV 5.0 defaults), which holds only for the default parameters.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from utils.bench.context import FLOW_SIZE, Bench, read_gray
from utils.bench.flow import REFERENCE, flow_callable, pair_stepper, threads_setting
from utils.bench.machine import device_label, peak_memory_mib, time_until
from utils.bench.rows import DERIVED, NOT_MEASURED, REFERENCE_STATUS, row


def config_name(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "defaults"


def tvl1_keras(bench: Bench, options: dict | None = None):
    """The run's TVL1Keras for these options (built once: its compiled programs are reused)."""
    options = {**bench.s.tvl1_keras_options, **(options or {})}
    key = ("tvl1-keras", config_name(options))
    if key not in bench.shared:
        from utils.flow import make_video_flow
        bench.shared[key] = make_video_flow("tvl1-keras", **options)
    return bench.shared[key]


def speed_frames(bench: Bench, n_pairs: int) -> np.ndarray:
    """``n_pairs + 1`` grayscale frames of a 320x240 clip (resized to ``--tvl1-size`` if given)."""
    clip = bench.clips(native_size=FLOW_SIZE)[0]
    frames = bench.gray_pairs_clip(clip, n_pairs)
    while len(frames) < n_pairs + 1:                     # a short clip: play it forwards and back
        frames = np.concatenate([frames, frames[::-1][1:]])[:n_pairs + 1]
    if bench.s.tvl1_size:
        frames = np.stack([cv2.resize(f, bench.s.tvl1_size, interpolation=cv2.INTER_AREA) for f in frames])
    return frames


def stage_tvl1keras(bench: Bench) -> None:
    try:
        keras_fn = tvl1_keras(bench)
    except Exception as error:  # noqa: BLE001
        bench.log(f"tvl1keras: cannot build the 'tvl1-keras' method: {error}")
        bench.add(row("tvl1keras", "tvl1-keras", "-", "pairs_per_s", None, status=NOT_MEASURED, note=str(error)[:200]))
        return
    device = device_label(keras_fn.device)
    on_gpu = device.startswith("GPU")
    keras_rate, frames, compile_s = _speed(bench, keras_fn, {}, device)
    if not on_gpu and bench.methods_available(["tvl1"]):
        _against_opencv(bench, keras_fn, frames, keras_rate, device)
    _parity(bench, keras_fn, device, compile_s)
    for options in bench.s.tvl1_keras_configs:      # other configurations, while the stage has time
        if bench.time_left("tvl1keras") < 1.5 * compile_s + 2 * bench.s.min_time:
            bench.log(f"  tvl1keras: no time left for configuration {config_name(options)}")
            continue
        _speed(bench, tvl1_keras(bench, options), options, device)


def _speed(bench: Bench, keras_fn, options: dict, device: str) -> tuple[float, np.ndarray, float]:
    """Pairs/s in full calls at the speed size; rows for the batch, compilation and memory.
    Returns the rate, the frames and the compilation time."""
    height, width = (bench.s.tvl1_size or FLOW_SIZE)[::-1]
    call, slots = keras_fn.plan(height, width, 1, full_call=True)
    n_pairs = bench.s.tvl1_keras_pairs or call
    frames = speed_frames(bench, n_pairs)
    size = f"{width}x{height}"
    setting = f"{config_name(options)}; {n_pairs} pairs per call ({slots} slots), {size}"
    bench.log(f"tvl1keras: {setting} on {keras_fn.device} (the first call compiles)")
    started = time.perf_counter()
    keras_fn.pairs(frames[:-1], frames[1:], full_call=True)
    compile_s = time.perf_counter() - started
    pairs, seconds = time_until(lambda: len(keras_fn.pairs(frames[:-1], frames[1:], full_call=True)),
                                bench.s.min_time, 1, warmup=0)
    memory, how = peak_memory_mib()
    rate = pairs / seconds
    bench.add(row("tvl1keras", "tvl1-keras", setting, "pairs_per_s", rate, device=device,
                  note=f"scheduling steps per level {keras_fn.last_steps}"),
              row("tvl1keras", "tvl1-keras", setting, "batch_pairs", call, device=device,
                  note=f"{slots} slots x {keras_fn.pairs_per_slot} pairs per slot, chunk {keras_fn.chunk}"),
              row("tvl1keras", "tvl1-keras", setting, "compile_seconds", compile_s, device=device,
                  note="first call: compilation + one run"),
              row("tvl1keras", "tvl1-keras", setting, "peak_memory_mib", memory, device=device,
                  note=f"{how}, peak of the run so far"))
    return rate, frames, compile_s


def _against_opencv(bench: Bench, keras_fn, frames: np.ndarray, keras_rate: float, device: str) -> None:
    """OpenCV's pairs/s on the same frames and parameters (1 thread and all cores), and the mean
    flow difference."""
    opencv = flow_callable("tvl1", **keras_fn.params.opencv_kwargs())
    size = f"{frames.shape[2]}x{frames.shape[1]}"
    previous = cv2.getNumThreads()
    try:
        for threads in sorted({1, bench.cores}):
            cv2.setNumThreads(threads)
            p, s = time_until(pair_stepper(opencv, frames), bench.s.min_time, 1)
            bench.add(row("tvl1keras", "tvl1 (OpenCV)", f"{threads_setting(threads)}, {size}", "pairs_per_s", p / s))
            bench.add(row("tvl1keras", "tvl1-keras", f"{size} vs OpenCV {threads} thread(s)", "speed_vs_opencv",
                          keras_rate / (p / s), status=DERIVED, device=device))
    finally:
        cv2.setNumThreads(previous)
    k = min(len(frames) - 1, 2 if bench.s.quick else 4)
    ours = keras_fn.pairs(frames[:k], frames[1:k + 1], full_call=True)
    reference = opencv(frames[:k + 1])
    bench.add(row("tvl1keras", "tvl1-keras", f"real clip, {k} pairs, {size}", "epe_vs_opencv_px",
                  float(np.linalg.norm(ours - reference, axis=-1).mean()), device=device))


def _parity(bench: Bench, keras_fn, device: str, compile_s: float) -> None:
    """EPE of both implementations on the ground-truth pairs and its ratio, smallest pairs first.

    Every frame size compiles new programs (about a minute on a CPU), so a CPU run checks the
    smallest pair only unless ``--tvl1keras-gt-pairs`` says otherwise; a GPU run and the device
    check check them all while the stage has time."""
    from utils.flow import endpoint_error, read_flo
    from utils.tvl1_keras import opencv_flow     # a fresh OpenCV object per pair, same parameters
    gt_pairs = sorted(bench.gt_pairs(), key=lambda p: (read_gray(p / "frame1.png").size, p.name))
    limit = bench.s.tvl1_keras_gt_pairs
    if limit is None:
        limit = len(gt_pairs) if device.startswith("GPU") or bench.s.device else (0 if bench.s.quick else 1)
    opencv_here = bench.methods_available(["tvl1"])
    defaults = not any(k in bench.s.tvl1_keras_options for k in ("tau", "lambda_", "theta", "nscales", "warps",
                                                                   "epsilon", "inner_iterations", "outer_iterations",
                                                                   "scale_step", "median_filtering"))
    for k, pair in enumerate(gt_pairs[:limit]):
        if k and bench.time_left("tvl1keras") < 1.5 * compile_s:       # a new frame size compiles
            bench.log(f"  tvl1keras: no time left for the parity of {pair.name}")
            bench.add(row("tvl1keras", "tvl1-keras", pair.name, "epe_ratio_vs_opencv", None, device=device,
                          status=NOT_MEASURED, note="the device check's time budget ran out"))
            continue
        gt = read_flo(pair / "gt.flo")
        prev, nxt = (read_gray(pair / name) for name in ("frame1.png", "frame2.png"))
        ours = keras_fn.pairs(prev[None], nxt[None], full_call=True)[0]
        ours_epe = endpoint_error(ours, gt)
        bench.add(row("tvl1keras", "tvl1-keras", pair.name, "epe_px", ours_epe, device=device))
        if opencv_here:
            reference = opencv_flow(prev, nxt, keras_fn.params)
            opencv_epe, status, note = endpoint_error(reference, gt), "measured", "OpenCV in this run"
            bench.add(row("tvl1keras", "tvl1-keras", pair.name, "epe_vs_opencv_px",
                          float(np.linalg.norm(ours - reference, axis=-1).mean()), device=device))
        elif defaults and pair.name in REFERENCE:
            opencv_epe, status = REFERENCE[pair.name]["tvl1"][0], REFERENCE_STATUS
            note = "no cv2.optflow here: OpenCV 5.0's reference EPE (3 decimals)"
        else:
            continue
        bench.add(row("tvl1keras", "tvl1 (OpenCV)", pair.name, "epe_px", opencv_epe, status=status, note=note),
                  row("tvl1keras", "tvl1-keras", pair.name, "epe_ratio_vs_opencv", ours_epe / opencv_epe,
                      status=DERIVED, device=device, note=f"target 0.99 to 1.01; {note}"))

