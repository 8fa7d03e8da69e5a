"""Extraction stages: ``utils.extract.extract_dataset`` end to end (projected to the full HMDB51);
the CPU side of batched extraction (``utils.extract_batched.run_batched`` with a flow that costs
nothing) over 1..N worker processes; batched ``tvl1-keras`` extraction end to end against the same
flow calls alone."""
from __future__ import annotations

import math
import shutil
import time

import numpy as np

from utils.bench.context import FLOW_SIZE, HMDB51_FRAME_PAIRS, Bench, link_clips
from utils.bench.flow import recommended_workers
from utils.bench.machine import keras_device, worker_grid
from utils.bench.rows import DERIVED, format_value
from utils.config import Config


def stage_extract(bench: Bench) -> None:
    """``extract_dataset`` on the clips with each method (TV-L1, about 1 s per pair per core: at most 4
    clips of 16 frames); the start-up of a run is timed with the same call on 2 frames per clip and
    left out of the pairs/s that the projections scale up."""
    from utils.extract import extract_dataset
    for method in bench.extractable(bench.s.methods[:1] if bench.s.quick else [Config().flow_method, "dis-medium"]):
        slow = method.startswith("tvl1")
        clips = bench.clips(min(bench.s.max_videos or 4, 4) if slow else bench.s.max_videos)
        max_frames = min(bench.s.max_frames or 16, 16) if slow else bench.s.max_frames
        workers, threads = recommended_workers(bench, method)
        workers = min(workers, len(clips))
        videos, out = link_clips(clips, bench.workdir / f"videos-{method}"), bench.workdir / f"rawframes-{method}"
        runs = []
        for frames in (2, max_frames):              # the start-up run first: the real run's output stays
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            summary = extract_dataset(videos, out, method, workers, max_frames=frames, opencv_threads=threads,
                                      progress=False)
            if summary.failed or not summary.frame_pairs:
                raise RuntimeError(f"extraction with {method} failed: {summary.failures[:3]}")
            runs.append((summary.frame_pairs, time.perf_counter() - started))
        bench.rawframes[method] = out
        (tiny_pairs, tiny_seconds), (pairs, seconds) = runs
        startup = max(0.0, tiny_seconds - tiny_pairs * seconds / pairs)
        rate = pairs / (seconds - startup if seconds - startup > 0.25 * seconds else seconds)
        setting = (f"{workers} worker(s) x {threads} thread(s), {summary.done} clips, "
                   f"{f'{max_frames} frames each' if max_frames else 'whole'}")
        kb_per_pair = sum(f.stat().st_size for f in out.rglob("*.jpg")) / 1024 / pairs
        hours, put = HMDB51_FRAME_PAIRS / rate / 3600, bench.writer("extract", method, setting)
        put("pairs_per_s", rate, note=f"start-up excluded; {pairs} pairs")
        put("startup_seconds", startup)
        put("kb_per_pair", kb_per_pair)
        put("hours_full_hmdb51", hours, DERIVED, note=f"{HMDB51_FRAME_PAIRS:,} pairs / measured pairs/s")
        put("core_hours_full_hmdb51", hours * workers * threads, DERIVED)
        put("disk_gb_full_hmdb51", kb_per_pair * 1024 * HMDB51_FRAME_PAIRS / 1e9, DERIVED, note="JPEG q95")
    stage_frames_only(bench)


def stage_frames_only(bench: Bench) -> None:
    """``extract_dataset(method=None)`` (``--no-flow``: the RGB frames only, all the SG3I stream reads) on
    the clips, in one process and in one per core: frames stored per second, decode, resize and JPEG."""
    from utils.extract import extract_dataset
    clips = bench.clips(bench.s.max_videos)
    videos = link_clips(clips, bench.workdir / "videos-frames-only")
    hmdb51_frames = HMDB51_FRAME_PAIRS + 6766                  # a flow pair per frame but the last of each clip
    for workers in dict.fromkeys((1, min(bench.cores, len(clips)))):
        out = bench.workdir / f"rawframes-frames-only-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        summary = extract_dataset(videos, out, None, workers, max_frames=bench.s.max_frames, progress=False)
        if summary.failed or not summary.frames:
            raise RuntimeError(f"extraction of frames only failed: {summary.failures[:3]}")
        put = bench.writer("extract", "frames only (--no-flow)", f"{workers} worker(s), {summary.done} clips, "
                           f"{f'{bench.s.max_frames} frames each' if bench.s.max_frames else 'whole'}")
        put("frames_per_s", summary.frames_per_second, note=f"{summary.frames} frames, start-up included")
        put("hours_full_hmdb51", hmdb51_frames / summary.frames_per_second / 3600, DERIVED,
            note=f"{hmdb51_frames:,} frames / measured frames/s")


class StoredFlows:
    """A batched flow method that costs nothing: it hands out real flows computed beforehand, so
    ``run_batched`` measures its CPU side alone (decode, RGB JPEGs, quantise, flow JPEGs)."""

    def __init__(self, flows: np.ndarray):
        self.flows = flows

    def pairs(self, frames0: np.ndarray, frames1: np.ndarray) -> np.ndarray:
        return self.flows[np.arange(len(frames0)) % len(self.flows)]


class RecordedFlow:
    """A batched flow method that keeps the frames of each call, to replay them alone afterwards."""

    def __init__(self, fn):
        self.fn, self.plan, self.calls = fn, fn.plan, []

    def pairs(self, frames0: np.ndarray, frames1: np.ndarray) -> np.ndarray:
        self.calls.append((frames0, frames1))
        return self.fn.pairs(frames0, frames1)


def pipeline(bench: Bench, flow_fn, videos, workers: int, settings):
    """One ``run_batched`` over ``videos`` into a scratch folder; its ``PipelineStats``."""
    from utils.extract_batched import PipelineStats, run_batched
    from utils.extract_job import Job, list_videos
    out, stats = bench.workdir / "rawframes-batched", PipelineStats()
    shutil.rmtree(out, ignore_errors=True)
    jobs = [Job(str(v), str(out / v.parent.name / v.stem), settings) for v in list_videos(videos)]
    failed = [r for r in run_batched(jobs, flow_fn, workers, stats=stats) if r.error]
    if failed:
        raise RuntimeError(f"batched extraction failed: {failed[:3]}")
    shutil.rmtree(out, ignore_errors=True)
    return stats


def stage_extract_cpu(bench: Bench) -> None:
    """Pairs/s of batched extraction when the flow is free: the work of its worker processes (the
    flows written are DIS-medium flows of the same clips: JPEG size and time depend on content).
    Each process count runs ``--repeats`` times; the best run counts (other work only slows a run)."""
    from utils.dataset import video_metadata
    from utils.extract_job import ExtractionSettings
    from utils.flow import make_video_flow
    clips, item = bench.clips(size=FLOW_SIZE), "decode + quantise + 3 JPEG writes"
    flows = StoredFlows(np.concatenate([make_video_flow("dis-medium")(bench.gray(c, 8)) for c in clips]))
    per_pass = max(1, sum(min(bench.s.max_frames or 10 ** 6, video_metadata(c)["frames"]) - 1 for c in clips))
    rates: dict[int, float] = {}
    for workers in bench.s.workers or worker_grid(bench.cores):
        copies = max(1, math.ceil(300 * workers * bench.s.min_time / per_pass))   # min_time at 300 pairs/s a process
        videos = link_clips(clips, bench.workdir / "videos-cpu-side", copies)
        runs = [pipeline(bench, flows, videos, workers, ExtractionSettings("tvl1-keras", max_frames=bench.s.max_frames))
                .steady_pairs_per_s for _ in range(bench.s.repeats)]
        rates[workers] = max(runs)
        put = bench.writer("extract-cpu", item, f"{workers} process(es), {copies} x {len(clips)} clips")
        put("pairs_per_s", rates[workers], note="runs: " + ", ".join(format_value(r) for r in runs) + " pairs/s")
        put("pairs_per_s_per_core", rates[workers] / workers, DERIVED)
        if workers > 1 and 1 in rates:
            put("scaling_efficiency", rates[workers] / (workers * rates[1]), DERIVED, note="target >= 0.9")


def stage_extract_batched(bench: Bench) -> None:
    """``tvl1-keras`` extraction end to end (``run_batched``: flow here, the rest in one worker process
    per core) against its own flow calls replayed alone right after each run (``--repeats`` pairs of
    runs; the ratio is the mean of theirs). Clips cut to a quarter call each, 4 per call,
    ``batched_calls`` calls: every call is full, so both run the same compiled programs."""
    from utils.bench.tvl1 import tvl1_keras
    from utils.extract_job import ExtractionSettings, list_videos
    fn, device = tvl1_keras(bench), keras_device()
    width, height = bench.s.tvl1_size or FLOW_SIZE
    call = fn.plan(height, width, 1 << 30)[0]                   # what run_batched calls it with
    per_video, n_videos = max(1, call // 4), min(4, call) * bench.s.batched_calls
    clips = bench.clips(size=FLOW_SIZE)
    videos = link_clips(clips, bench.workdir / "videos-batched", math.ceil(n_videos / len(clips)))
    for extra in list_videos(videos)[n_videos:]:
        extra.unlink()
    settings = ExtractionSettings("tvl1-keras", size=bench.s.tvl1_size, max_frames=per_video + 1,
                                  method_options=dict(bench.s.tvl1_keras_options))
    fn.pairs(*[np.zeros((call, height, width), np.uint8)] * 2)   # compiles the pipeline's call, if tvl1keras did not
    runs, alone = [], []
    for _ in range(bench.s.repeats):
        recorded = RecordedFlow(fn)
        runs.append(pipeline(bench, recorded, videos, bench.cores, settings))
        started = time.perf_counter()
        for frames0, frames1 in recorded.calls:
            fn.pairs(frames0, frames1)
        alone.append(runs[-1].pairs / (time.perf_counter() - started))
    rate, overhead, pairs = (np.mean([getattr(r, k) for r in runs])
                             for k in ("steady_pairs_per_s", "main_overhead", "pairs"))
    setting = f"{n_videos} clips x {per_video} pairs, {width}x{height}, calls of {call}, {bench.cores} worker processes"
    put = bench.writer("extract-batched", "tvl1-keras", setting, device)
    put("startup_seconds", np.mean([r.first_flow for r in runs]), note="spawning the workers, the first decodes")
    put("pairs_per_s", rate, note="from the first flow call: decode, flow, quantise, write")
    put("flow_only_pairs_per_s", np.mean(alone), note="the same flow calls (same frames, same order) alone")
    put("end_to_end_vs_flow_only", np.mean([r.steady_pairs_per_s / a for r, a in zip(runs, alone)]), DERIVED,
        note=f"target >= 0.9; runs: end to end {', '.join(format_value(r.steady_pairs_per_s) for r in runs)}, "
             f"flow alone {', '.join(format_value(a) for a in alone)} pairs/s")
    put("hours_full_hmdb51", HMDB51_FRAME_PAIRS / rate / 3600, DERIVED)
    put("main_ms_per_pair", 1000 * overhead / pairs,
        note=f"outside flow calls and waits: caps it at {format_value(pairs / max(overhead, 1e-9))} pairs/s")
