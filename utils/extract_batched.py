"""Extraction with an in-process batched flow method (``tvl1-keras``) that never waits for the CPU.

:func:`utils.extract.extract_dataset` hands batched methods to :func:`run_batched`. The main
process only computes flow; ``workers`` spawned processes do everything else, at the same time:

* **decode** a video, write its ``img_*.jpg`` and send its grayscale frames back;
* **write** flows: quantise (``utils.flow.quantize_flow``, unless the flow method did it on its
  device) and encode ``flow_x/flow_y_*.jpg``.

Frame pairs of several videos of the same size share one flow call (``flow_fn.pairs``, e.g.
:meth:`utils.tvl1_keras.TVL1Keras.pairs`, whose ``plan`` gives the call size), so short clips fill
a GPU batch as well as long ones. Decoding runs ahead of the flow by a bounded number of pairs
(memory stays bounded); flows are written while the next batch is computed.

The output is the same as :func:`utils.extract_job.extract_video`'s, file for file (the workers run
:func:`utils.extract_job.decode_video` and :func:`utils.extract_job.write_flows`): each video is
written to ``.tmp-<video>-<pid of this process>`` and renamed when its last flow is written, so
a video's folder exists only when complete; a video that cannot be read is returned as a failure
with the same reason, a damaged one with the same warnings. An interrupted run removes the
temporary folders of its unfinished videos.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from utils.extract_job import (Job, Result, VideoReadError, decode_video, failure, init_worker, move_into_place,
                               tmp_folder, write_flows)


# --- the main process ---------------------------------------------------------------------------
@dataclass
class PipelineStats:
    """Where the main process spent a :func:`run_batched` call (seconds), and what it did."""

    wall: float = 0.0
    flow: float = 0.0           # inside flow calls
    waiting: float = 0.0        # blocked until a worker finished something
    first_flow: float = 0.0     # seconds from the start to the first flow call (start-up, first decodes)
    pairs: int = 0
    flow_calls: int = 0
    batch_pairs: int = 0        # pairs per flow call (the largest planned)
    calls: list = field(default_factory=list)   # per flow call: its (video path, first pair, pairs) segments

    @property
    def steady_pairs_per_s(self) -> float:
        """Pairs per second from the first flow call to the end (the run's start-up excluded)."""
        return self.pairs / max(self.wall - self.first_flow, 1e-9)

    @property
    def main_overhead(self) -> float:
        """Seconds the main process worked outside flow calls (batching, sending, bookkeeping)."""
        return max(0.0, self.wall - self.flow - self.waiting)


@dataclass(eq=False)
class _Video:
    job: Job
    tmp_dir: Path
    frames: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    pairs: int = 0
    flowed: int = 0             # pairs whose flow was computed
    writes: int = 0             # write tasks not finished yet
    error: str | None = None
    details: str | None = None

    @property
    def finished(self) -> bool:
        """Nothing more will happen to it: every flow written, or failed with no write in flight."""
        return not self.writes and (self.error is not None or (self.frames is None and self.flowed == self.pairs))


@dataclass
class _Batches:
    """Pairs waiting for their flow, per frame size: (video, first pair index 0-based, count)."""

    queues: dict[tuple[int, int], deque] = field(default_factory=dict)
    waiting: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, video: _Video) -> None:
        size = video.frames.shape[1:]
        self.queues.setdefault(size, deque()).append([video, 0, video.pairs])
        self.waiting[size] = self.waiting.get(size, 0) + video.pairs

    def total(self) -> int:
        return sum(self.waiting.values())

    def take(self, size: tuple[int, int], limit: int) -> list[tuple[_Video, int, int]]:
        """Up to ``limit`` pairs of this size, oldest first, as (video, first pair, count) segments."""
        taken, queue = [], self.queues[size]
        while queue and limit > 0:
            segment = queue[0]
            video, first, count = segment
            n = min(count, limit)
            taken.append((video, first, n))
            limit -= n
            if n == count:
                queue.popleft()
            else:
                segment[1], segment[2] = first + n, count - n
            self.waiting[size] -= n
        return taken


def _batch_size(flow_fn, height: int, width: int) -> int:
    """Pairs per flow call: the method's own plan for a long queue (``TVL1Keras.plan``), else 64."""
    plan = getattr(flow_fn, "plan", None)
    return int(plan(height, width, 1 << 30)[0]) if plan else 64


def _compute(flow_fn, segments: list[tuple[_Video, int, int]]) -> np.ndarray:
    """Flows of the pairs of ``segments`` in one call: float32[sum of counts, H, W, 2], or uint8
    (``quantize_flow``'s bytes) from a method that quantises on its device (``quantizes_on_device``)."""
    frames0 = np.concatenate([v.frames[first:first + n] for v, first, n in segments])
    frames1 = np.concatenate([v.frames[first + 1:first + n + 1] for v, first, n in segments])
    if getattr(flow_fn, "quantizes_on_device", False):
        return np.asarray(flow_fn.pairs(frames0, frames1, quantize=segments[0][0].job.settings.flow_bound), np.uint8)
    return np.asarray(flow_fn.pairs(frames0, frames1), np.float32)


def _finish(video: _Video) -> Result:
    """Rename a complete video's folder into place (or clean up a failed one); its result."""
    if video.error is not None:
        shutil.rmtree(video.tmp_dir, ignore_errors=True)
        return Result(video.job.video_path, error=video.error, details=video.details)
    try:
        move_into_place(video.tmp_dir, Path(video.job.video_out_dir))
    except OSError:
        shutil.rmtree(video.tmp_dir, ignore_errors=True)
        raise
    return Result(video.job.video_path, frame_pairs=video.pairs, warnings=video.warnings)


def run_batched(jobs: Sequence[Job], flow_fn, workers: int, opencv_threads: int = 1, *,
                stats: PipelineStats | None = None, prefetch_batches: float = 2.0) -> Iterator[Result]:
    """Extract ``jobs`` with the batched ``flow_fn`` here and ``workers`` processes for the rest.

    ``flow_fn`` has ``pairs(frames0, frames1)`` (uint8[N, H, W] x2 -> float32[N, H, W, 2]); one
    without it is called per video (``flow_fn(frames)``). Decoding runs ahead by
    ``prefetch_batches`` flow calls. Yields a result per video as it completes; ``stats``
    (if given) is filled in.
    """
    stats = stats if stats is not None else PipelineStats()
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")    # safe with threads, CUDA and notebooks
    pool = concurrent.futures.ProcessPoolExecutor(max(1, workers), mp_context=context,
                                                  initializer=init_worker, initargs=(opencv_threads, os.getpid()))
    todo = deque(jobs)
    decoding: dict[concurrent.futures.Future, _Video] = {}
    writing: dict[concurrent.futures.Future, _Video] = {}
    batches = _Batches()
    sizes: dict[tuple[int, int], int] = {}            # frame size -> pairs per flow call
    unfinished: set[_Video] = set()
    batched = hasattr(flow_fn, "pairs")
    try:
        while todo or decoding or writing or batches.total():
            # 1. Decode ahead while the pairs waiting for their flow are fewer than the budget.
            budget = prefetch_batches * max(sizes.values(), default=64)
            while todo and len(decoding) < max(1, workers) and batches.total() < budget:
                job = todo.popleft()
                video = _Video(job, tmp_folder(job.video_out_dir))
                shutil.rmtree(video.tmp_dir, ignore_errors=True)
                video.tmp_dir.mkdir(parents=True)
                unfinished.add(video)
                decoding[pool.submit(decode_video, job.video_path, str(video.tmp_dir), job.settings)] = video
            # 2. Take in what the workers finished.
            for future in [f for f in list(decoding) + list(writing) if f.done()]:
                video = decoding.pop(future, None)
                if video is not None:
                    try:
                        video.frames, video.warnings = future.result()
                        video.pairs = len(video.frames) - 1
                        sizes.setdefault(video.frames.shape[1:],
                                         _batch_size(flow_fn, *video.frames.shape[1:]) if batched else 1)
                        batches.add(video)
                    except VideoReadError as error:
                        video.error = str(error)
                    except Exception as error:  # noqa: BLE001 - one bad video must not stop a dataset run
                        failed = failure(video.job.video_path, error, _remote_traceback(error))
                        video.error, video.details = failed.error, failed.details
                else:
                    video = writing.pop(future)
                    video.writes -= 1
                    try:
                        future.result()
                    except Exception as error:  # noqa: BLE001
                        failed = failure(video.job.video_path, error, _remote_traceback(error))
                        video.error = video.error or failed.error
                        video.details = video.details or failed.details
                if video in unfinished and video.finished:
                    unfinished.remove(video)
                    yield _finish(video)
            # 3. Compute the flow of a full batch, or of what is left when no more pairs can come.
            size = _next_batch(batches, sizes, more_coming=bool(todo or decoding), budget=budget)
            if size is not None:
                # A method without .pairs gets one whole video per call.
                segments = batches.take(size, sizes[size] if batched else batches.queues[size][0][2])
                # In path order: a call's pairs (and so the solver's schedule) do not depend on
                # which worker finished decoding first.
                segments = sorted(((v, first, n) for v, first, n in segments if v.error is None),
                                  key=lambda segment: (segment[0].job.video_path, segment[1]))
                if segments:
                    flow_started = time.perf_counter()
                    if not stats.flow_calls:
                        stats.first_flow = flow_started - started
                    flows = _compute(flow_fn, segments) if batched else np.asarray(flow_fn(segments[0][0].frames))
                    stats.flow += time.perf_counter() - flow_started
                    stats.flow_calls += 1
                    stats.calls.append([(v.job.video_path, first, n) for v, first, n in segments])
                    stats.batch_pairs = max(stats.batch_pairs, sizes[size] if batched else len(flows))
                    chunk = max(1, -(-len(flows) // max(1, workers)))     # spread the writing over the workers
                    offset = 0
                    for video, first, n in segments:
                        for start in range(0, n, chunk):
                            count = min(n - start, chunk)
                            future = pool.submit(write_flows, str(video.tmp_dir), first + start + 1,
                                                 flows[offset + start:offset + start + count], video.job.settings)
                            writing[future] = video
                            video.writes += 1
                        offset += n
                        video.flowed += n
                        stats.pairs += n
                        if video.flowed == video.pairs:
                            video.frames = None       # all its pairs are computed: free the frames
                continue
            # 4. Nothing to compute: wait for a worker.
            pending = list(decoding) + list(writing)
            if pending:
                wait_started = time.perf_counter()
                concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                stats.waiting += time.perf_counter() - wait_started
    except BaseException:
        # Interrupted (Ctrl-C, the stop button of a notebook, an error): stop the workers now and
        # remove the folders of the videos that are not complete.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        pool.shutdown(wait=False, cancel_futures=True)
        for video in unfinished:
            shutil.rmtree(video.tmp_dir, ignore_errors=True)
        raise
    finally:
        stats.wall = time.perf_counter() - started
    pool.shutdown()


def _next_batch(batches: _Batches, sizes: dict, more_coming: bool, budget: float) -> tuple[int, int] | None:
    """The frame size whose pairs go to the flow now: a full batch, else (nothing more coming, or
    the decode-ahead budget used up) the size with the most pairs waiting; None: wait."""
    waiting = {s: n for s, n in batches.waiting.items() if n > 0}
    if not waiting:
        return None
    full = [s for s, n in waiting.items() if n >= sizes[s]]
    if full:
        return max(full, key=lambda s: waiting[s])
    if not more_coming or batches.total() >= budget:
        return max(waiting, key=lambda s: waiting[s])
    return None


def _remote_traceback(error: BaseException) -> str:
    """The worker's traceback that ``concurrent.futures`` attaches to a re-raised error."""
    cause = error.__cause__
    return str(cause) if cause is not None else "".join(traceback.format_exception(error))
