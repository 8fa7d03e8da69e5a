"""Extraction stage: ``utils.extract.extract_dataset`` end to end, projected to the full HMDB51."""
from __future__ import annotations

import shutil
import time

from utils.bench.context import HMDB51_FRAME_PAIRS, Bench, link_clips
from utils.bench.flow import recommended_workers
from utils.bench.rows import DERIVED, row


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
