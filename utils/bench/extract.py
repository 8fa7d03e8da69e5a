"""Extraction stages: ``utils.extract.extract_dataset`` end to end (projected to the full HMDB51);
the CPU side of batched extraction over 1..N processes; batched (``tvl1-keras``) extraction end
to end against its flow computation alone."""
from __future__ import annotations

import multiprocessing
import queue as _queue
import shutil
import time
import traceback
from pathlib import Path

import cv2
import numpy as np

from utils.bench.context import FLOW_SIZE, HMDB51_FRAME_PAIRS, Bench, link_clips
from utils.bench.flow import recommended_workers
from utils.bench.machine import device_label, worker_grid
from utils.bench.rows import DERIVED, format_value, row


def extract_methods(bench: Bench) -> list[str]:
    if bench.s.extract_methods:
        return bench.extractable(bench.s.extract_methods)
    if bench.s.quick:
        return bench.extractable(bench.s.methods)[:1]
    return bench.extractable([bench.s.default_method, "dis-medium"])


def stage_extract(bench: Bench) -> None:
    from utils.extract import extract_dataset
    for method in extract_methods(bench):
        slow = method.startswith("tvl1")
        max_videos = bench.s.slow_max_videos if slow else bench.s.max_videos
        max_frames = bench.s.slow_max_frames if slow else bench.s.max_frames
        clips = bench.clips(max_videos)
        workers, threads = recommended_workers(bench, method)
        workers = min(workers, len(clips))
        videos_dir = bench.workdir / f"videos-{method}"
        link_clips(clips, videos_dir)
        out_dir = bench.workdir / f"rawframes-{method}"
        shutil.rmtree(out_dir, ignore_errors=True)
        bench.log(f"extract: {method}, {len(clips)} clip(s), "
                  f"{'whole clips' if not max_frames else f'first {max_frames} frames'}, "
                  f"{workers} worker(s) x {threads} OpenCV thread(s)")
        started = time.perf_counter()
        summary = extract_dataset(videos_dir, out_dir, method, workers, max_frames=max_frames,
                                  opencv_threads=threads, progress=False)
        seconds = time.perf_counter() - started
        if summary.failed or not summary.frame_pairs:
            raise RuntimeError(f"extraction benchmark failed for {method}: {summary.failures[:3]}")
        bench.rawframes[method] = out_dir
        pairs = summary.frame_pairs
        # The fixed cost of a run (spawning workers, imports, building the flow method): the same
        # call on 2 frames per clip; the rest is the per-pair cost that the projection scales up.
        tiny_dir = bench.workdir / f"rawframes-{method}-startup"
        started = time.perf_counter()
        tiny = extract_dataset(videos_dir, tiny_dir, method, workers, max_frames=2, opencv_threads=threads,
                               progress=False)
        startup = max(0.0, time.perf_counter() - started - tiny.frame_pairs / (pairs / seconds))
        shutil.rmtree(tiny_dir, ignore_errors=True)
        steady = seconds - startup if seconds - startup > 0.25 * seconds else seconds
        rate = pairs / steady
        setting = (f"{workers} worker(s) x {threads} thread(s), {summary.done} clips, "
                   f"{'whole' if not max_frames else f'{max_frames} frames each'}")
        size_bytes = sum(f.stat().st_size for f in out_dir.rglob("*.jpg"))
        kb_per_pair = size_bytes / 1024 / pairs
        bench.add(
            row("extract", method, setting, "videos_per_s", summary.done / seconds,
                note=f"{pairs / summary.done:.0f} pairs per clip"),
            row("extract", method, setting, "pairs_per_s_end_to_end", pairs / seconds, note="start-up included"),
            row("extract", method, setting, "pairs_per_s", rate, note="start-up excluded"),
            row("extract", method, setting, "seconds", seconds),
            row("extract", method, setting, "startup_seconds", startup),
            row("extract", method, setting, "frame_pairs", pairs),
            row("extract", method, setting, "kb_per_pair", kb_per_pair),
            row("extract", method, setting, "hours_full_hmdb51", HMDB51_FRAME_PAIRS / rate / 3600,
                status=DERIVED, note=f"{HMDB51_FRAME_PAIRS:,} pairs / measured pairs/s"),
            row("extract", method, setting, "core_hours_full_hmdb51",
                HMDB51_FRAME_PAIRS / rate / 3600 * workers * threads, status=DERIVED, note="hours x cores used"),
            row("extract", method, setting, "disk_gb_full_hmdb51",
                kb_per_pair * 1024 * HMDB51_FRAME_PAIRS / 1e9, status=DERIVED, note="JPEG q95, native size"),
        )


# --- the CPU side of batched extraction -----------------------------------------------------------
CPU_SIDE = "decode + quantise + 3 JPEG writes"


def _cpu_side_worker(worker: int, clip: str, flows: np.ndarray, settings, folder: str, min_time: float,
                     barrier, results) -> None:
    """One of N processes: decode ``clip`` (RGB JPEGs) and write ``flows`` (quantise, 2 JPEGs) until
    ``min_time`` passed; reports the pairs done. The work of utils.extract_batched's workers."""
    from utils.extract_job import decode_video, write_flows
    try:
        cv2.setNumThreads(1)
        Path(folder).mkdir(parents=True, exist_ok=True)
        decode_video(clip, folder, settings)                       # warm-up
        barrier.wait(timeout=600)
        count, started = 0, time.monotonic()
        while True:
            frames = decode_video(clip, folder, settings)
            count += write_flows(folder, 1, flows[:len(frames) - 1], settings)
            ended = time.monotonic()
            if ended - started >= min_time:
                break
        results.put((worker, count, started, ended, None))
    except BaseException:  # noqa: BLE001 - report to the parent, release the others
        barrier.abort()
        results.put((worker, 0, 0.0, 0.0, traceback.format_exc()))


def _cpu_side_rate(clips: list[tuple[str, np.ndarray]], settings, workers: int, folder: Path,
                   min_time: float) -> float:
    """Pairs/s of ``workers`` spawned processes doing the CPU side of extraction at the same time."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_cpu_side_worker, daemon=True,
                                 args=(w, *clips[w % len(clips)], settings, str(folder / f"w{w}"), min_time,
                                       barrier, results))
                 for w in range(workers)]
    for p in processes:
        p.start()
    runs = []
    try:
        for _ in range(workers):
            worker, count, started, ended, error = results.get(timeout=600 + 20 * min_time)
            if error:
                raise RuntimeError(f"CPU-side worker {worker} failed:\n{error}")
            runs.append((count, started, ended))
    except _queue.Empty:
        raise RuntimeError("CPU-side worker processes stopped answering") from None
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return sum(c for c, _, _ in runs) / (max(e for _, _, e in runs) - min(s for _, s, _ in runs))


def stage_extract_cpu(bench: Bench) -> None:
    """Pairs/s of the CPU side of batched extraction (what its worker processes do per frame pair:
    decode a frame, write its RGB JPEG, quantise a flow, write its two JPEGs), over 1 .. N processes.

    The flows written are DIS-medium flows of the same clips (real content: JPEG size and time
    depend on it). Each process count is measured ``--repeats`` times; the best run counts (other
    work on the machine only slows a run down) and the spread is in the note."""
    from utils.extract_job import ExtractionSettings
    from utils.flow import make_video_flow
    frames_per_clip = bench.s.max_frames or 32
    clips = bench.clips(native_size=FLOW_SIZE)[:max(1, bench.cores)]
    dis = make_video_flow("dis-medium")
    inputs = []
    for clip in clips:
        gray = bench.gray_pairs_clip(clip, 10**6)[:frames_per_clip]
        inputs.append((str(clip), dis(gray)))
    settings = ExtractionSettings(method="tvl1-keras", max_frames=frames_per_clip)
    grid = list(bench.s.workers) or worker_grid(bench.cores)
    bench.log(f"extract-cpu: {CPU_SIDE} per pair, {len(clips)} clip(s) x {frames_per_clip} frames, "
              f"processes {grid}, best of {bench.s.repeats}")
    rates = {}
    for workers in grid:
        runs = [_cpu_side_rate(inputs, settings, workers, bench.workdir / "cpu-side", bench.s.min_time)
                for _ in range(bench.s.repeats)]
        rates[workers] = max(runs)
        note = "runs: " + ", ".join(format_value(r) for r in runs) + " pairs/s; 320x240"
        setting = f"{workers} process{'es' if workers > 1 else ''}"
        bench.add(row("extract-cpu", CPU_SIDE, setting, "pairs_per_s", rates[workers], note=note),
                  row("extract-cpu", CPU_SIDE, setting, "pairs_per_s_per_core", rates[workers] / workers,
                      status=DERIVED))
        if workers > 1 and 1 in rates:
            bench.add(row("extract-cpu", CPU_SIDE, setting, "scaling_efficiency",
                          rates[workers] / (workers * rates[1]), status=DERIVED, note="target >= 0.9"))
    shutil.rmtree(bench.workdir / "cpu-side", ignore_errors=True)


# --- batched extraction end to end against its flow computation alone ------------------------------
def stage_extract_batched(bench: Bench) -> None:
    """``tvl1-keras`` extraction end to end (``utils.extract_batched``: flow here, decoding and
    writing in one worker process per core) against the same flow calls alone, in the same run.

    Clips of the speed size, cut to ``call / 4`` pairs each, ``4 x batched_calls`` of them: every
    flow call is full, so both measurements run the same compiled programs, and the flow alone
    replays each pipeline run's calls pair for pair right after it. ``--repeats`` such pairs of
    runs; the figures are their means (the ratio: the mean of the pairs' ratios)."""
    from utils.extract_job import ExtractionSettings, Job, iter_frames
    from utils.extract_batched import PipelineStats, run_batched
    from utils.bench.tvl1 import tvl1_keras
    flow_fn = tvl1_keras(bench)
    device = device_label(flow_fn.device)
    width, height = bench.s.tvl1_size or FLOW_SIZE
    call, _ = flow_fn.plan(height, width, 1 << 30)
    per_video = max(1, call // 4)
    n_videos = 4 * bench.s.batched_calls if call >= 4 else call * bench.s.batched_calls
    clips = bench.clips(native_size=FLOW_SIZE)
    videos_dir = bench.workdir / "videos-batched"
    shutil.rmtree(videos_dir, ignore_errors=True)
    for k in range(n_videos):                   # clips used more than once get their own names
        clip = clips[k % len(clips)]
        target = videos_dir / clip.parent.name / f"{clip.stem}_{k}{clip.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(clip.resolve())
    settings = ExtractionSettings(method="tvl1-keras", max_frames=per_video + 1,
                                  size=bench.s.tvl1_size, method_options=dict(bench.s.tvl1_keras_options))
    from utils.extract_job import list_videos
    videos = list_videos(videos_dir)
    gray = {}
    for video in videos:
        frames = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in iter_frames(video, per_video + 1)]
        if bench.s.tvl1_size:
            frames = [cv2.resize(f, bench.s.tvl1_size, interpolation=cv2.INTER_AREA) for f in frames]
        gray[str(video)] = np.stack(frames)
    n_pairs = sum(len(g) - 1 for g in gray.values())

    def flow_alone(calls) -> float:
        """The pipeline's flow calls again, pair for pair in its order (the solver's time depends on
        which pairs share its slots), without decoding and writing: pairs/s."""
        batches = [(np.concatenate([gray[v][first:first + n] for v, first, n in call]),
                    np.concatenate([gray[v][first + 1:first + n + 1] for v, first, n in call])) for call in calls]
        started = time.perf_counter()
        for frames0, frames1 in batches:
            flow_fn.pairs(frames0, frames1)
        return n_pairs / (time.perf_counter() - started)
    workers = bench.cores
    setting = f"{len(videos)} clips x {per_video} pairs, {width}x{height}, calls of {call}, {workers} worker process(es)"
    bench.log(f"extract-batched: {setting} on {flow_fn.device}")
    first = next(iter(gray.values()))
    flow_fn.pairs(first[:-1][:call], first[1:][:call])          # warm-up: compiles (shared with tvl1keras)
    out_dir = bench.workdir / "rawframes-batched"
    jobs = [Job(str(v), str(out_dir / v.parent.name / v.stem), settings) for v in videos]
    flow_runs, runs = [], []

    def pipeline() -> None:
        shutil.rmtree(out_dir, ignore_errors=True)
        stats = PipelineStats()
        results = list(run_batched(jobs, flow_fn, workers, stats=stats))
        failed = [r for r in results if r.error]
        if failed or stats.pairs != n_pairs:
            raise RuntimeError(f"batched extraction failed: {failed[:3]}; {stats.pairs} of {n_pairs} pairs")
        runs.append(stats)

    for _ in range(bench.s.repeats):    # each pipeline run, then its own flow calls alone, side by side
        pipeline()
        flow_runs.append(flow_alone(runs[-1].calls))
    ratio = float(np.mean([r.steady_pairs_per_s / f for r, f in zip(runs, flow_runs)]))
    flow_only = float(np.mean(flow_runs))
    spread = (f"runs: end to end {', '.join(format_value(r.steady_pairs_per_s) for r in runs)}; flow alone "
              f"{', '.join(format_value(r) for r in flow_runs)} pairs/s")
    end_to_end = float(np.mean([r.steady_pairs_per_s for r in runs]))
    wall = float(np.mean([r.wall for r in runs]))
    first_flow = float(np.mean([r.first_flow for r in runs]))
    main_overhead = float(np.mean([r.main_overhead for r in runs]))
    bench.add(row("extract-batched", "tvl1-keras", setting, "pairs_per_s_end_to_end", n_pairs / wall,
                  device=device, note="start-up included: spawning the workers, the first decodes"),
              row("extract-batched", "tvl1-keras", setting, "startup_seconds", first_flow, device=device),
              row("extract-batched", "tvl1-keras", setting, "pairs_per_s", end_to_end, device=device,
                  note="end to end from the first flow call: decode, flow, quantise, write"),
              row("extract-batched", "tvl1-keras", setting, "flow_only_pairs_per_s", flow_only, device=device,
                  note="the same flow calls (same pairs, same order) alone"),
              row("extract-batched", "tvl1-keras", setting, "end_to_end_vs_flow_only", ratio,
                  status=DERIVED, device=device, note=f"start-up excluded; target >= 0.9; the mean ratio of the "
                                                      f"runs side by side; {spread}"),
              row("extract-batched", "tvl1-keras", setting, "main_ms_per_pair", 1000 * main_overhead / n_pairs,
                  device=device, note=f"main process outside flow calls and waits; it caps extraction at "
                                      f"{format_value(n_pairs / max(main_overhead, 1e-9))} pairs/s"),
              row("extract-batched", "tvl1-keras", setting, "batch_pairs", runs[0].batch_pairs, device=device))
    shutil.rmtree(out_dir, ignore_errors=True)
