"""Extract RGB frames and optical flow from videos into the mmaction2 "rawframes" layout.

Input: ``<videos_dir>/<class>/<video>.avi|.mp4`` (any size, anything OpenCV can decode).
Output, per video, ``<out_dir>/<class>/<video_stem>/``::

    img_00001.jpg ... img_NNNNN.jpg                 every decodable frame (colour JPEG)
    flow_x_00001.jpg ... flow_x_{N-1}.jpg           flow i = frame i -> frame i+1, x component
    flow_y_00001.jpg ... flow_y_{N-1}.jpg           ... and y component (grayscale, see utils.flow)

A video's folder appears only when it is complete: it is written to a hidden sibling
``.tmp-<video_stem>-<pid>`` and renamed at the end. So an interrupted run can simply be
started again: finished videos are skipped, half-written ones are cleaned up and redone.
Videos that cannot be read are listed in ``<out_dir>/extraction_failures.csv`` (rewritten
each run) and the run goes on. Videos that were extracted but look damaged (fewer decoded
frames than the container announces, beyond the one frame HMDB51's AVIs over-count, or FFmpeg
decoder errors such as "ac-tex damaged", which FFmpeg prints without naming the file) are listed
in ``<out_dir>/extraction_warnings.csv`` (video, warning), kept across runs for as long as their
folder is there.

Command line (a thin wrapper over :func:`extract_dataset`)::

    python -m utils.extract --dataset demo                    # data/demo/videos -> data/demo/rawframes
    python -m utils.extract --videos DIR --out DIR --method dis --workers 2 --short-side 256
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import ctypes
import errno
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm   # a widget in Jupyter (one output, not one per update), text in a terminal

from utils.flow import FLOW_BOUND, check_flow_method, get_flow_method, make_video_flow, quantize_flow

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
FAILURES_FILE = "extraction_failures.csv"
WARNINGS_FILE = "extraction_warnings.csv"
SETTINGS_FILE = "extraction_settings.json"
TMP_PREFIX = ".tmp-"
MISSING_FRAMES_TOLERANCE = 2   # HMDB51's AVI headers count one frame more than decodes
_FFMPEG_LINE = re.compile(r"^\[[^\]@]+ @ (0x)?[0-9a-fA-F]+\] ")   # FFmpeg's "[mpeg4 @ 0x55d0...] message"


class VideoReadError(Exception):
    """A video that cannot be used; the message is the reason written to the failures file."""


class OutputFolderError(OSError):
    """The output folder cannot be created or written (read-only, full disk, ...)."""


# --- settings that must not change between a run and its resumption ----------------------------
@dataclass(frozen=True)
class ExtractionSettings:
    """Everything that changes the bytes written; stored in ``<out_dir>/extraction_settings.json``."""

    method: str = "tvl1"
    size: tuple[int, int] | None = None        # (width, height) of the stored frames, or None
    short_side: int | None = None              # resize so the shorter side has this length
    max_frames: int | None = None              # only the first N decodable frames (quick runs)
    jpeg_quality: int = 95
    flow_bound: float = FLOW_BOUND
    method_options: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["size"] = list(self.size) if self.size else None
        return data


def _check_settings(out_dir: Path, settings: ExtractionSettings) -> None:
    """Refuse to mix outputs of different settings in one folder; record the settings otherwise."""
    path = out_dir / SETTINGS_FILE
    wanted = settings.to_json()
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError:
            raise ValueError(f"{path} is not readable JSON (a damaged file?), so the settings of the frames in "
                             f"{out_dir} are unknown; delete {out_dir} or extract into another folder") from None
        if found != wanted:
            changed = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
            raise ValueError(
                f"{out_dir} already holds frames extracted with other settings "
                f"({', '.join(f'{k}: {old!r} there, {new!r} now' for k, (old, new) in changed.items())}). "
                f"Finished videos would be skipped and the folder would mix both. Delete {out_dir} "
                f"or extract into another folder."
            )
        return
    _write_atomically(path, json.dumps(wanted, indent=2) + "\n")


def read_extraction_settings(out_dir: str | Path) -> dict | None:
    """The settings a rawframes folder was extracted with (its ``extraction_settings.json``), or None."""
    try:
        settings = json.loads((Path(out_dir) / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)     # after a failed write (full disk): no 0-byte file left behind


# --- finding and reading videos ----------------------------------------------------------------
def list_videos(videos_dir: str | Path) -> list[Path]:
    """All ``<class>/<video>`` files with a video extension, sorted (no glob: names hold ``[ ] ( ) !``)."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} does not exist")
    videos = []
    for class_entry in os.scandir(videos_dir):
        if not class_entry.is_dir() or class_entry.name.startswith("."):
            continue
        for entry in os.scandir(class_entry.path):
            if entry.is_file() and not entry.name.startswith(".") and entry.name.lower().endswith(VIDEO_EXTENSIONS):
                videos.append(Path(entry.path))
    return sorted(videos)


def iter_frames(video_path: str | Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decode a video frame by frame (BGR uint8) until OpenCV stops, or ``max_frames``.

    The frame count in the header is not trusted (HMDB51 AVIs report one frame more than
    decodes); what counts is what ``read()`` returns. Raises :class:`VideoReadError` with the
    reason when the file is missing, empty or cannot be opened.
    """
    video_path = Path(video_path)
    if not video_path.is_file():
        raise VideoReadError("file not found")
    if video_path.stat().st_size == 0:
        raise VideoReadError("empty file (0 bytes)")
    _check_name(video_path)
    capture = cv2.VideoCapture(str(video_path))
    try:
        if not capture.isOpened():
            raise VideoReadError("OpenCV cannot open it (corrupt file or unsupported format)")
        count = 0
        while max_frames is None or count < max_frames:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            count += 1
            yield frame
    finally:
        capture.release()


def _check_name(video_path: Path) -> None:
    """Raise VideoReadError for a path that is not valid UTF-8 (OpenCV's VideoCapture crashes on it)."""
    try:
        str(video_path).encode("utf-8")
    except UnicodeEncodeError:
        raise VideoReadError(f"the file name is not valid UTF-8 (its bytes: {os.fsencode(video_path)!r}), "
                             "which OpenCV cannot open; rename the file (e.g. with `convmv -f latin1 -t utf8`) "
                             "and run again") from None


def header_frame_count(video_path: str | Path) -> int:
    """Frame count announced by the container (OpenCV's CAP_PROP_FRAME_COUNT; 0 when unknown)."""
    _check_name(Path(video_path))
    capture = cv2.VideoCapture(str(video_path))
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) if capture.isOpened() else 0
    finally:
        capture.release()


def missing_frames_warning(decoded: int, announced: int, max_frames: int | None = None) -> str | None:
    """A warning when ``decoded`` frames fall short of the container's ``announced`` count (else None).

    Up to :data:`MISSING_FRAMES_TOLERANCE` frames short is normal (HMDB51's AVIs announce one
    frame more than decodes); with ``max_frames`` only that many are expected.
    """
    expected = min(announced, max_frames) if max_frames else announced
    if announced <= 0 or expected - decoded <= MISSING_FRAMES_TOLERANCE:
        return None
    return (f"only {decoded} of the {announced} frames its header announces could be decoded: the file is "
            f"probably truncated or damaged, and was extracted as a {decoded}-frame clip (download it again "
            "to get the whole clip)")


_capture_lock = threading.Lock()


@contextlib.contextmanager
def _decoder_messages(messages: list[str]):
    """Collect FFmpeg's messages while one video is extracted: FFmpeg writes them to file descriptor 2
    without naming the file. Lines in FFmpeg's ``[decoder @ 0x...] text`` form go to ``messages``;
    anything else written meanwhile is passed on to stderr afterwards. One capture per process at a
    time (a second thread's video is not captured; its messages reach stderr as before)."""
    if not _capture_lock.acquire(blocking=False):
        yield
        return
    try:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):    # no usable file descriptor 2: nothing to capture
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:   # also when the video failed: its messages explain why
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                for line in capture.read().decode("utf-8", "replace").splitlines():
                    if _FFMPEG_LINE.match(line):
                        messages.append(line)
                    elif line.strip():
                        print(line, file=sys.stderr)
    finally:
        _capture_lock.release()


def count_decodable_frames(video_path: str | Path) -> int:
    """Number of frames OpenCV actually decodes (0 for unreadable files)."""
    try:
        return sum(1 for _ in iter_frames(video_path))
    except VideoReadError:
        return 0


def output_size(width: int, height: int, size: tuple[int, int] | None = None,
                short_side: int | None = None) -> tuple[int, int]:
    """Stored (width, height) for a video of ``width`` x ``height``: native, ``size``, or ``short_side``."""
    if size is not None and short_side is not None:
        raise ValueError("give either size or short_side, not both")
    if size is not None:
        return int(size[0]), int(size[1])
    if short_side is not None:
        scale = short_side / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


# --- one video ---------------------------------------------------------------------------------
def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buffer.tobytes()


def extract_video(video_path: str | Path, video_out_dir: str | Path, flow_fn=None, *,
                  settings: ExtractionSettings = ExtractionSettings(), chunk_frames: int | None = None) -> int:
    """Write one video's frames and flows to ``video_out_dir``; returns the number of frame pairs.

    Writes into a hidden temporary sibling folder and renames it at the end, so
    ``video_out_dir`` either does not exist or is complete. ``flow_fn`` is a per-video flow
    callable (``utils.flow.make_video_flow``); by default it is made from ``settings.method``.
    Frames are decoded and handed to ``flow_fn`` ``chunk_frames`` at a time (default: the
    method's ``chunk_frames``), so memory stays bounded for long videos. Raises
    :class:`VideoReadError` for videos with fewer than 2 decodable frames.
    """
    video_out_dir = Path(video_out_dir)
    if flow_fn is None:
        flow_fn = make_video_flow(settings.method, **settings.method_options)
    chunk_frames = chunk_frames or get_flow_method(settings.method).chunk_frames
    tmp_dir = video_out_dir.with_name(f"{TMP_PREFIX}{video_out_dir.name}-{os.getpid()}")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    try:
        n_frames = 0
        gray_chunk: list[np.ndarray] = []    # frames whose flow to the next frame is not written yet
        target = None

        def write_flows(frames: list[np.ndarray], first_index: int) -> None:
            flows = flow_fn(np.stack(frames))
            for offset, flow in enumerate(quantize_flow(flows, settings.flow_bound)):
                index = first_index + offset
                (tmp_dir / f"flow_x_{index:05d}.jpg").write_bytes(_encode_jpeg(flow[..., 0], settings.jpeg_quality))
                (tmp_dir / f"flow_y_{index:05d}.jpg").write_bytes(_encode_jpeg(flow[..., 1], settings.jpeg_quality))

        for frame in iter_frames(video_path, settings.max_frames):
            if target is None:
                target = output_size(frame.shape[1], frame.shape[0], settings.size, settings.short_side)
            if (frame.shape[1], frame.shape[0]) != target:
                shrink = target[0] * target[1] < frame.shape[0] * frame.shape[1]
                frame = cv2.resize(frame, target, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            n_frames += 1
            (tmp_dir / f"img_{n_frames:05d}.jpg").write_bytes(_encode_jpeg(frame, settings.jpeg_quality))
            gray_chunk.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
            if len(gray_chunk) == chunk_frames + 1:
                write_flows(gray_chunk, n_frames - chunk_frames)
                gray_chunk = gray_chunk[-1:]       # the last frame starts the next chunk
        if n_frames == 0:
            raise VideoReadError("no decodable frames")
        if n_frames == 1:
            raise VideoReadError("only 1 decodable frame; optical flow needs at least 2")
        if len(gray_chunk) > 1:
            write_flows(gray_chunk, n_frames - len(gray_chunk) + 1)
        try:
            os.rename(tmp_dir, video_out_dir)
        except OSError:
            if not video_out_dir.is_dir():     # a finished folder already there is fine (a parallel run)
                raise
            shutil.rmtree(tmp_dir)
        return n_frames - 1
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


# --- worker processes --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    video_path: str
    video_out_dir: str
    settings: ExtractionSettings


@dataclass
class _Result:
    video_path: str
    frame_pairs: int = 0
    error: str | None = None        # reason the video failed, None when done
    details: str | None = None      # traceback of unexpected errors
    warnings: list[str] = field(default_factory=list)   # extracted, but looks damaged


_worker_flow_fns: dict = {}


def _init_worker(opencv_threads: int, parent_pid: int) -> None:
    """Run in each worker process: one OpenCV thread each; die with the parent (Linux)."""
    cv2.setNumThreads(opencv_threads)
    if sys.platform.startswith("linux"):
        try:   # PR_SET_PDEATHSIG: a killed parent takes its workers with it instead of orphaning them
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            pass
    if os.getppid() != parent_pid:   # the parent died before prctl took effect: nobody would kill us
        os._exit(1)


def _method_key(settings: ExtractionSettings) -> tuple[str, str]:
    return settings.method, json.dumps(settings.method_options, sort_keys=True)


def _run_job(job: _Job) -> _Result:
    """Extract one video; never raises (the failure reason is returned instead)."""
    key = _method_key(job.settings)
    messages: list[str] = []            # FFmpeg's, about this video
    try:
        if key not in _worker_flow_fns:     # build each flow method once per process
            _worker_flow_fns[key] = make_video_flow(job.settings.method, **job.settings.method_options)
        with _decoder_messages(messages):
            pairs = extract_video(job.video_path, job.video_out_dir, _worker_flow_fns[key], settings=job.settings)
            announced = header_frame_count(job.video_path)
        notes = [note for note in [missing_frames_warning(pairs + 1, announced, job.settings.max_frames)] if note]
        if messages:
            notes.append(f"FFmpeg reported {len(messages)} decoding error(s), e.g. {messages[0]!r}: the file is "
                         "damaged in places (those frames may show blocks or smears)")
        return _Result(job.video_path, frame_pairs=pairs, warnings=notes)
    except VideoReadError as error:
        return _Result(job.video_path, error=str(error) + (f" (FFmpeg: {messages[0]!r})" if messages else ""))
    except Exception as error:  # noqa: BLE001 - one bad video must not stop a dataset run
        return _Result(job.video_path, error=f"{type(error).__name__}: {str(error).strip()}",
                       details=traceback.format_exc())


def _clean_stale_tmp(out_dir: Path) -> int:
    """Remove ``.tmp-*`` folders left by runs that were killed (their process no longer exists)."""
    removed = 0
    if not out_dir.is_dir():
        return removed
    for class_entry in os.scandir(out_dir):
        if not class_entry.is_dir() or class_entry.name.startswith("."):
            continue
        for entry in os.scandir(class_entry.path):
            if entry.name.startswith(TMP_PREFIX) and not _pid_alive(entry.name.rsplit("-", 1)[-1]):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _pid_alive(pid_text: str) -> bool:
    """Whether process ``pid_text`` (another one than this) runs; a zombie (dead, not reaped yet) does not."""
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # Linux: state is the field after "pid (comm)"; Z/X = exited (kill(pid, 0) still succeeds)
        state = Path(f"/proc/{pid_text}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


# --- a whole dataset ---------------------------------------------------------------------------
@dataclass
class ExtractionSummary:
    """What one :func:`extract_dataset` call did."""

    out_dir: Path
    method: str
    workers: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    frame_pairs: int = 0            # flow pairs computed in this run (done videos only)
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

    def __str__(self) -> str:
        text = (f"{self.done} done, {self.skipped} skipped (already there), {self.failed} failed; "
                f"{self.frame_pairs} frame pairs in {self.seconds:.1f} s "
                f"({self.pairs_per_second:.1f} pairs/s, method {self.method}, {self.workers} worker(s))")
        if self.failures:
            text += f"; failures listed in {self.out_dir / FAILURES_FILE}"
        if self.warnings:
            text += (f"; {len({video for video, _ in self.warnings})} video(s) with warnings (damaged?) listed in "
                     f"{self.out_dir / WARNINGS_FILE}")
        if self.unlisted_classes:
            text += (f"; no split files list the class folder(s) {', '.join(self.unlisted_classes)}: "
                     "extracted, but never used for training or testing")
        return text


def default_workers(method: str) -> int:
    """One worker process per available core (batched methods: processes that decode and write)."""
    check_flow_method(method)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _resolve_videos(videos_dir: Path, videos: Iterable[str | Path] | None) -> list[Path]:
    if videos is None:
        return list_videos(videos_dir)
    return [p if Path(p).is_absolute() else videos_dir / p for p in map(Path, videos)]


def extract_dataset(videos_dir: str | Path, out_dir: str | Path, method: str = "tvl1",
                    workers: int | None = None, *, videos: Iterable[str | Path] | None = None,
                    size: tuple[int, int] | None = None, short_side: int | None = None,
                    max_frames: int | None = None, jpeg_quality: int = 95,
                    method_options: dict | None = None, opencv_threads: int = 1,
                    progress: bool = True, splits_dir: str | Path | None = None,
                    shard: tuple[int, int] | None = None, ray_address: str | None = None) -> ExtractionSummary:
    """Extract frames and flow for every ``<class>/<video>`` under ``videos_dir`` into ``out_dir``.

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
                   jpeg_quality=jpeg_quality)
    flow_method = check_flow_method(method)             # e.g. missing opencv-contrib: fail here, early
    workers = default_workers(method) if workers is None else int(workers)
    settings = ExtractionSettings(method=method, size=tuple(size) if size else None, short_side=short_side,
                                  max_frames=max_frames, jpeg_quality=jpeg_quality,
                                  method_options=dict(method_options or {}))
    output_size(1, 1, settings.size, settings.short_side)   # validates size vs short_side
    video_paths = _resolve_videos(videos_dir, videos)
    if shard is not None or ray_address is not None:
        from utils import extract_cluster as cluster
        if ray_address is not None and flow_method.batched:
            raise ValueError(f"--ray sends one task per video to CPU workers; {method!r} is batched (a GPU "
                             f"in one process): split the videos with --shard K/N instead")
        if shard is not None:
            video_paths = cluster.shard_videos(video_paths, shard, videos_dir)

    _prepare_output_folder(out_dir, settings)
    if shard is not None or ray_address is not None:    # this run owns its videos, on whichever node
        stale = cluster.remove_own_tmp(out_dir / p.parent.name / p.stem for p in video_paths)
    else:
        stale = _clean_stale_tmp(out_dir)
    if stale:
        log.info("removed %d unfinished video folder(s) left by an interrupted run", stale)

    summary = ExtractionSummary(out_dir=out_dir, method=method, workers=workers)
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
            jobs.append(_Job(str(path), str(video_out_dir), settings))
        seen.add(video_out_dir)

    if flow_method.batched and jobs:   # build it here, once, so its device can be logged
        key = _method_key(settings)
        if key not in _worker_flow_fns:
            _worker_flow_fns[key] = make_video_flow(method, **settings.method_options)
        device = f"{getattr(_worker_flow_fns[key], 'device', 'in this process')}; {workers} process(es) decode and write"
    else:
        device = f"CPU, {workers} process(es) x {opencv_threads} OpenCV thread(s)"
    log.info("extracting %d video(s) (%d already done) from %s to %s; flow method %r (%s, %s)",
             len(jobs), summary.skipped, videos_dir, out_dir, method, flow_method.execution, device)

    new_warnings: list[tuple[str, str]] = []
    with tqdm(total=len(jobs), unit="video", desc=f"frames+flow ({method})", disable=not progress or not jobs,
              dynamic_ncols=True) as bar:
        if flow_method.batched and jobs:    # flow here, batched over videos; decoding and writing in workers
            from utils.extract_batched import run_batched
            results = run_batched(jobs, _worker_flow_fns[_method_key(settings)], workers, opencv_threads)
        elif ray_address is not None and jobs:
            summary.workers = cluster.ray_cpus(ray_address) // opencv_threads
            results = cluster.run_ray(jobs, ray_address, opencv_threads)
        else:
            results = _run_jobs(jobs, workers, opencv_threads)
        for result in results:
            if result.error is None:
                summary.done += 1
                summary.frame_pairs += result.frame_pairs
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


def _run_jobs(jobs: Sequence[_Job], workers: int, opencv_threads: int) -> Iterator[_Result]:
    """Results as they complete: in this process for workers=1, else in spawned processes."""
    if workers == 1 or len(jobs) <= 1:
        previous_threads = cv2.getNumThreads()
        cv2.setNumThreads(opencv_threads)
        try:
            for job in jobs:
                yield _run_job(job)
        finally:
            cv2.setNumThreads(previous_threads)
        return
    context = multiprocessing.get_context("spawn")    # safe with threads, CUDA and notebooks
    pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                                  initializer=_init_worker,
                                                  initargs=(opencv_threads, os.getpid()))
    try:
        futures = [pool.submit(_run_job, job) for job in jobs]
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
    finally:
        tmp.unlink(missing_ok=True)


def _update_warnings(out_dir: Path, new: list[tuple[str, str]], redone: set[str]) -> list[tuple[str, str]]:
    """Rewrite ``extraction_warnings.csv``: this run's warnings, plus the earlier ones of videos whose
    folder is still there and was not redone now. Returns all of them."""
    path = out_dir / WARNINGS_FILE
    kept = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8", errors="replace") as file:
            for row in csv.DictReader(file):
                video = Path(row["video"])
                if row["video"] not in redone and (out_dir / video.parent.name / video.stem).is_dir():
                    kept.append((row["video"], row["warning"]))
    rows = kept + new
    if rows or path.is_file():
        _write_failures(path, rows, header=("video", "warning"))
    return rows


def _check_options(*, workers, size, short_side, max_frames, jpeg_quality) -> None:
    """ValueError for option values that would fail on every video or be silently changed."""
    problems = []
    if workers is not None and int(workers) < 1:
        problems.append(f"workers must be >= 1, got {workers}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        problems.append(f"size must be two positive numbers (width, height), got {size!r}")
    if short_side is not None and short_side < 1:
        problems.append(f"short_side must be >= 1 pixel, got {short_side}")
    if max_frames is not None and max_frames < 2:
        problems.append(f"max_frames must be >= 2 (a flow needs two frames), got {max_frames}")
    if not 0 <= jpeg_quality <= 100:
        problems.append(f"jpeg_quality must be in 0 ... 100 (OpenCV's range), got {jpeg_quality}")
    if problems:
        raise ValueError("; ".join(problems))


def _prepare_output_folder(out_dir: Path, settings: ExtractionSettings) -> None:
    """Create ``out_dir`` and record the settings there, or raise an error that says why it cannot be used."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"the output folder {out_dir} is a file; give a folder (--out)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_settings(out_dir, settings)
    except OSError as error:
        advice = {errno.ENOSPC: "free some space or give a folder on another disk",
                  errno.EDQUOT: "free some space or give a folder on another disk",
                  errno.EACCES: "it is not writable for you: fix its permissions or give another folder",
                  errno.EPERM: "it is not writable for you: fix its permissions or give another folder",
                  errno.EROFS: "it is on a read-only file system: give another folder"}
        raise OutputFolderError(f"cannot write into the output folder {out_dir}: {error.strerror or error}; "
                                f"{advice.get(error.errno, 'give another folder')}") from error


def _unlisted_classes(videos_dir: Path, splits_dir: Path) -> list[str]:
    """Class folders of ``videos_dir`` that no split file in ``splits_dir`` lists ([] if they cannot be read)."""
    from utils import dataset
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
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    from utils.flow import FLOW_METHODS
    parser = argparse.ArgumentParser(
        prog="python -m utils.extract", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", help="demo | hmdb51 | PATH: take --videos/--out from utils.config.Config")
    parser.add_argument("--videos", type=Path, help="folder of <class>/<video> files")
    parser.add_argument("--out", type=Path, help="output folder (<class>/<video>/img_*.jpg, flow_[xy]_*.jpg)")
    parser.add_argument("--method", default="tvl1", choices=sorted(FLOW_METHODS), help="optical flow method")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per core)")
    parser.add_argument("--opencv-threads", type=int, default=1, help="OpenCV threads per process")
    resize = parser.add_mutually_exclusive_group()
    resize.add_argument("--short-side", type=int, help="resize so the shorter side has this length")
    resize.add_argument("--size", type=_parse_size, help="resize to WxH, e.g. 340x256 (default: native size)")
    parser.add_argument("--max-frames", type=int, help="only the first N frames of each video (quick runs)")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--list", type=Path, dest="video_list",
                        help="text file of videos to extract, one <class>/<file> per line (default: all)")
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
    splits_dir = None
    if args.dataset:
        from utils.config import Config
        cfg = Config(dataset=args.dataset)
        args.videos = args.videos or cfg.videos_dir
        args.out = args.out or cfg.frames_dir
        splits_dir = cfg.splits_dir
    if args.videos is None or args.out is None:
        parser.error("give --dataset, or both --videos and --out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    shard = None
    if args.shard:
        from utils.extract_cluster import parse_shard
        try:
            shard = parse_shard(args.shard)
        except ValueError as error:
            parser.error(str(error))
    try:
        videos = _read_video_list(args.video_list) if args.video_list else None
        summary = extract_dataset(args.videos, args.out, args.method, args.workers, videos=videos,
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
