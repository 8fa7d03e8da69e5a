"""Optical flow stages: speed of every method of ``utils.flow`` (and the recommended extraction
settings), quality on the ground-truth pairs, and the error added by storing flow as uint8 JPEG."""
from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from utils.bench.context import FLOW_SIZE, Bench, read_gray
from utils.bench.machine import rate_in_processes, time_until, worker_grid
from utils.bench.rows import DERIVED, MEASURED, REFERENCE_STATUS, Row, format_value
from utils.config import Config

# EPE (px) / ms per pair measured with OpenCV 5.0 defaults, grayscale, one thread; from the README
# of the ground-truth pairs (copied here: the project never reads that folder at run time).
REFERENCE = {pair: dict(zip(("tvl1", "farneback", "dis-fast", "dis-medium"), figures)) for pair, figures in {
    "mb_RubberWhale": ((0.157, 4282), (0.361, 56), (0.440, 6), (0.225, 30)),
    "mb_Hydrangea": ((0.193, 5735), (0.591, 57), (0.421, 6), (0.253, 29)),
    "sintel_final_alley_1_f0002": ((0.547, 12181), (1.150, 159), (0.513, 18), (0.322, 88)),
    "chairs_0000001": ((1.174, 10182), (2.751, 64), (1.946, 8), (1.591, 34))}.items()}
REFERENCE_STORAGE_NOTE = "reference: storing TV-L1 flow this way added +0.01 to +0.02 px EPE"


def flow_step(method: str, frames: np.ndarray) -> Callable[[], int]:
    """A step computing the next frame pair of ``frames`` with ``method`` (cycling); returns 1."""
    from utils.flow import make_video_flow
    fn, state = make_video_flow(method), {"i": 0}

    def step() -> int:
        i = state["i"] = (state["i"] + 1) % (len(frames) - 1)
        fn(frames[i:i + 2])
        return 1
    return step


def threads_setting(threads: int) -> str:
    return f"1 process x {threads} OpenCV thread{'s' if threads > 1 else ''}"


def stage_speed(bench: Bench) -> None:
    """Frame pairs per second of every method at 320x240: 1 process x 1 / N OpenCV threads, N processes."""
    methods = bench.extractable(bench.s.methods)
    clips = [bench.gray(c, bench.s.flow_pairs) for c in bench.clips(bench.cores, FLOW_SIZE)]
    bench.log(f"flow-speed: {len(methods)} method(s) on {len(clips)} clip(s), {bench.s.flow_pairs} pairs each")
    rates: dict[str, dict[str, float]] = {m: {} for m in methods}
    previous = cv2.getNumThreads()
    try:
        for method in methods:
            for threads in sorted({1, bench.cores}):
                cv2.setNumThreads(threads)
                pairs, seconds = time_until(flow_step(method, clips[0]), bench.s.min_time, 1 if bench.s.quick else 2)
                rates[method][threads_setting(threads)] = pairs / seconds
    finally:
        cv2.setNumThreads(previous)
    for workers in [w for w in (bench.s.workers or worker_grid(bench.cores)) if w > 1]:
        for method in methods:
            rates[method][f"{workers} processes x 1 OpenCV thread"] = rate_in_processes(
                flow_step, [(method, clips[w % len(clips)]) for w in range(workers)], bench.s.min_time)
    for method, by_setting in rates.items():
        for setting, rate in by_setting.items():
            put = bench.writer("flow-speed", method, setting)
            put("pairs_per_s", rate, note="320x240")
            if setting != threads_setting(1):
                put("speedup", rate / by_setting[threads_setting(1)], DERIVED)
    rec = recommend(bench.rows, Config().flow_method)
    if rec:
        bench.log(f"  -> {rec['text']}")


def recommend(rows: Sequence[Row], method: str, machine: str | None = None) -> dict | None:
    """Best (workers, OpenCV threads) of ``method`` from the flow-speed rows (highest pairs/s).

    Ties within 3 % go to fewer processes (less memory, fewer files open at once).
    """
    candidates = []
    for r in rows:
        if r.stage == "flow-speed" and r.item == method and r.metric == "pairs_per_s" and r.status == MEASURED \
                and r.value and (machine is None or r.machine_id == machine):
            try:
                left, right = r.setting.split(" x ")
                candidates.append((r.value, (int(left.split()[0]), int(right.split()[0])), r.setting))
            except (ValueError, IndexError):
                continue
    if not candidates:
        return None
    good = [c for c in candidates if c[0] >= 0.97 * max(c[0] for c in candidates)]
    rate, (workers, threads), setting = min(good, key=lambda c: (c[1][0] * c[1][1], c[1][0], -c[0]))
    single = next((c[0] for c in candidates if c[1] == (1, 1)), None)
    text = (f"recommended extraction for {method}: --workers {workers} --opencv-threads {threads} "
            f"({setting}: {format_value(rate)} pairs/s" + (f", {rate / single:.2f}x one process with one thread"
                                                          if single else "") + ")")
    return {"method": method, "workers": workers, "threads": threads, "pairs_per_s": rate, "text": text,
            "all": sorted(candidates, reverse=True)}


def recommended_workers(bench: Bench, method: str) -> tuple[int, int]:
    """(workers, OpenCV threads per worker) from flow-speed, else one worker per core."""
    rec = recommend(bench.rows, method)
    return (rec["workers"], rec["threads"]) if rec else (bench.cores, 1)


def gt_flows(bench: Bench):
    """(pair, ground truth, method, flow, ms per pair) of every method on every GT pair, one OpenCV
    thread (computed once per run: flow-quality and flow-storage share them)."""
    from utils.flow import make_video_flow, read_flo
    methods = bench.extractable(bench.s.methods)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for pair in bench.gt_pairs():
            gt, frames = read_flo(pair / "gt.flo"), np.stack([read_gray(pair / f"frame{k}.png") for k in (1, 2)])
            for method in methods:
                if (pair.name, method) not in bench.shared:        # calls for 1 s at least, or one call
                    fn, flows = make_video_flow(method), []
                    reps, seconds = time_until(lambda: flows.append(fn(frames)[0]), min(bench.s.min_time, 1), warmup=0)
                    bench.shared[(pair.name, method)] = flows[0], 1000 * seconds / reps
                yield (pair, gt, method, *bench.shared[(pair.name, method)])
    finally:
        cv2.setNumThreads(previous)


def stage_quality(bench: Bench) -> None:
    """EPE of every method on the ground-truth pairs, next to the reference figures."""
    from utils.flow import endpoint_error
    for pair, gt, method, flow, ms in gt_flows(bench):
        put = bench.writer("flow-quality", method, pair.name)
        put("epe_px", endpoint_error(flow, gt))
        put("ms_per_pair", ms)
        if method in REFERENCE.get(pair.name, {}):
            epe, ms = REFERENCE[pair.name][method]
            put("ref_epe_px", epe, REFERENCE_STATUS, note=f"{ms} ms per pair")


def stage_storage(bench: Bench) -> None:
    """The error that storing flow as the pipeline does (``utils.extract_job.write_flows``: uint8
    quantisation, JPEG q95; read back by ``utils.flow.read_flow_jpegs``) adds to each method's flow."""
    from utils.extract_job import ExtractionSettings, write_flows
    from utils.flow import endpoint_error, read_flow_jpegs
    folder = bench.workdir / "flow-storage"
    folder.mkdir(parents=True, exist_ok=True)
    for pair, gt, method, flow, _ in gt_flows(bench):
        write_flows(folder, 1, flow[None], ExtractionSettings())
        stored = read_flow_jpegs(folder, 1)
        float_gt, stored_gt, put = endpoint_error(flow, gt), endpoint_error(stored, gt), bench.writer(
            "flow-storage", method, pair.name)
        put("epe_float_vs_gt_px", float_gt)
        put("epe_jpeg_vs_float_px", endpoint_error(stored, flow))
        put("epe_jpeg_vs_gt_px", stored_gt)
        put("epe_added_px", stored_gt - float_gt, DERIVED)
