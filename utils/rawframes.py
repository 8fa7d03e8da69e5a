"""The rawframes layout on disk: the file names every stage agrees on, and the files beside them.

One folder per video, mmaction2's layout (``tools/data/build_rawframes.py``)::

    <frames_dir>/<class>/<video>/img_00001.jpg ...      every decodable frame (colour JPEG)
                                 flow_x_00001.jpg ...   flow i = frame i -> frame i+1, x component
                                 flow_y_00001.jpg ...   ... and y component (grayscale, see utils.flow)

and, in ``<frames_dir>`` itself, what the extraction records about them:
``extraction_settings.json`` (the settings that made the frames), ``extraction_failures.csv``
(videos that could not be read, and why) and ``extraction_warnings.csv`` (videos extracted but
damaged). Work in progress is written under hidden ``.tmp-`` names and renamed when complete.
A folder of frames that holds video folders but no ``extraction_settings.json`` was made elsewhere
(mmaction2's ``build_rawframes.py``, another tool): :func:`read_extraction_settings` says so
(:data:`MADE_ELSEWHERE`, method unknown) instead of guessing a method.

Frames made elsewhere may name their flows ``x_00001.jpg`` / ``y_00001.jpg`` instead (mmaction2's
test fixtures, and its flow configs' ``filename_tmpl='{}_{:05d}.jpg'``): the readers here find out
per folder which of :data:`FLOW_NAMINGS` it uses (:func:`flow_naming`); extraction always writes
``flow_x_`` / ``flow_y_``.

Extraction (:mod:`utils.extract_job`) writes these files; the dataset index, the generators and
the evaluation read them. This module holds only the names and the small readers, so that every
stage can import it without importing any other.

HMDB51 names contain ``[ ] ( ) ! + &``: nothing here ever globs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

FRAME_PREFIX = "img_"
FLOW_X_PREFIX = "flow_x_"
FLOW_Y_PREFIX = "flow_y_"
IMAGE_SUFFIX = ".jpg"
FAILURES_FILE = "extraction_failures.csv"
WARNINGS_FILE = "extraction_warnings.csv"
SETTINGS_FILE = "extraction_settings.json"
TMP_PREFIX = ".tmp-"
FLOW_NAMINGS = ((FLOW_X_PREFIX, FLOW_Y_PREFIX), ("x_", "y_"))
"""The (x, y) prefixes of flow files, in the order they are looked for: ``flow_x_``/``flow_y_``
(written here; mmaction2's ``build_rawframes.py`` and denseflow), then ``x_``/``y_`` (mmaction2's
``tests/data/imgs`` and its flow configs, ``filename_tmpl='{}_{:05d}.jpg'``)."""
MADE_ELSEWHERE = "made elsewhere; method unknown"
"""``origin`` of the settings of a frames folder that this repository did not extract."""

PathLike = str | os.PathLike


def frame_file(frames_path: PathLike, i: int) -> Path:
    """``<frames_path>/img_{i:05d}.jpg`` (``i`` is 1-based)."""
    return Path(frames_path) / f"{FRAME_PREFIX}{int(i):05d}{IMAGE_SUFFIX}"


def flow_naming(frames_path: PathLike) -> tuple[str, str]:
    """The (x, y) flow prefixes of one video folder: the first of :data:`FLOW_NAMINGS` whose
    ``<x prefix>00001.jpg`` is there; ``flow_x_``/``flow_y_`` when there is no flow yet."""
    folder = Path(frames_path)
    for naming in FLOW_NAMINGS:
        if (folder / f"{naming[0]}{1:05d}{IMAGE_SUFFIX}").is_file():
            return naming
    return FLOW_NAMINGS[0]


def flow_files(frames_path: PathLike, i: int, naming: tuple[str, str] | None = None) -> tuple[Path, Path]:
    """The x and y files of flow ``i`` (frame ``i -> i+1``) in ``frames_path``: ``flow_x_{i:05d}.jpg``,
    ``flow_y_{i:05d}.jpg``, or ``x_``/``y_`` where the folder names them so (``naming``: the prefixes,
    default :func:`flow_naming` of the folder)."""
    folder = Path(frames_path)
    x_prefix, y_prefix = naming or flow_naming(folder)
    return (folder / f"{x_prefix}{int(i):05d}{IMAGE_SUFFIX}",
            folder / f"{y_prefix}{int(i):05d}{IMAGE_SUFFIX}")


def file_names(folder: PathLike) -> set[str]:
    """Names of the entries of ``folder`` (empty when it does not exist)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def count_frames(frames_path: PathLike) -> tuple[int, int]:
    """``(n_frames, n_flows)``: numbers of ``img_*.jpg`` and of x-flow files in a folder (0, 0 if absent).

    Flows are counted under the folder's naming: ``flow_x_*.jpg``, or ``x_*.jpg`` when it has no
    ``flow_x_`` file (see :data:`FLOW_NAMINGS`).
    """
    n_frames = 0
    n_flows = dict.fromkeys([x for x, _ in FLOW_NAMINGS], 0)
    for name in file_names(frames_path):
        if name.endswith(IMAGE_SUFFIX):
            if name.startswith(FRAME_PREFIX):
                n_frames += 1
            else:
                for x_prefix in n_flows:
                    if name.startswith(x_prefix):
                        n_flows[x_prefix] += 1
                        break
    return n_frames, next((n for n in n_flows.values() if n), 0)


def _iter_video_folders(frames_dir: PathLike):
    for class_name in sorted(file_names(frames_dir)):
        class_dir = Path(frames_dir) / class_name
        if not class_name.startswith("."):
            yield from (class_dir / v for v in sorted(file_names(class_dir))
                        if not v.startswith(".") and (class_dir / v).is_dir())


def video_folders(frames_dir: PathLike) -> list[Path]:
    """The ``<class>/<video>`` folders of a frames folder, sorted (hidden and work-in-progress ones left out)."""
    return list(_iter_video_folders(frames_dir))


def has_video_folders(frames_dir: PathLike) -> bool:
    """Whether ``frames_dir`` holds at least one ``<class>/<video>`` folder (stops at the first)."""
    return next(_iter_video_folders(frames_dir), None) is not None


def iter_stored_frames(frames_path: PathLike, max_frames: int | None = None):
    """The stored RGB frames of one video folder as BGR uint8 arrays (as OpenCV decodes a video), in order."""
    import cv2

    n_frames, _ = count_frames(frames_path)
    for i in range(1, (n_frames if max_frames is None else min(n_frames, max_frames)) + 1):
        image = cv2.imread(str(frame_file(frames_path, i)), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read {frame_file(frames_path, i)}")
        yield image


def made_elsewhere_settings() -> dict:
    """What is known of frames this repository did not extract: ``{"origin": MADE_ELSEWHERE, "method": None}``."""
    return {"origin": MADE_ELSEWHERE, "method": None}


def holds_no_flow(settings: dict | None) -> bool:
    """Whether extraction settings say the frames were extracted here without optical flow (``--no-flow``:
    method None). Frames made elsewhere (method unknown, also None) may hold flow: False."""
    return settings is not None and settings.get("origin") != MADE_ELSEWHERE and settings.get("method", "") is None


def read_extraction_settings(frames_dir: PathLike) -> dict | None:
    """The settings a rawframes folder was extracted with (its ``extraction_settings.json``), or None.

    A folder that holds video folders but no settings file was made elsewhere: then
    :func:`made_elsewhere_settings` (method ``None``: unknown), never a method that did not make them.
    """
    path = Path(frames_dir) / SETTINGS_FILE
    if not path.exists() and has_video_folders(frames_dir):
        return made_elsewhere_settings()
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


def read_failures(frames_dir: PathLike) -> dict[tuple[str, str], str]:
    """``{(class, video stem): reason}`` from ``<frames_dir>/extraction_failures.csv`` ({} if absent)."""
    path = Path(frames_dir) / FAILURES_FILE
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace")
    return {(Path(v).parent.name, Path(v).stem): r for v, r in zip(table.get("video", []), table.get("reason", []))}


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename: never a half-written file."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)     # after a failed write (full disk): no 0-byte file left behind
