"""The rawframes layout on disk: the file names every stage agrees on, and the files beside them.

One folder per video, mmaction2's layout (``tools/data/build_rawframes.py``)::

    <frames_dir>/<class>/<video>/img_00001.jpg ...      every decodable frame (colour JPEG)
                                 flow_x_00001.jpg ...   flow i = frame i -> frame i+1, x component
                                 flow_y_00001.jpg ...   ... and y component (grayscale, see utils.flow)

and, in ``<frames_dir>`` itself, what the extraction records about them:
``extraction_settings.json`` (the settings that made the frames), ``extraction_failures.csv``
(videos that could not be read, and why) and ``extraction_warnings.csv`` (videos extracted but
damaged). Work in progress is written under hidden ``.tmp-`` names and renamed when complete.

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

PathLike = str | os.PathLike


def frame_file(frames_path: PathLike, i: int) -> Path:
    """``<frames_path>/img_{i:05d}.jpg`` (``i`` is 1-based)."""
    return Path(frames_path) / f"{FRAME_PREFIX}{int(i):05d}{IMAGE_SUFFIX}"


def flow_files(frames_path: PathLike, i: int) -> tuple[Path, Path]:
    """``(flow_x_{i:05d}.jpg, flow_y_{i:05d}.jpg)`` in ``frames_path`` (flow ``i`` = frame ``i -> i+1``)."""
    folder = Path(frames_path)
    return (folder / f"{FLOW_X_PREFIX}{int(i):05d}{IMAGE_SUFFIX}",
            folder / f"{FLOW_Y_PREFIX}{int(i):05d}{IMAGE_SUFFIX}")


def file_names(folder: PathLike) -> set[str]:
    """Names of the entries of ``folder`` (empty when it does not exist)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def count_frames(frames_path: PathLike) -> tuple[int, int]:
    """``(n_frames, n_flows)``: numbers of ``img_*.jpg`` and ``flow_x_*.jpg`` in a folder (0, 0 if absent)."""
    n_frames = n_flows = 0
    for name in file_names(frames_path):
        if name.endswith(IMAGE_SUFFIX):
            if name.startswith(FRAME_PREFIX):
                n_frames += 1
            elif name.startswith(FLOW_X_PREFIX):
                n_flows += 1
    return n_frames, n_flows


def read_extraction_settings(frames_dir: PathLike) -> dict | None:
    """The settings a rawframes folder was extracted with (its ``extraction_settings.json``), or None."""
    try:
        settings = json.loads((Path(frames_dir) / SETTINGS_FILE).read_text())
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
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)     # after a failed write (full disk): no 0-byte file left behind
