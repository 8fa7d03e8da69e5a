"""TV-L1 in Keras (``utils/tvl1_keras.py``): speed (``tvl1keras``: pairs/s in the calls batched
extraction makes, on one named clip and on the realistic mix of every 320x240 clip, for each
configuration), parity with OpenCV (``tvl1keras-parity``: each frame size compiles, so it comes
last in the device check), 16-bit storage against float32 on the ground-truth pairs
(``tvl1keras-storage``, a CPU figure), and the device check's smoke test.
"""
from __future__ import annotations

import time

import numpy as np

from utils.bench.context import FLOW_SIZE, HMDB51_FRAME_PAIRS, QUICK_TVL1, Bench, read_gray
from utils.bench.flow import REFERENCE
from utils.bench.machine import keras_device, nvidia_smi, peak_memory_mib, time_until
from utils.bench.rows import DERIVED, NOT_MEASURED, REFERENCE_STATUS

SPEED_METRICS = ("pairs_per_s", "batch_pairs", "compile_seconds", "peak_memory_mib")


def config_name(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "defaults"


def tvl1_keras(bench: Bench, options: dict | None = None):
    """The run's TVL1Keras for these options (built once: its compiled programs are reused)."""
    from utils.flow import make_video_flow
    options = {**bench.s.tvl1_keras_options, **(options or {})}
    key = ("tvl1-keras", config_name(options))
    if key not in bench.shared:
        bench.shared[key] = make_video_flow("tvl1-keras", **options)
    return bench.shared[key]


def speed_inputs(bench: Bench, call: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (frames0, frames1)}: a call's worth of pairs of the first 320x240 clip, and the mix."""
    clips = bench.clips(size=FLOW_SIZE)
    one = bench.gray(clips[0], call, bench.s.tvl1_size)
    mix = [bench.gray(c, bench.s.mix_pairs, bench.s.tvl1_size) for c in clips]
    names = ", ".join(c.parent.name for c in clips)
    return {f"clip {clips[0].parent.name}, {call} pairs": (one[:-1], one[1:]),
            f"mix of {len(mix) * bench.s.mix_pairs} pairs, {bench.s.mix_pairs} of each clip ({names})":
                (np.concatenate([f[:-1] for f in mix]), np.concatenate([f[1:] for f in mix]))}


def stage_tvl1keras(bench: Bench) -> None:
    device = keras_device()
    width, height = bench.s.tvl1_size or FLOW_SIZE
    inputs = speed_inputs(bench, tvl1_keras(bench).plan(height, width, 1 << 30)[0])
    clip, mix = inputs
    runs = [({}, clip), ({}, mix)] + [(options, mix) for options in bench.s.tvl1_keras_configs]
    first_call, compiled = None, set()
    for options, name in runs:
        try:
            fn = tvl1_keras(bench, options)
        except (ValueError, ImportError) as error:     # e.g. kernel="pallas" on a backend other than JAX
            put = bench.writer("tvl1keras", "tvl1-keras", f"{config_name(options)}; {name}", device)
            for metric in SPEED_METRICS:
                put(metric, None, NOT_MEASURED, note=str(error))
            continue
        call, slots = fn.plan(height, width, 1 << 30)          # what utils.extract_batched calls it with
        setting = f"{config_name(options)}; {name}; calls of {call} pairs ({slots} slots), {width}x{height}"
        if first_call is not None and bench.time_left("tvl1keras") < 1.5 * first_call + 2 * bench.s.min_time:
            bench.skip("tvl1keras", "tvl1-keras", setting, SPEED_METRICS, device, "no time left to compile and time it")
            continue
        frames0, frames1 = (np.resize(f, (-(-len(f) // call) * call, *f.shape[1:])) for f in inputs[name])
        bench.log(f"tvl1keras: {setting} on {fn.device}")
        put = bench.writer("tvl1keras", "tvl1-keras", setting, device)
        if id(fn) not in compiled:
            started = time.perf_counter()
            fn.pairs(frames0[:call], frames1[:call])           # the first call compiles (once per configuration)
            first_call = bench.shared["tvl1 compile"] = first_call or time.perf_counter() - started
            compiled.add(id(fn))
            put("compile_seconds", time.perf_counter() - started, note="first call: compilation + one call")

        def all_calls() -> int:
            for k in range(0, len(frames0), call):
                fn.pairs(frames0[k:k + call], frames1[k:k + call])
            return len(frames0)
        pairs, elapsed = time_until(all_calls, bench.s.min_time, warmup=0)
        memory, how = peak_memory_mib()
        put("pairs_per_s", pairs / elapsed, note=f"{len(frames0)} pairs per pass, repeated to fill the calls")
        put("batch_pairs", call)
        put("peak_memory_mib", memory, note=f"{how}, peak of the run so far")
        put("hours_full_hmdb51", HMDB51_FRAME_PAIRS * elapsed / pairs / 3600, DERIVED, note="the flow alone")


def stage_parity(bench: Bench) -> None:
    """EPE of both implementations on the ground-truth pairs and its ratio, smallest pairs first.

    Every frame size compiles new programs (about two minutes on a CPU), so a CPU run checks the
    smallest pair only unless ``--gt-pairs`` says otherwise. OpenCV's EPE is measured in the same run
    where ``cv2.optflow`` exists, else taken from the reference figures (default parameters only)."""
    from utils.flow import endpoint_error, read_flo
    from utils.tvl1_keras import opencv_flow
    fn, device = tvl1_keras(bench), keras_device()
    pairs = sorted(bench.gt_pairs(), key=lambda p: (read_gray(p / "frame1.png").size, p.name))
    limit = bench.s.gt_pairs
    limit = limit if limit is not None else len(pairs) if bench.s.device or device != "CPU" else int(not bench.s.quick)
    opencv_here = bench.extractable(["tvl1"]) == ["tvl1"]
    first_call = bench.shared.get("tvl1 compile")           # a new frame size compiles about as long
    for pair in pairs[:limit]:
        if first_call is not None and bench.time_left("tvl1keras-parity") < 1.5 * first_call:
            bench.skip("tvl1keras-parity", "tvl1-keras", pair.name, ("epe_px", "epe_ratio_vs_opencv"), device,
                       "no time left to compile this frame size")
            continue
        gt = read_flo(pair / "gt.flo")
        prev, nxt = (read_gray(pair / name) for name in ("frame1.png", "frame2.png"))
        started = time.perf_counter()
        ours = fn.pairs(prev[None], nxt[None])[0]          # as the pipeline computes a one-pair video
        first_call = max(first_call or 0, time.perf_counter() - started)
        epe, put = endpoint_error(ours, gt), bench.writer("tvl1keras-parity", "tvl1-keras", pair.name, device)
        put("epe_px", epe)
        if opencv_here:
            reference = opencv_flow(prev, nxt, fn.params)
            opencv_epe, status, note = endpoint_error(reference, gt), "measured", "OpenCV in this run"
            put("epe_vs_opencv_px", float(np.linalg.norm(ours - reference, axis=-1).mean()))
        elif not bench.s.tvl1_keras_options and pair.name in REFERENCE:
            opencv_epe, status = REFERENCE[pair.name]["tvl1"][0], REFERENCE_STATUS
            note = "no cv2.optflow here: OpenCV 5.0's reference EPE (3 decimals)"
        else:
            continue
        bench.writer("tvl1keras-parity", "tvl1 (OpenCV)", pair.name)("epe_px", opencv_epe, status, note=note)
        put("epe_ratio_vs_opencv", epe / opencv_epe, DERIVED, note=f"target 0.99 to 1.01; {note}")


def stage_storage(bench: Bench) -> None:
    """16-bit storage of the dual variables and warp terms (``storage="float16"|"bfloat16"``; u stays
    float32) against float32 on the ground-truth pairs: EPE, the mean end-point difference to the
    float32 flow, and the inner iterations (all levels) with their ratio to float32's. One slot, the
    solver's default parameters; each storage and frame size compiles its programs once."""
    from utils.flow import endpoint_error, read_flo
    from utils.tvl1_keras import STORAGE_DTYPES

    device = keras_device()
    pairs = sorted(bench.gt_pairs(), key=lambda p: (read_gray(p / "frame1.png").size, p.name))
    limit = bench.s.gt_pairs if bench.s.gt_pairs is not None else len(pairs) if not bench.s.quick else 1
    for pair in pairs[:limit]:
        gt = read_flo(pair / "gt.flo")
        prev, nxt = (read_gray(pair / name) for name in ("frame1.png", "frame2.png"))
        reference = None
        for storage in STORAGE_DTYPES:                            # float32 first: the reference
            fn = tvl1_keras(bench, {"storage": storage, "slots": 1, "pairs_per_slot": 1})
            flow = fn.pairs(prev[None], nxt[None])[0]
            iterations = int(fn.last_iterations.sum())
            reference = reference or (flow, iterations)
            put = bench.writer("tvl1keras-storage", f"tvl1-keras, storage={storage}", pair.name, device)
            put("epe_px", endpoint_error(flow, gt))
            put("inner_iterations", iterations, note="all pyramid levels and warps")
            if storage != "float32":
                put("epe_vs_float32_px", float(np.linalg.norm(flow - reference[0], axis=-1).mean()),
                    note="mean end-point difference to the float32 flow")
                put("iterations_vs_float32", iterations / reference[1], DERIVED)
            bench.log(f"tvl1keras-storage: {pair.name} {storage}: {iterations} iterations")


def smoke(bench: Bench) -> str:
    """The device check's first half minute: Keras runs on its backend and on the GPU that nvidia-smi
    sees, and the solver finds the 1 px motion between two crops of a real frame (one pyramid level,
    few iterations: a quick compile). Raises RuntimeError saying what is wrong; returns what it saw."""
    import keras
    fn, device = tvl1_keras(bench, QUICK_TVL1), keras_device()
    if nvidia_smi("name") and device == "CPU":
        raise RuntimeError(f"nvidia-smi sees {nvidia_smi('name')[0]} but Keras ({keras.backend.backend()}) runs on "
                           f"the CPU ({fn.device}): the backend's CUDA build is missing or does not load")
    frame = bench.gray(bench.clips(size=FLOW_SIZE)[0], 1, (66, 48))[0]
    call = fn.plan(48, 64, 1 << 30)[0]         # a full call, as the check's quick mode (CI) then makes
    flow = fn.pairs(np.repeat(frame[None, :, :64], call, 0), np.repeat(frame[None, :, 1:65], call, 0))[0]
    u, v = float(np.median(flow[..., 0])), float(np.median(flow[..., 1]))
    if not np.isfinite(flow).all() or abs(u + 1) > 0.25 or abs(v) > 0.25:
        raise RuntimeError(f"TV-L1 in Keras gives a median flow of ({u:.2f}, {v:.2f}) px for a shift of (-1, 0)")
    return f"Keras {keras.__version__} on {fn.device}: TV-L1 finds ({u:.2f}, {v:.2f}) px for a shift of (-1, 0)"
