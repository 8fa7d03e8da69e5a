"""Optical flow stages: speed of every method (and the recommended extraction settings),
quality on the ground-truth pairs, and the error added by storing flow as uint8 JPEG."""
from __future__ import annotations

import multiprocessing
import queue as _queue
import time
import traceback
from typing import Callable, Sequence

import cv2
import numpy as np

from utils.bench.context import FLOW_SIZE, Bench, read_gray
from utils.bench.machine import time_until, worker_grid
from utils.bench.rows import DERIVED, MEASURED, REFERENCE_STATUS, Row, format_value, row

# EPE (px) / ms per pair measured with OpenCV 5.0 defaults, grayscale, one thread; from the README
# of the ground-truth pairs (copied here: the project never reads that folder at run time).
REFERENCE = {
    "mb_RubberWhale": {"tvl1": (0.157, 4282), "farneback": (0.361, 56), "dis-fast": (0.440, 6), "dis-medium": (0.225, 30)},
    "mb_Hydrangea": {"tvl1": (0.193, 5735), "farneback": (0.591, 57), "dis-fast": (0.421, 6), "dis-medium": (0.253, 29)},
    "sintel_final_alley_1_f0002": {"tvl1": (0.547, 12181), "farneback": (1.150, 159), "dis-fast": (0.513, 18), "dis-medium": (0.322, 88)},
    "chairs_0000001": {"tvl1": (1.174, 10182), "farneback": (2.751, 64), "dis-fast": (1.946, 8), "dis-medium": (1.591, 34)},
}
REFERENCE_STORAGE_NOTE = "reference: storing TV-L1 flow this way added +0.01 to +0.02 px EPE"


def flow_callable(method: str, **options):
    """Per-video flow callable for ``method`` (a name of the ``utils.flow`` registry)."""
    from utils import flow
    return flow.make_video_flow(method, **options)


def threads_setting(threads: int) -> str:
    return f"1 process x {threads} OpenCV thread{'s' if threads > 1 else ''}"


# --- flow-speed ----------------------------------------------------------------------------------
def stage_speed(bench: Bench) -> None:
    """Frame pairs per second of every method: 1 process x 1 / N OpenCV threads, N processes."""
    methods = bench.methods_available(bench.s.methods)
    clips = bench.clips(native_size=FLOW_SIZE)[:max(bench.cores, 1)]
    frames = [bench.gray_pairs_clip(c, bench.s.flow_pairs) for c in clips]
    h, w = frames[0].shape[1:]
    bench.log(f"flow-speed: {len(methods)} method(s) on {len(frames)} clip(s) at {w}x{h}, "
              f"{len(frames[0]) - 1} pairs each")
    grid = list(bench.s.workers) or worker_grid(bench.cores)
    rates: dict[str, dict[str, float]] = {m: {} for m in methods}
    size = f"{w}x{h}"
    min_pairs = 2 if not bench.s.quick else 1

    previous = cv2.getNumThreads()
    try:
        for method in methods:
            fn = flow_callable(method)
            for threads in sorted({1, bench.cores}):
                cv2.setNumThreads(threads)
                pairs, seconds = time_until(pair_stepper(fn, frames[0]), bench.s.min_time, min_pairs)
                setting = threads_setting(threads)
                rates[method][setting] = pairs / seconds
                bench.add(row("flow-speed", method, setting, "pairs_per_s", pairs / seconds, note=size))
    finally:
        cv2.setNumThreads(previous)

    for workers in grid:
        if workers == 1:
            continue
        results = parallel_flow_rates(methods, frames, workers, bench.s.min_time, min_pairs)
        for method, rate in results.items():
            setting = f"{workers} processes x 1 OpenCV thread"
            rates[method][setting] = rate
            bench.add(row("flow-speed", method, setting, "pairs_per_s", rate, note=size))

    base_setting = threads_setting(1)
    for method, by_setting in rates.items():
        base = by_setting.get(base_setting)
        for setting, rate in by_setting.items():
            if base and setting != base_setting:
                bench.add(row("flow-speed", method, setting, "speedup", rate / base, status=DERIVED, note=size))
        tvl1 = rates.get("tvl1", {}).get(base_setting)
        if tvl1 and base and method != "tvl1":
            bench.add(row("flow-speed", method, base_setting, "relative_to_tvl1", base / tvl1,
                          status=DERIVED, note=size))
    bench.recommended = recommend(bench.rows, bench.s.default_method)
    if bench.recommended:
        bench.log(f"  -> {bench.recommended['text']}")


def pair_stepper(fn, frames: np.ndarray) -> Callable[[], int]:
    """A step computing the next frame pair of ``frames`` (cycling)."""
    state = {"i": 0}

    def step() -> int:
        i = state["i"] % (len(frames) - 1)
        state["i"] += 1
        fn(frames[i:i + 2])
        return 1
    return step


def _speed_worker(worker: int, methods: list[str], frames: np.ndarray, min_time: float, min_pairs: int,
                  barrier, results) -> None:
    """One of N processes: for each method, warm up, wait for the others, count pairs for ``min_time``."""
    method = "?"
    try:
        cv2.setNumThreads(1)
        for method in methods:
            step = pair_stepper(flow_callable(method), frames)
            step()                                   # warm-up
            barrier.wait(timeout=600)
            count, started = 0, time.monotonic()
            while True:
                count += step()
                ended = time.monotonic()
                if ended - started >= min_time and count >= min_pairs:
                    break
            results.put((worker, method, count, started, ended, None))
    except BaseException:  # noqa: BLE001 - report to the parent, release the others
        barrier.abort()
        results.put((worker, method, 0, 0.0, 0.0, traceback.format_exc()))


def parallel_flow_rates(methods: list[str], clips: list[np.ndarray], workers: int, min_time: float,
                        min_pairs: int) -> dict[str, float]:
    """Aggregate pairs/s of ``workers`` spawned processes (one OpenCV thread each) per method."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_speed_worker, daemon=True,
                                 args=(w, methods, clips[w % len(clips)], min_time, min_pairs, barrier, results))
                 for w in range(workers)]
    for p in processes:
        p.start()
    per_method: dict[str, list] = {m: [] for m in methods}
    try:
        for _ in range(workers * len(methods)):
            worker, method, count, started, ended, error = results.get(timeout=600 + 20 * min_time)
            if error:
                raise RuntimeError(f"flow-speed worker {worker} failed on {method!r}:\n{error}")
            per_method[method].append((count, started, ended))
    except _queue.Empty:
        raise RuntimeError("flow-speed worker processes stopped answering") from None
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return {m: sum(c for c, _, _ in runs) / (max(e for _, _, e in runs) - min(s for _, s, _ in runs))
            for m, runs in per_method.items()}


def _parse_setting(setting: str) -> tuple[int, int] | None:
    """``"2 processes x 1 OpenCV thread"`` -> (2, 1); ``"1 process x 2 OpenCV threads"`` -> (1, 2)."""
    try:
        left, right = setting.split(" x ")
        return int(left.split()[0]), int(right.split()[0])
    except (ValueError, IndexError):
        return None


def recommend(rows: Sequence[Row], method: str, machine: str | None = None) -> dict | None:
    """Best (workers, OpenCV threads) of ``method`` from the flow-speed rows (highest pairs/s).

    Ties within 3 % go to fewer processes (less memory, fewer files open at once).
    """
    candidates = []
    for r in rows:
        if r.stage == "flow-speed" and r.item == method and r.metric == "pairs_per_s" and \
                r.status == MEASURED and r.value and (machine is None or r.machine_id == machine):
            parsed = _parse_setting(r.setting)
            if parsed:
                candidates.append((r.value, parsed, r.setting))
    if not candidates:
        return None
    best_rate = max(c[0] for c in candidates)
    good = [c for c in candidates if c[0] >= 0.97 * best_rate]
    rate, (workers, threads), setting = min(good, key=lambda c: (c[1][0] * c[1][1], c[1][0], -c[0]))
    single = next((c[0] for c in candidates if c[1] == (1, 1)), None)
    text = (f"recommended extraction for {method}: --workers {workers} --opencv-threads {threads} "
            f"({setting}: {format_value(rate)} pairs/s"
            + (f", {rate / single:.2f}x one process with one thread" if single else "") + ")")
    return {"method": method, "workers": workers, "threads": threads, "pairs_per_s": rate, "setting": setting,
            "text": text, "all": sorted(candidates, reverse=True)}


def recommended_workers(bench: Bench, method: str) -> tuple[int, int]:
    """(workers, OpenCV threads per worker) from flow-speed, else one worker per core."""
    rec = recommend(bench.rows, method)
    if rec:
        return rec["workers"], rec["threads"]
    return bench.cores, 1


# --- flow-quality and flow-storage ---------------------------------------------------------------
def gt_flow(bench: Bench, pair, method: str) -> tuple[np.ndarray, float]:
    """Flow of a GT pair with ``method`` (one OpenCV thread) and the ms it took (cached in the run)."""
    key = (pair.name, method)
    if key not in bench.flows:
        prev, nxt = (read_gray(pair / name) for name in ("frame1.png", "frame2.png"))
        fn = flow_callable(method)
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            started = time.perf_counter()
            flow = fn(np.stack([prev, nxt]))[0]
            ms = (time.perf_counter() - started) * 1000
            if ms < 200 and not method.startswith("tvl1"):   # fast methods: time a few more
                frames = np.stack([prev, nxt])
                reps, seconds = time_until(lambda: len(fn(frames)), min(bench.s.min_time, 1.0), 3, warmup=0)
                ms = seconds / reps * 1000
        finally:
            cv2.setNumThreads(previous)
        bench.flows[key] = (flow, ms)
    return bench.flows[key]


def stage_quality(bench: Bench) -> None:
    """EPE of every method on the ground-truth pairs, next to the reference figures."""
    from utils.flow import endpoint_error, read_flo
    methods = bench.methods_available(bench.s.methods)
    pairs = bench.gt_pairs()
    bench.log(f"flow-quality: {len(methods)} method(s) on {len(pairs)} ground-truth pair(s), one OpenCV thread")
    for pair in pairs:
        gt = read_flo(pair / "gt.flo")
        size = f"{gt.shape[1]}x{gt.shape[0]}"
        for method in methods:
            flow, ms = gt_flow(bench, pair, method)
            bench.add(row("flow-quality", method, pair.name, "epe_px", endpoint_error(flow, gt), note=size),
                      row("flow-quality", method, pair.name, "ms_per_pair", ms, note=size))
            ref = REFERENCE.get(pair.name, {}).get("dis-medium" if method == "dis" else method)
            if ref:
                bench.add(row("flow-quality", method, pair.name, "ref_epe_px", ref[0], status=REFERENCE_STATUS,
                              note=size),
                          row("flow-quality", method, pair.name, "ref_ms_per_pair", ref[1], status=REFERENCE_STATUS,
                              note=size))


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)


def stage_storage(bench: Bench) -> None:
    """The error that uint8 quantisation and JPEG q95 add to each method's flow."""
    from utils.flow import FLOW_BOUND, dequantize_flow, endpoint_error, quantize_flow, read_flo
    methods = bench.methods_available(bench.s.methods)
    pairs = bench.gt_pairs()
    bench.log(f"flow-storage: uint8 + JPEG q95 round trip, {len(methods)} method(s), {len(pairs)} pair(s)")
    for pair in pairs:
        gt = read_flo(pair / "gt.flo")
        for method in methods:
            flow, _ = gt_flow(bench, pair, method)
            quantized = quantize_flow(flow)
            uint8_only = dequantize_flow(quantized)
            jpeg = dequantize_flow(np.stack([jpeg_round_trip(quantized[..., c], 95) for c in range(2)], -1))
            float_gt = endpoint_error(flow, gt)
            jpeg_gt = endpoint_error(jpeg, gt)
            bench.add(
                row("flow-storage", method, pair.name, "epe_float_vs_gt_px", float_gt),
                row("flow-storage", method, pair.name, "epe_uint8_vs_float_px", endpoint_error(uint8_only, flow)),
                row("flow-storage", method, pair.name, "epe_jpeg_vs_float_px", endpoint_error(jpeg, flow)),
                row("flow-storage", method, pair.name, "epe_jpeg_vs_gt_px", jpeg_gt),
                row("flow-storage", method, pair.name, "epe_added_px", jpeg_gt - float_gt, status=DERIVED),
                row("flow-storage", method, pair.name, "clipped_fraction",
                    float(np.mean(np.any(np.abs(flow) > FLOW_BOUND, axis=-1)))),
            )
