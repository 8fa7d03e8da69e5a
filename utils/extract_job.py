"""One video's extraction: its settings, decoding, writing, and the job a worker runs.

Input: a video file (any size, anything OpenCV can decode). Output, in ``video_out_dir``
(``<frames_dir>/<class>/<video_stem>/``, the layout of :mod:`utils.rawframes`)::

    img_00001.jpg ... img_NNNNN.jpg                 every decodable frame (colour JPEG)
    flow_x_00001.jpg ... flow_x_{N-1}.jpg           flow i = frame i -> frame i+1, x component
    flow_y_00001.jpg ... flow_y_{N-1}.jpg           ... and y component (grayscale, see utils.flow)

A video's folder appears only when it is complete: it is written to a hidden sibling
``.tmp-<video_stem>-<pid>`` and renamed at the end. Videos that cannot be read raise
:class:`VideoReadError` with the reason; videos that were extracted but look damaged (fewer
decoded frames than the container announces, beyond the one frame HMDB51's AVIs over-count, or
FFmpeg decoder errors such as "ac-tex damaged", which FFmpeg prints without naming the file) get
warnings.

Two settings change which frames are stored: ``fps`` resamples the video to that frame rate
(frame ``k`` is the decoded frame nearest to time ``k / fps``; :func:`resample_indices`), so that
flow ``i`` goes from the frame at ``(i - 1) / fps`` to the one at ``i / fps``; ``method=None``
stores the frames only (no flow files), all a motion stream without flow needs (:mod:`utils.sg3i`).

Every executor calls the same pieces: :func:`run_job` (a :class:`Job` in, a :class:`Result` out,
never raising) in the local process pool and on Ray (:mod:`utils.extract`,
:mod:`utils.extract_cluster`); :func:`decode_video` and :func:`write_flows` in the batched GPU
path (:mod:`utils.extract_batched`), which computes the flow itself between the two.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from utils.flow import FLOW_BOUND, get_flow_method, make_video_flow, quantize_flow
from utils.rawframes import (FLOW_NAMINGS, MADE_ELSEWHERE, SETTINGS_FILE, TMP_PREFIX, flow_files, frame_file,
                             has_video_folders, made_elsewhere_settings, write_atomically)
from utils.writers import pid_alive

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
MISSING_FRAMES_TOLERANCE = 2   # HMDB51's AVI headers count one frame more than decodes
_FFMPEG_LINE = re.compile(r"^\[[^\]@]+ @ (0x)?[0-9a-fA-F]+\] ")   # FFmpeg's "[mpeg4 @ 0x55d0...] message"


class VideoReadError(Exception):
    """A video that cannot be used; the message is the reason written to the failures file."""


# --- settings that must not change between a run and its resumption ----------------------------
@dataclass(frozen=True)
class ExtractionSettings:
    """Everything that changes the bytes written; stored in ``<out_dir>/extraction_settings.json``.

    A settings file written before a field existed reads as that field's default (see
    :func:`check_settings`), so frames extracted then are not refused.
    """

    method: str | None = "tvl1"                # flow method; None: the frames only (no flow)
    size: tuple[int, int] | None = None        # (width, height) of the stored frames, or None
    short_side: int | None = None              # resize so the shorter side has this length
    max_frames: int | None = None              # only the first N stored frames (quick runs)
    jpeg_quality: int = 95
    flow_bound: float = FLOW_BOUND
    method_options: dict = field(default_factory=dict)
    fps: int | None = None                     # frames resampled to this rate (None: every frame)

    def to_json(self) -> dict:
        data = asdict(self)
        data["size"] = list(self.size) if self.size else None
        return data

    @property
    def flow(self) -> bool:
        """Whether optical flow is computed and stored (False: frames only)."""
        return self.method is not None


def with_defaults(found: dict) -> dict:
    """A stored settings dict with the fields it lacks (written by an earlier version) at their defaults."""
    return {**ExtractionSettings().to_json(), **found}


def check_settings(out_dir: Path, settings: ExtractionSettings) -> None:
    """Refuse to mix outputs of different settings in one folder; record the settings otherwise.

    A folder that already holds video folders but no settings file was made elsewhere: it is
    recorded as such (``origin`` :data:`utils.rawframes.MADE_ELSEWHERE`, method unknown), with the
    settings of the videos added here under ``added_here``, never as if these settings made it all.
    The record is created with a hard link (which fails if the file exists), so of two runs that
    start at the same moment with other settings, one records its settings and the other is refused.
    """
    path = out_dir / SETTINGS_FILE
    wanted = settings.to_json()
    if not path.is_file():
        record = {**made_elsewhere_settings(), "added_here": wanted} if has_video_folders(out_dir) else wanted
        text = json.dumps(record, indent=2) + "\n"
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
        try:
            tmp.write_text(text)
            try:
                os.link(tmp, path)
                return
            except FileExistsError:     # another run recorded its settings meanwhile: compare with them
                pass
            except OSError:             # a file system without hard links
                if not path.exists():
                    write_atomically(path, text)
                    return
        finally:
            tmp.unlink(missing_ok=True)
    found = _read_settings_file(path, out_dir)
    if found.get("origin") == MADE_ELSEWHERE:
        if found.get("added_here") is None:
            write_atomically(path, json.dumps({**found, "added_here": wanted}, indent=2) + "\n")
            return
        found = found["added_here"]          # the videos added here share one setting
    found = with_defaults(found)             # a file of an earlier version: its missing fields at their defaults
    if found != wanted:
        changed = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        raise ValueError(
            f"{out_dir} already holds frames extracted with other settings "
            f"({', '.join(f'{k}: {old!r} there, {new!r} now' for k, (old, new) in changed.items())}). "
            f"Finished videos would be skipped and the folder would mix both. Delete {out_dir} "
            f"or extract into another folder."
        )


def _read_settings_file(path: Path, out_dir: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        found = None
    if not isinstance(found, dict):
        raise ValueError(f"{path}: not the settings of an extraction (not a JSON object of settings: a damaged "
                         f"file?), so the settings of the frames in {out_dir} are unknown; delete {out_dir} or "
                         f"extract into another folder")
    return found


# --- finding and reading videos ----------------------------------------------------------------
class VideoScan(NamedTuple):
    """What :func:`scan_videos` finds: the video files, and the entries that look like videos but are not."""

    videos: list[Path]
    skipped: list[tuple[str, str]]      # (path, why it is not read): links to nothing, loops, FIFOs, ...


def list_videos(videos_dir: str | Path) -> list[Path]:
    """All ``<class>/<video>`` files with a video extension, sorted (no glob: names hold ``[ ] ( ) !``)."""
    return scan_videos(videos_dir).videos


def scan_videos(videos_dir: str | Path) -> VideoScan:
    """The ``<class>/<video>`` files of ``videos_dir``, and the entries skipped with the reason for each.

    Only regular files are videos (a link to one counts: datasets are often linked in). An entry
    with a video extension that is not a regular file (a link to nothing, a link loop, a FIFO, a
    device such as a link to ``/dev/zero``, a folder named ``x.avi``) is skipped and named, and so
    is a class entry that is a broken link; class folders are not searched deeper, so a link loop
    cannot make the scan run forever or stop it.
    """
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} does not exist")
    videos, skipped = [], []
    for class_entry in os.scandir(videos_dir):
        if class_entry.name.startswith("."):
            continue
        kind = entry_kind(class_entry.path)
        if kind != "folder":
            if class_entry.is_symlink():   # meant as a class folder, surely
                skipped.append((class_entry.path, f"{_in_words(kind)}, not a class folder: skipped"))
            continue
        for entry in os.scandir(class_entry.path):
            if entry.name.startswith(".") or not entry.name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            kind = entry_kind(entry.path)
            if kind == "file":
                videos.append(Path(entry.path))
            else:
                skipped.append((entry.path, f"{_in_words(kind)}, not a video file: skipped"))
    return VideoScan(sorted(videos), sorted(skipped))


def _in_words(kind: str) -> str:
    return {"file": "a file", "folder": "a folder"}.get(kind, kind)


def entry_kind(path: str | os.PathLike) -> str:
    """``"file"``, ``"folder"``, ``"missing"``, or what else ``path`` is, in words (a link loop, a FIFO, ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return f"a symbolic link to nothing (-> {os.readlink(path)})"
        if error.errno == errno.ENOENT:
            return "missing"
        return f"not readable ({error.strerror})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    what = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return what + (f" (-> {os.readlink(path)})" if os.path.islink(path) else "")


def iter_frames(video_path: str | Path, max_frames: int | None = None, fps: int | None = None) -> Iterator[np.ndarray]:
    """Decode a video frame by frame (BGR uint8) until OpenCV stops, or ``max_frames``.

    The frame count in the header is not trusted (HMDB51 AVIs report one frame more than
    decodes); what counts is what ``read()`` returns. With ``fps``, only the frames nearest to
    the times ``0, 1/fps, 2/fps, ...`` (:func:`resample_indices`; the video's own rate from its
    header); ``max_frames`` then counts those. Raises :class:`VideoReadError` with the
    reason when the file is missing, empty or cannot be opened, or its frame rate is unknown.
    """
    video_path = Path(video_path)
    check_name(video_path)
    kind = entry_kind(video_path)
    if kind != "file":
        raise VideoReadError("file not found" if kind == "missing" else f"{_in_words(kind)}, not a video file")
    if video_path.stat().st_size == 0:
        raise VideoReadError("empty file (0 bytes)")
    capture = cv2.VideoCapture(str(video_path))
    try:
        if not capture.isOpened():
            raise VideoReadError("OpenCV cannot open it (corrupt file or unsupported format)")
        keep = resampled_frame_numbers(capture, fps)
        count = decoded = 0
        wanted = next(keep)
        while max_frames is None or count < max_frames:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            decoded += 1
            if decoded - 1 == wanted:
                count += 1
                wanted = next(keep)
                yield frame
    finally:
        capture.release()


def resampled_frame(k: int, native_fps: float, fps: float) -> int:
    """0-based number of the video frame stored as frame ``k`` when a video at ``native_fps`` is
    resampled to ``fps``: the frame nearest to the time ``k / fps`` (``round(k * native_fps / fps)``,
    halves rounded up). At or above the video's own rate every frame is kept once (never repeated)."""
    if native_fps <= 0 or fps <= 0:
        raise ValueError(f"frame rates must be positive, got native {native_fps}, target {fps}")
    return int(k) if fps >= native_fps else int(np.floor(k * native_fps / fps + 0.5))


def resample_indices(n_frames: int, native_fps: float, fps: float) -> np.ndarray:
    """The 0-based numbers of the frames of a video of ``n_frames`` kept by :func:`resampled_frame`."""
    kept = itertools.takewhile(lambda j: j < n_frames,
                               (resampled_frame(k, native_fps, fps) for k in itertools.count()))
    return np.fromiter(kept, dtype=np.int64)


def resampled_frame_numbers(capture, fps: int | None) -> Iterator[int]:
    """The 0-based numbers of the frames to keep from an open ``capture``, one by one: all of them
    without ``fps``; with it, those of :func:`resampled_frame` at the rate its header gives."""
    if fps is None:
        yield from itertools.count()
        return
    native = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if not native > 0 or not np.isfinite(native):
        raise VideoReadError(f"its header gives no frame rate, so it cannot be resampled to {fps} fps")
    for k in itertools.count():
        yield resampled_frame(k, native, fps)


def check_name(video_path: Path) -> None:
    """Raise VideoReadError for a path that is not valid UTF-8 (OpenCV's VideoCapture crashes on it)."""
    try:
        str(video_path).encode("utf-8")
    except UnicodeEncodeError:
        raise VideoReadError(f"the file name is not valid UTF-8 (its bytes: {os.fsencode(video_path)!r}), "
                             "which OpenCV cannot open; rename the file (e.g. with `convmv -f latin1 -t utf8`) "
                             "and run again") from None


def header_frame_count(video_path: str | Path, fps: int | None = None) -> int:
    """Frame count announced by the container (OpenCV's CAP_PROP_FRAME_COUNT; 0 when unknown);
    with ``fps``, how many of them resampling to ``fps`` keeps (:func:`resample_indices`)."""
    check_name(Path(video_path))
    capture = cv2.VideoCapture(str(video_path))
    try:
        if not capture.isOpened():
            return 0
        announced = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        native = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if fps is None or not native > 0:
            return announced
        return len(resample_indices(announced, native, fps))
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
def decoder_messages(messages: list[str]):
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
def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """``image`` as JPEG bytes at ``quality`` (OpenCV's encoder)."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buffer.tobytes()


def stored_frames(video_path: str | Path, folder: Path, settings: ExtractionSettings) -> Iterator[np.ndarray]:
    """Decode a video, resize each frame to its stored size, write it as ``img_*.jpg`` into ``folder``
    and yield it as grayscale (the input of the flow). Raises :class:`VideoReadError` for videos with
    fewer than 2 decodable frames (1 is enough when no flow is computed)."""
    target, count = None, 0
    for frame in iter_frames(video_path, settings.max_frames, settings.fps):
        if target is None:
            target = output_size(frame.shape[1], frame.shape[0], settings.size, settings.short_side)
        if (frame.shape[1], frame.shape[0]) != target:
            shrink = target[0] * target[1] < frame.shape[0] * frame.shape[1]
            frame = cv2.resize(frame, target, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        count += 1
        frame_file(folder, count).write_bytes(encode_jpeg(frame, settings.jpeg_quality))
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if count == 0:
        raise VideoReadError("no decodable frames")
    if count == 1 and settings.flow:
        raise VideoReadError("only 1 decodable frame; optical flow needs at least 2")


def write_flows(folder: str | Path, first_index: int, flows: np.ndarray, settings: ExtractionSettings) -> int:
    """Quantise flows ``first_index, first_index + 1, ...`` (1-based) and write them as JPEGs; their number.
    ``uint8`` flows are taken as already quantised (``quantize_flow``'s bytes, by a flow method on its device)."""
    quantized = flows if flows.dtype == np.uint8 else quantize_flow(flows, settings.flow_bound)
    for offset, flow in enumerate(quantized):
        path_x, path_y = flow_files(folder, first_index + offset, FLOW_NAMINGS[0])   # always flow_x_/flow_y_
        path_x.write_bytes(encode_jpeg(flow[..., 0], settings.jpeg_quality))
        path_y.write_bytes(encode_jpeg(flow[..., 1], settings.jpeg_quality))
    return len(flows)


def tmp_folder(video_out_dir: str | Path) -> Path:
    """The hidden sibling a video is written to before it is renamed into place (this process's)."""
    video_out_dir = Path(video_out_dir)
    return video_out_dir.with_name(f"{TMP_PREFIX}{video_out_dir.name}-{os.getpid()}")


def move_into_place(tmp_dir: Path, video_out_dir: Path) -> None:
    """Rename a complete video folder to its final name; a finished folder already there (written
    by a parallel run) is kept and the temporary one removed."""
    try:
        os.rename(tmp_dir, video_out_dir)
    except OSError:
        if not Path(video_out_dir).is_dir():
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)


def extract_video(video_path: str | Path, video_out_dir: str | Path, flow_fn=None, *,
                  settings: ExtractionSettings = ExtractionSettings(), chunk_frames: int | None = None) -> int:
    """Write one video's frames and flows to ``video_out_dir``; returns the number of frame pairs
    (stored frames - 1; their flows are not computed when ``settings.method`` is None).

    Writes into a hidden temporary sibling folder and renames it at the end, so
    ``video_out_dir`` either does not exist or is complete. ``flow_fn`` is a per-video flow
    callable (``utils.flow.make_video_flow``); by default it is made from ``settings.method``.
    Frames are decoded and handed to ``flow_fn`` ``chunk_frames`` at a time (default: the
    method's ``chunk_frames``), so memory stays bounded for long videos. Raises
    :class:`VideoReadError` for videos with fewer than 2 decodable frames.
    """
    video_out_dir = Path(video_out_dir)
    if flow_fn is None and settings.flow:
        flow_fn = make_video_flow(settings.method, **settings.method_options)
    if settings.flow:
        chunk_frames = chunk_frames or get_flow_method(settings.method).chunk_frames
    tmp_dir = tmp_folder(video_out_dir)
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    try:
        if not settings.flow:          # the frames only
            n_frames = sum(1 for _ in stored_frames(video_path, tmp_dir, settings))
            move_into_place(tmp_dir, video_out_dir)
            return n_frames - 1
        n_frames = 0
        chunk: list[np.ndarray] = []    # frames whose flow to the next frame is not written yet
        for gray in stored_frames(video_path, tmp_dir, settings):
            n_frames += 1
            chunk.append(gray)
            if len(chunk) == chunk_frames + 1:
                write_flows(tmp_dir, n_frames - chunk_frames, flow_fn(np.stack(chunk)), settings)
                chunk = chunk[-1:]       # the last frame starts the next chunk
        if len(chunk) > 1:
            write_flows(tmp_dir, n_frames - len(chunk) + 1, flow_fn(np.stack(chunk)), settings)
        move_into_place(tmp_dir, video_out_dir)
        return n_frames - 1
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def damage_warnings(decoded: int, announced: int, messages: list[str], max_frames: int | None = None) -> list[str]:
    """The warnings of a video extracted with ``decoded`` of its ``announced`` frames while FFmpeg
    printed ``messages``."""
    notes = [note for note in [missing_frames_warning(decoded, announced, max_frames)] if note]
    if messages:
        notes.append(f"FFmpeg reported {len(messages)} decoding error(s), e.g. {messages[0]!r}: the file is "
                     "damaged in places (those frames may show blocks or smears)")
    return notes


def decode_video(video_path: str, tmp_dir: str, settings: ExtractionSettings) -> tuple[np.ndarray, list[str]]:
    """Write a video's ``img_*.jpg`` into ``tmp_dir``; return its grayscale frames uint8[T, H, W]
    and its warnings: the first half of :func:`extract_video`, for executors that compute the
    flow elsewhere (:mod:`utils.extract_batched`)."""
    messages: list[str] = []           # FFmpeg's messages, about this video
    try:
        with decoder_messages(messages):
            gray = np.stack(list(stored_frames(video_path, Path(tmp_dir), settings)))
            announced = header_frame_count(video_path, settings.fps)
    except VideoReadError as error:
        raise VideoReadError(with_decoder_message(error, messages)) from None
    return gray, damage_warnings(len(gray), announced, messages, settings.max_frames)


def with_decoder_message(error: VideoReadError, messages: list[str]) -> str:
    """The reason of a failed video, with FFmpeg's first message about it when there is one."""
    return str(error) + (f" (FFmpeg: {messages[0]!r})" if messages else "")


# --- the job a worker runs ---------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One video to extract: where it is, where its folder goes, with which settings."""

    video_path: str
    video_out_dir: str
    settings: ExtractionSettings


@dataclass
class Result:
    """What became of a :class:`Job`."""

    video_path: str
    frame_pairs: int = 0
    error: str | None = None        # reason the video failed, None when done
    details: str | None = None      # traceback of unexpected errors
    warnings: list[str] = field(default_factory=list)   # extracted, but looks damaged


_flow_fns: dict = {}               # one flow callable per (method, options) and process


def flow_fn_for(settings: ExtractionSettings):
    """This process's flow callable for ``settings`` (built once, then reused: a TV-L1 object or a
    compiled Keras program is expensive to make)."""
    if not settings.flow:
        return None                 # frames only: no flow to compute
    key = settings.method, json.dumps(settings.method_options, sort_keys=True)
    if key not in _flow_fns:
        _flow_fns[key] = make_video_flow(settings.method, **settings.method_options)
    return _flow_fns[key]


def init_worker(opencv_threads: int, parent_pid: int) -> None:
    """Run in each worker process: ``opencv_threads`` OpenCV threads; die with the parent (Linux)."""
    cv2.setNumThreads(opencv_threads)
    if sys.platform.startswith("linux"):
        try:   # PR_SET_PDEATHSIG: a killed parent takes its workers with it instead of orphaning them
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            pass
    if os.getppid() != parent_pid:   # the parent died before prctl took effect: nobody would kill us
        os._exit(1)


def run_job(job: Job) -> Result:
    """Extract one video; never raises (the failure reason is returned instead)."""
    messages: list[str] = []            # FFmpeg's, about this video
    try:
        flow_fn = flow_fn_for(job.settings)
        with decoder_messages(messages):
            pairs = extract_video(job.video_path, job.video_out_dir, flow_fn, settings=job.settings)
            announced = header_frame_count(job.video_path, job.settings.fps)
        return Result(job.video_path, frame_pairs=pairs,
                      warnings=damage_warnings(pairs + 1, announced, messages, job.settings.max_frames))
    except VideoReadError as error:
        return Result(job.video_path, error=with_decoder_message(error, messages))
    except Exception as error:  # noqa: BLE001 - one bad video must not stop a dataset run
        return failure(job.video_path, error, traceback.format_exc())


DISK_FULL = "no space left on the output disk"       # the start of a failure that stops the whole run
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def failure(video_path: str, error: BaseException, details: str | None) -> Result:
    """The result of a video that failed with an unexpected error (its type and message, and the traceback).

    A full disk (or quota) is not the video's fault and every later video would fail the same way:
    its error starts with :data:`DISK_FULL` and names the file being written (see :func:`stops_run`).
    """
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return Result(video_path, error=f"{DISK_FULL} ({error.strerror}) while writing {error.filename or 'a file'}")
    return Result(video_path, error=f"{type(error).__name__}: {str(error).strip()}", details=details)


def stops_run(result: Result) -> bool:
    """Whether a failed result means that no later video can succeed either (a full disk)."""
    return bool(result.error) and result.error.startswith(DISK_FULL)


# --- leftovers of interrupted runs -------------------------------------------------------------
def clean_stale_tmp(out_dir: Path) -> int:
    """Remove ``.tmp-*`` folders left by runs that were killed (their process no longer exists)."""
    removed = 0
    if not out_dir.is_dir():
        return removed
    for class_entry in os.scandir(out_dir):
        if class_entry.name.startswith(".") or entry_kind(class_entry.path) != "folder":
            continue
        for entry in os.scandir(class_entry.path):
            if entry.name.startswith(TMP_PREFIX) and not pid_alive(entry.name.rsplit("-", 1)[-1]):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed
