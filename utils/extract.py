"""Extract RGB frames and optical flow of a whole dataset into the mmaction2 "rawframes" layout.

Input: ``<videos_dir>/<class>/<video>.avi|.mp4`` (any size, anything OpenCV can decode).
Output: one folder per video, ``<out_dir>/<class>/<video_stem>/`` with ``img_*.jpg``,
``flow_x_*.jpg`` and ``flow_y_*.jpg`` (:mod:`utils.rawframes`; one video's work is
:mod:`utils.extract_job`).

:func:`extract_dataset` decides which videos need work and hands them to an executor: a local
pool of worker processes (per-process OpenCV methods), the batched in-process path of an
accelerator method (:mod:`utils.extract_batched`), or a Ray cluster / a shard of the list
(:mod:`utils.extract_cluster`). It is resumable: a video's folder appears only when complete, so
an interrupted run can simply be started again; finished videos are skipped, half-written ones
are cleaned up and redone. Videos that cannot be read are listed in
``<out_dir>/extraction_failures.csv`` (rewritten each run) and the run goes on; videos extracted
but damaged in ``<out_dir>/extraction_warnings.csv`` (video, warning), kept across runs for as
long as their folder is there.

Command line (a thin wrapper over :func:`extract_dataset`)::

    python -m utils.extract --dataset demo                    # data/demo/videos -> data/demo/rawframes
    python -m utils.extract --videos DIR --out DIR --method dis --workers 2 --short-side 256
    python -m utils.extract --dataset hmdb51 --no-flow        # RGB frames only (the SG3I stream's input)
    python -m utils.extract --dataset hmdb51 --fps 6          # resampled to 6 fps -> rawframes_6fps/
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import errno
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
from tqdm.auto import tqdm   # a widget in Jupyter (one output, not one per update), text in a terminal

from utils import dataset
from utils import extract_cluster as cluster
from utils.config import Config, resolve_classes
from utils.extract_batched import run_batched
from utils import writers
from utils.extract_job import (ExtractionSettings, Job, Result, check_settings, clean_stale_tmp, flow_fn_for,
                               init_worker, list_videos, output_size, run_job, scan_videos, stops_run)
from utils.flow import FLOW_METHODS, check_flow_method
from utils.rawframes import FAILURES_FILE, TMP_PREFIX, WARNINGS_FILE, video_folders

log = logging.getLogger(__name__)


class OutputFolderError(OSError):
    """The output folder cannot be created or written (read-only, full disk, ...)."""


# --- a whole dataset ---------------------------------------------------------------------------
@dataclass
class ExtractionSummary:
    """What one :func:`extract_dataset` call did."""

    out_dir: Path
    method: str | None              # None: frames only
    workers: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    frame_pairs: int = 0            # pairs of consecutive frames stored in this run (done videos only)
    frames: int = 0                 # frames stored in this run (done videos only)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)   # (video path, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)   # (video path, warning): extracted, damaged?
    unlisted_classes: list[str] = field(default_factory=list)      # class folders the split files do not list

    @property
    def pairs_per_second(self) -> float:
        return self.frame_pairs / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_per_pair(self) -> float:
        return self.seconds / self.frame_pairs if self.frame_pairs else float("nan")

    @property
    def frames_per_second(self) -> float:
        """Frames stored per second of wall clock (decoding, resizing and writing the JPEGs)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        work = (f"{self.frame_pairs} frame pairs in {self.seconds:.1f} s ({self.pairs_per_second:.1f} pairs/s, "
                f"method {self.method}" if self.method is not None else
                f"{self.frames} frames in {self.seconds:.1f} s ({self.frames_per_second:.1f} frames/s, frames only")
        text = (f"{self.done} done, {self.skipped} skipped (already there), {self.failed} failed; "
                f"{work}, {self.workers} worker(s))")
        if self.failures:
            text += f"; failures listed in {self.out_dir / FAILURES_FILE}"
        if self.warnings:
            text += (f"; {len({video for video, _ in self.warnings})} video(s) with warnings (damaged?) listed in "
                     f"{self.out_dir / WARNINGS_FILE}")
        if self.unlisted_classes:
            text += (f"; no split files list the class folder(s) {', '.join(self.unlisted_classes)}: "
                     "extracted, but never used for training or testing")
        return text


def default_workers(method: str | None) -> int:
    """One worker process per available core (batched methods: processes that decode and write)."""
    if method is not None:
        check_flow_method(method)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _resolve_videos(videos_dir: Path, videos: Iterable[str | Path] | None) -> tuple[list[Path], list[tuple[str, str]]]:
    """The video paths to extract, and the entries of the videos folder skipped (not video files)."""
    if videos is None:
        return scan_videos(videos_dir)
    paths = []
    for entry in map(Path, videos):      # relative: exactly <class>/<file>; absolute: no '..' in it
        if ".." in entry.parts or (not entry.is_absolute() and len(entry.parts) != 2):
            raise ValueError(f"video {str(entry)!r} is not a <class>/<file> path inside {videos_dir} (its frames "
                             f"would be read or written outside the dataset); give paths relative to {videos_dir}")
        paths.append(entry if entry.is_absolute() else videos_dir / entry)
    return paths, []


def extract_dataset(videos_dir: str | Path, out_dir: str | Path, method: str | None = "tvl1",
                    workers: int | None = None, *, videos: Iterable[str | Path] | None = None,
                    size: tuple[int, int] | None = None, short_side: int | None = None,
                    max_frames: int | None = None, jpeg_quality: int = 95,
                    method_options: dict | None = None, opencv_threads: int = 1,
                    progress: bool = True, splits_dir: str | Path | None = None,
                    shard: tuple[int, int] | None = None, ray_address: str | None = None,
                    fps: int | None = None) -> ExtractionSummary:
    """Extract frames and flow for every ``<class>/<video>`` under ``videos_dir`` into ``out_dir``.

    ``method=None`` stores the frames only (no flow); ``fps`` resamples every video to that frame
    rate first (:func:`utils.extract_job.resample_indices`). Both are recorded in the folder's
    settings file, so a folder never mixes them with other frames.

    Resumable: videos whose output folder exists are skipped. ``videos`` restricts the run to
    these paths (relative to ``videos_dir`` or absolute; e.g. the ones listed in the split
    files); a listed video that does not exist is recorded as a failure. Per-process methods
    run in ``workers`` spawned processes (default: one per core) with ``opencv_threads`` OpenCV
    threads each; in-process batched methods compute flow in this process, over frame pairs of
    several videos at once, while ``workers`` processes decode and write
    (:mod:`utils.extract_batched`). ``shard=(K, N)`` takes the K-th of N deterministic parts of the
    video list (its own failures and warnings files); ``ray_address`` (``""``: a local Ray
    instance) sends one Ray task per video instead of local workers (:mod:`utils.extract_cluster`).
    Option values and the output
    folder are checked before any work (ValueError / OSError naming what is wrong). Returns an
    :class:`ExtractionSummary`; failures are also written to ``<out_dir>/extraction_failures.csv``
    and warnings to ``<out_dir>/extraction_warnings.csv``. Given the dataset's ``splits_dir``,
    class folders that no split file lists are named in the summary.
    """
    start = time.perf_counter()
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    _check_options(workers=workers, size=size, short_side=short_side, max_frames=max_frames,
                   jpeg_quality=jpeg_quality, opencv_threads=opencv_threads, fps=fps)
    flow_method = None
    if method is not None:
        flow_method = check_flow_method(method)         # e.g. missing opencv-contrib: fail here, early
    elif method_options:
        raise ValueError(f"flow options {method_options} given, but method=None extracts no flow")
    batched = method is not None and flow_method.batched
    workers = default_workers(method) if workers is None else int(workers)
    settings = ExtractionSettings(method=method, size=tuple(size) if size else None, short_side=short_side,
                                  max_frames=max_frames, jpeg_quality=jpeg_quality,
                                  method_options=dict(method_options or {}), fps=fps)
    output_size(1, 1, settings.size, settings.short_side)   # validates size vs short_side
    video_paths, not_videos = _resolve_videos(videos_dir, videos)
    if shard is not None or ray_address is not None:
        if ray_address is not None and batched:
            raise ValueError(f"--ray sends one task per video to CPU workers; {method!r} is batched (a GPU "
                             f"in one process): split the videos with --shard K/N instead")
        if shard is not None:
            video_paths = cluster.shard_videos(video_paths, shard, videos_dir)

    _prepare_output_folder(out_dir, settings)
    _read_warnings(out_dir / WARNINGS_FILE)      # a damaged file is named now, not after all the work
    # One writer per folder: a second run is refused; shards of one run share the folder.
    with writers.one_writer(out_dir, "extraction", shared=shard is not None):
        return _extract(videos_dir, out_dir, settings, flow_method, workers, video_paths, not_videos,
                        opencv_threads=opencv_threads, progress=progress, splits_dir=splits_dir, shard=shard,
                        ray_address=ray_address, start=start)


def _extract(videos_dir: Path, out_dir: Path, settings: ExtractionSettings, flow_method, workers: int,
             video_paths: list[Path], not_videos: list[tuple[str, str]], *, opencv_threads: int, progress: bool,
             splits_dir, shard, ray_address, start: float) -> ExtractionSummary:
    """The work of :func:`extract_dataset` once its options are checked and it holds the output folder."""
    method, fps = settings.method, settings.fps
    batched = method is not None and flow_method.batched
    if shard is not None or ray_address is not None:    # this run owns its videos, on whichever node
        stale = cluster.remove_own_tmp(out_dir / p.parent.name / p.stem for p in video_paths)
    else:
        stale = clean_stale_tmp(out_dir)
    if stale:
        log.info("removed %d unfinished video folder(s) left by an interrupted run", stale)

    summary = ExtractionSummary(out_dir=out_dir, method=method, workers=workers)
    for path, reason in not_videos:       # links to nothing, loops, FIFOs, devices, folders named x.avi
        summary.failures.append((path, reason))
        log.warning("skipped: %s: %s", path, reason)
    if splits_dir is not None:
        summary.unlisted_classes = _unlisted_classes(videos_dir, Path(splits_dir))
    jobs, seen = [], set()
    for path in video_paths:
        video_out_dir = out_dir / path.parent.name / path.stem
        if video_out_dir in seen:
            summary.failures.append((str(path), f"another video in {path.parent.name}/ has the same name stem {path.stem!r}"))
        elif video_out_dir.is_dir():
            summary.skipped += 1
        else:
            jobs.append(Job(str(path), str(video_out_dir), settings))
        seen.add(video_out_dir)

    if batched and jobs:   # build it here, once, so its device can be logged
        device = f"{getattr(flow_fn_for(settings), 'device', 'in this process')}; {workers} process(es) decode and write"
    else:
        device = f"CPU, {workers} process(es) x {opencv_threads} OpenCV thread(s)"
    log.info("extracting %d video(s) (%d already done) from %s to %s; %s (%s)%s",
             len(jobs), summary.skipped, videos_dir, out_dir,
             f"flow method {method!r}, {flow_method.execution}" if method is not None else "frames only", device,
             f"; resampled to {fps} fps" if fps else "")

    new_warnings: list[tuple[str, str]] = []
    with tqdm(total=len(jobs), unit="video", desc=f"frames+flow ({method})" if method else "frames only",
              disable=not progress or not jobs, dynamic_ncols=True) as bar:
        if batched and jobs:    # flow here, batched over videos; decoding and writing in workers
            results = run_batched(jobs, flow_fn_for(settings), workers, opencv_threads)
        elif ray_address is not None and jobs:
            summary.workers = cluster.ray_cpus(ray_address) // opencv_threads
            results = cluster.run_ray(jobs, ray_address, opencv_threads)
        else:
            results = _run_jobs(jobs, workers, opencv_threads)
        for result in results:
            if stops_run(result):       # every later video would fail the same way: stop, name it
                raise OutputFolderError(
                    f"{out_dir}: {result.error} (video {result.video_path}); free some space or extract into "
                    f"a folder on another disk, then run the same command again: the {summary.done} video(s) "
                    f"finished in this run are kept and this one is redone")
            if result.error is None:
                summary.done += 1
                summary.frame_pairs += result.frame_pairs
                summary.frames += result.frame_pairs + 1
                for note in result.warnings:
                    new_warnings.append((result.video_path, note))
                    log.warning("extracted, but: %s: %s", result.video_path, note)
            else:
                summary.failures.append((result.video_path, result.error))
                log.warning("failed: %s: %s%s", result.video_path, result.error,
                            f"\n{result.details}" if result.details else "")
            bar.update()
            bar.set_postfix(pairs=summary.frame_pairs, failed=len(summary.failures))

    summary.failed = len(summary.failures)
    if shard is None:
        _write_failures(out_dir / FAILURES_FILE, summary.failures)
        summary.warnings = _update_warnings(out_dir, new_warnings, redone={job.video_path for job in jobs})
    else:      # shards run at the same time: each writes its own files, never another shard's
        _write_failures(out_dir / cluster.shard_file(FAILURES_FILE, shard), summary.failures)
        _write_failures(out_dir / cluster.shard_file(WARNINGS_FILE, shard), new_warnings, header=("video", "warning"))
        summary.warnings = new_warnings
    summary.seconds = time.perf_counter() - start
    log.info("%s", summary)
    return summary


def _run_jobs(jobs: Sequence[Job], workers: int, opencv_threads: int) -> Iterator[Result]:
    """Results as they complete: in this process for workers=1, else in spawned processes."""
    if workers == 1 or len(jobs) <= 1:
        previous_threads = cv2.getNumThreads()
        cv2.setNumThreads(opencv_threads)
        try:
            for job in jobs:
                yield run_job(job)
        finally:
            cv2.setNumThreads(previous_threads)
        return
    context = multiprocessing.get_context("spawn")    # safe with threads, CUDA and notebooks
    pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                                  initializer=init_worker,
                                                  initargs=(opencv_threads, os.getpid()))
    try:
        futures = [pool.submit(run_job, job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()
    except BaseException:
        # Interrupted (Ctrl-C, the stop button of a notebook, an error): stop the workers now.
        # Their unfinished videos stay in hidden .tmp- folders, removed by the next run.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _write_failures(path: Path, failures: list[tuple[str, str]], header=("video", "reason")) -> None:
    """A CSV of (video, text) rows, atomically; names that are not UTF-8 get backslash escapes (``\\udce9``)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            writer.writerows(sorted(failures))
        os.replace(tmp, path)
    except OSError as error:
        raise OutputFolderError(f"{path}: cannot be written ({error.strerror or error}); "
                                f"{_WRITE_ADVICE.get(error.errno, 'check the output folder')}, then run again "
                                f"(finished videos are kept)") from error
    finally:
        tmp.unlink(missing_ok=True)


def _update_warnings(out_dir: Path, new: list[tuple[str, str]], redone: set[str]) -> list[tuple[str, str]]:
    """Rewrite ``extraction_warnings.csv``: this run's warnings, plus the earlier ones of videos whose
    folder is still there and was not redone now. Returns all of them."""
    path = out_dir / WARNINGS_FILE
    kept = []
    for video_text, warning in _read_warnings(path):
        video = Path(video_text)
        if video_text not in redone and (out_dir / video.parent.name / video.stem).is_dir():
            kept.append((video_text, warning))
    rows = kept + new
    if rows or path.is_file():
        _write_failures(path, rows, header=("video", "warning"))
    return rows


def _read_warnings(path: Path) -> list[tuple[str, str]]:
    """The (video, warning) rows of an ``extraction_warnings.csv`` ([] if absent); ValueError naming a damaged one."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        rows = list(reader)
    bad = next((i for i, row in enumerate(rows, start=2) if len(row) != 2), None)
    if header != ["video", "warning"] or bad is not None:
        where = "its header is not video,warning" if header != ["video", "warning"] else f"line {bad} has not 2 fields"
        raise ValueError(f"{path}: not an extraction warnings file ({where}: a damaged file?); delete it (the "
                         f"warnings of videos extracted earlier are lost, the frames are not) and run again")
    return [(video, warning) for video, warning in rows]


def _check_options(*, workers, size, short_side, max_frames, jpeg_quality, opencv_threads=1, fps=None) -> None:
    """ValueError for option values that would fail on every video or be silently changed."""
    problems = []
    if workers is not None and int(workers) < 1:
        problems.append(f"workers must be >= 1, got {workers}")
    if opencv_threads is None or int(opencv_threads) < 1:
        problems.append(f"opencv_threads must be >= 1, got {opencv_threads}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        problems.append(f"size must be two positive numbers (width, height), got {size!r}")
    if short_side is not None and short_side < 1:
        problems.append(f"short_side must be >= 1 pixel, got {short_side}")
    if max_frames is not None and max_frames < 2:
        problems.append(f"max_frames must be >= 2 (a flow needs two frames), got {max_frames}")
    if not 0 <= jpeg_quality <= 100:
        problems.append(f"jpeg_quality must be in 0 ... 100 (OpenCV's range), got {jpeg_quality}")
    if fps is not None and (type(fps) is not int or fps < 1):
        problems.append(f"fps must be a whole number of frames per second >= 1 (e.g. 6), got {fps!r}")
    if problems:
        raise ValueError("; ".join(problems))


_WRITE_ADVICE = {errno.ENOSPC: "free some space or give a folder on another disk",
                 errno.EDQUOT: "free some space or give a folder on another disk",
                 errno.EACCES: "it is not writable for you: fix its permissions or give another folder",
                 errno.EPERM: "it is not writable for you: fix its permissions or give another folder",
                 errno.EROFS: "it is on a read-only file system: give another folder"}


def _prepare_output_folder(out_dir: Path, settings: ExtractionSettings) -> None:
    """Create ``out_dir`` and record the settings there, or raise an error that says why it cannot be used."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"the output folder {out_dir} is a file; give a folder (--out)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_settings(out_dir, settings)
    except OSError as error:
        raise OutputFolderError(f"cannot write into the output folder {out_dir}: {error.strerror or error}; "
                                f"{_WRITE_ADVICE.get(error.errno, 'give another folder')}") from error


def _unlisted_classes(videos_dir: Path, splits_dir: Path) -> list[str]:
    """Class folders of ``videos_dir`` that no split file in ``splits_dir`` lists ([] if they cannot be read)."""
    try:
        return dataset.unlisted_class_folders(videos_dir, dataset.class_names(splits_dir))
    except (OSError, ValueError):
        return []


# --- command line ------------------------------------------------------------------------------
def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 340x256, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def _at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _read_video_list(path: Path) -> list[str]:
    """The lines of a ``--list`` file; ValueError / FileNotFoundError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"--list {path}: " + ("is a folder, not a text file" if path.is_dir()
                                                       else "no such file"))
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_no = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(f"--list {path}, line {line_no}: not UTF-8 text; save it as UTF-8") from None
    videos = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.replace("\\", "/").split("/")
        if len(parts) != 2 or Path(line).is_absolute() or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"--list {path}, line {line_no}: {line!r} is not a <class>/<file> path inside the "
                             f"videos folder (no '..', no absolute path); fix or remove the line")
        videos.append(line)
    return videos


def _class_videos(videos_dir: Path, classes: Sequence[str], videos: list[str] | None) -> list[str]:
    """The videos (``<class>/<file>``) of ``classes`` among ``videos`` (default: all of ``videos_dir``);
    a class without a folder there is an error naming it."""
    missing = [name for name in classes if not (Path(videos_dir) / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"--classes: no class folder {', '.join(missing)} in {videos_dir}")
    paths = videos if videos is not None else [str(p.relative_to(videos_dir)) for p in list_videos(videos_dir)]
    return [v for v in paths if Path(v).parent.name in set(classes)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.extract", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", help="demo | hmdb51 | PATH: take --videos/--out from utils.config.Config")
    parser.add_argument("--videos", type=Path, help="folder of <class>/<video> files")
    parser.add_argument("--out", type=Path, help="output folder (<class>/<video>/img_*.jpg, flow_[xy]_*.jpg)")
    parser.add_argument("--method", default=None, choices=sorted(FLOW_METHODS),
                        help="optical flow method (default: tvl1)")
    parser.add_argument("--no-flow", action="store_true",
                        help="RGB frames only, no optical flow (enough for the SG3I stream, notebook 06)")
    parser.add_argument("--fps", type=int, help="resample every video to this frame rate first, e.g. 6 "
                                                "(with --dataset: into rawframes_<fps>fps/)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per core)")
    parser.add_argument("--opencv-threads", type=_at_least_one, default=1, help="OpenCV threads per process")
    resize = parser.add_mutually_exclusive_group()
    resize.add_argument("--short-side", type=int, help="resize so the shorter side has this length")
    resize.add_argument("--size", type=_parse_size, help="resize to WxH, e.g. 340x256 (default: native size)")
    parser.add_argument("--max-frames", type=int, help="only the first N frames of each video (quick runs)")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--list", type=Path, dest="video_list",
                        help="text file of videos to extract, one <class>/<file> per line (default: all)")
    parser.add_argument("--classes", help="only the videos of these class folders: stanford40 (the 12 classes "
                                          "HMDB51 shares with Stanford 40), a file of names, or names a,b,c")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--shard", metavar="K/N", help="only the K-th of N parts of the video list (1-based; "
                                                      "the same split every run: array jobs, e.g. Slurm)")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", dest="ray_address",
                        help="one Ray task per video on the cluster at ADDRESS (e.g. auto, ray://host:10001; "
                             "none: a local Ray instance); needs requirements-cluster.txt")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 when every video was extracted, 1 if some failed, 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_flow and args.method:
        parser.error(f"--no-flow computes no optical flow: drop --method {args.method}")
    method = None if args.no_flow else (args.method or "tvl1")
    splits_dir = None
    if args.dataset:
        try:
            cfg = Config(dataset=args.dataset, fps=args.fps)
        except ValueError as error:
            parser.error(str(error))
        args.videos = args.videos or cfg.videos_dir
        args.out = args.out or cfg.frames_dir
        splits_dir = cfg.splits_dir
        stored = video_folders(cfg.frames_dir)
        if args.videos == cfg.videos_dir and not cfg.videos_dir.is_dir() and stored:
            print(f"nothing to extract: there is no {cfg.videos_dir}, and {cfg.frames_dir} already holds the "
                  f"frames of {len(stored)} videos (made elsewhere, e.g. by mmaction2): the notebooks read them "
                  "as they are")
            return 0
    if args.videos is None or args.out is None:
        parser.error("give --dataset, or both --videos and --out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    shard = None
    if args.shard:
        try:
            shard = cluster.parse_shard(args.shard)
        except ValueError as error:
            parser.error(str(error))
    try:
        videos = _read_video_list(args.video_list) if args.video_list else None
        if args.classes:
            videos = _class_videos(args.videos, resolve_classes(args.classes), videos)
        summary = extract_dataset(args.videos, args.out, method, args.workers, videos=videos, fps=args.fps,
                                  size=args.size, short_side=args.short_side, max_frames=args.max_frames,
                                  jpeg_quality=args.jpeg_quality, opencv_threads=args.opencv_threads,
                                  progress=not args.no_progress, splits_dir=splits_dir, shard=shard,
                                  ray_address=args.ray_address)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())

