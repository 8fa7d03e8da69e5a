"""The dataset index: one row per video of the official HMDB51 split files.

HMDB51 ships three train/test splits as 153 small text files
``<class>_test_split{1,2,3}.txt``. Each line reads ``<video>.avi <code> `` (with a trailing
space), where code ``1`` = train, ``2`` = test and ``0`` = not used in that split. Each class
has 70 training and 30 test clips per split.

:func:`build_index` turns these files plus what is on disk into a pandas DataFrame that every
later stage reads (frame extraction, generators, evaluation). It also carves a **validation
subset out of the training part** so that the test split is never used for model selection.
Many HMDB51 clips are cut from the same movie or YouTube video, and neighbouring clips look
alike; the validation subset is therefore drawn by whole *source videos*, so no source
sits on both sides of the train/validation border.

File names carry meta tags, e.g. ``April_09_brush_hair_u_nm_np1_ba_goo_0.avi``::

    <source>_<class>_<body part>_<camera motion>_<people>_<viewpoint>_<quality>_<clip>

=============  ======  =====================================================
column         code    value in the index
=============  ======  =====================================================
body_part      f       "full body"
               u       "upper body"
               l       "lower body"
               h       "head"
camera_motion  cm      "moving"   (camera motion)
               nm      "static"   (no camera motion)
num_people     npN     N as an int (the HMDB51 README lists np1-np3; the real
                       names also use np0 and np4-np10, so the number is kept)
viewpoint      fr      "front"
               ba      "back"
               le      "left"
               ri      "right"
quality        bad     "bad"
               med     "medium"
               goo     "good"
clip           N       N as an int (index of the clip within its source)
=============  ======  =====================================================

A name that does not follow the pattern gets ``source`` = its stem and ``None`` meta values,
except UCF101's ``v_<Class>_g<GG>_c<CC>``: source ``gGG`` (UCF101's group, shared by all classes)
and clip ``CC``. UCF101's official lists and mmaction2 list files are read as splits too
(:mod:`utils.split_formats`).
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from . import split_formats
from .config import Config
from .rawframes import count_frames, file_names, read_failures

SPLITS = (1, 2, 3)
SPLIT_CODES = {0: "unused", 1: "train", 2: "test"}
VIDEO_EXTENSIONS = (".avi", ".mp4")   # split files say .avi; a .mp4 with the same stem is accepted

# The 51 HMDB51 classes, sorted (the order defines the integer labels of the real dataset).
HMDB51_CLASSES = (
    "brush_hair", "cartwheel", "catch", "chew", "clap", "climb", "climb_stairs", "dive",
    "draw_sword", "dribble", "drink", "eat", "fall_floor", "fencing", "flic_flac", "golf",
    "handstand", "hit", "hug", "jump", "kick", "kick_ball", "kiss", "laugh", "pick", "pour",
    "pullup", "punch", "push", "pushup", "ride_bike", "ride_horse", "run", "shake_hands",
    "shoot_ball", "shoot_bow", "shoot_gun", "sit", "situp", "smile", "smoke", "somersault",
    "stand", "swing_baseball", "sword", "sword_exercise", "talk", "throw", "turn", "walk", "wave",
)
HMDB51_TRAIN_PER_CLASS = 70
HMDB51_TEST_PER_CLASS = 30

# Readable words for the meta-tag codes (see the module docstring).
BODY_PART = {"f": "full body", "u": "upper body", "l": "lower body", "h": "head"}
CAMERA_MOTION = {"cm": "moving", "nm": "static"}
VIEWPOINT = {"fr": "front", "ba": "back", "le": "left", "ri": "right"}
QUALITY = {"bad": "bad", "med": "medium", "goo": "good"}
META_KEYS = ("body_part", "camera_motion", "num_people", "viewpoint", "quality", "clip")

_META_PATTERN = re.compile(
    r"^(?P<prefix>.+)_(?P<body_part>[fulh])_(?P<camera_motion>cm|nm)_np(?P<num_people>\d+)"
    r"_(?P<viewpoint>fr|ba|le|ri)_(?P<quality>bad|med|goo)_(?P<clip>\d+)$"
)
_SPLIT_FILE_PATTERN = re.compile(r"^(?P<class_name>.+)_test_split(?P<split>\d+)\.txt$")
# Two spellings of one source seen in HMDB51: "..._[HD]" and "..._[HD]_avi"; "How_to..." / "how_to...".
_CONTAINER_SUFFIX = re.compile(r"_(avi|mp4|wmv|flv|mov|mpg|mpeg)$")


# --------------------------------------------------------------------------------------
# Split files
# --------------------------------------------------------------------------------------
def parse_split_file(path) -> list[tuple[str, int]]:
    """``[(filename, code), ...]`` from one split file; errors name the file and the line.

    Blank lines are skipped. A line must be ``<name>.avi <0|1|2>`` (extra spaces are fine).
    A file name listed twice is an error.
    """
    return [(filename, code) for filename, code, _ in _read_split_file(path)]


def _read_split_file(path) -> list[tuple[str, int, int]]:
    """``[(filename, code, line_no), ...]``; see :func:`parse_split_file`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    entries: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")     # a byte-order mark (Windows editors) is not part of line 1
    except UnicodeDecodeError as error:
        line_no = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}, line {line_no}: byte {raw[error.start]:#04x} is not UTF-8 text; save the "
                         "file as UTF-8 (or take it again from the official archive)") from None
    with io.StringIO(text, newline=None) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            where = f"{path}, line {line_no}: {line.rstrip()!r}"
            if len(parts) != 2:
                raise ValueError(f"{where}: expected '<video>.avi <0|1|2>'")
            filename, code_text = parts
            if code_text not in ("0", "1", "2"):
                raise ValueError(f"{where}: code must be 0 (unused), 1 (train) or 2 (test)")
            if os.path.splitext(filename)[1].lower() not in VIDEO_EXTENSIONS:
                raise ValueError(f"{where}: video name must end in .avi or .mp4")
            split_formats.check_name(filename, where, "video")     # no '../x.avi': nothing outside the dataset
            if filename in seen:
                raise ValueError(f"{where}: {filename!r} already listed on line {seen[filename]}")
            seen[filename] = line_no
            entries.append((filename, int(code_text), line_no))
    if not entries:
        raise ValueError(f"split file is empty: {path}")
    return entries


def _split_files(splits_dir: Path) -> dict[str, dict[int, Path]]:
    """``{class_name: {split: path}}``, checking that every class has all three splits.

    The files sit in ``splits_dir``, or in its one sub-folder that holds them (the official
    archive unpacks to ``testTrainMulti_7030_splits/``).
    """
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise FileNotFoundError(
            f"splits folder not found: {splits_dir}, nor split definitions beside it (expected "
            f"{split_formats.WHAT_IS_LOOKED_FOR}; for HMDB51 run `python -m utils.download`, for UCF101 "
            "`python -m utils.download --dataset ucf101 --splits-only`)"
        )
    files = _split_files_in(splits_dir)
    if not files:   # the official archive unpacks to splits/testTrainMulti_7030_splits/: look one level down
        nested = {Path(e.path): found for e in os.scandir(splits_dir)
                  if e.is_dir() and (found := _split_files_in(Path(e.path)))}
        if len(nested) != 1:
            hint = (f"; there are sets in {len(nested)} sub-folders ({', '.join(sorted(p.name for p in nested))}): "
                    "keep one" if nested else
                    f" or in a sub-folder of it, and no other split definitions ({split_formats.WHAT_IS_LOOKED_FOR})")
            raise FileNotFoundError(f"no <class>_test_split<k>.txt files in {splits_dir}{hint}")
        splits_dir, files = next(iter(nested.items()))
    for class_name, by_split in sorted(files.items()):
        missing = [s for s in SPLITS if s not in by_split]
        if missing:
            names = ", ".join(f"{class_name}_test_split{s}.txt" for s in missing)
            raise FileNotFoundError(f"{splits_dir}: class {class_name!r} has no {names}")
    return files


def _split_files_in(folder: Path) -> dict[str, dict[int, Path]]:
    """``{class_name: {split: path}}`` of the split files directly in ``folder``."""
    files: dict[str, dict[int, Path]] = {}
    for entry in os.scandir(folder):
        match = _SPLIT_FILE_PATTERN.match(entry.name)
        if match and entry.is_file():
            split_formats.check_name(match["class_name"], entry.path, "class")   # '.._test_split1.txt'
            split = int(match["split"])
            if split not in SPLITS:
                raise ValueError(f"{entry.path}: split number must be 1, 2 or 3")
            files.setdefault(match["class_name"], {})[split] = Path(entry.path)
    return files


def class_names(cfg_or_splits_dir) -> list[str]:
    """The class list in label order (``class_names[label]``; its length is the networks' number of
    outputs): HMDB51's sorted (one class per set of split files, a dataset may have fewer than 51);
    UCF101's all of ``classInd.txt``; mmaction2 lists' labels 0 .. the largest, as they number them.
    A Config with a class subset (``cfg.classes``) gets those classes only, in the same order
    (:func:`subset_classes`), labelled 0 .. k-1."""
    splits_dir = cfg_or_splits_dir.splits_dir if isinstance(cfg_or_splits_dir, Config) else cfg_or_splits_dir
    fmt, folder = split_formats.locate(splits_dir)
    if fmt not in (None, "hmdb51"):  # UCF101 / mmaction2 lists: indexed by the labels they define
        names = list(split_formats.load_table(splits_dir, fmt).attrs["class_names"])
    else:
        names = sorted(_split_files(folder))
    if isinstance(cfg_or_splits_dir, Config):
        return subset_classes(names, cfg_or_splits_dir.classes, splits_dir)
    return names


def subset_classes(classes: list[str], subset, splits_dir="the split files") -> list[str]:
    """The classes of ``subset`` (None: all) in the dataset's label order; labels are then 0 .. k-1
    in that order, whatever order the subset was given in. Unknown names are an error naming them."""
    if subset is None:
        return list(classes)
    unknown = [name for name in subset if name not in set(classes)]
    if unknown:
        raise ValueError(f"classes {unknown} are not classes of {splits_dir}; it has {len(classes)}: "
                         f"{', '.join(classes)}")
    return [name for name in classes if name in set(subset)]


def load_splits(splits_dir, check_hmdb51: bool | None = None) -> pd.DataFrame:
    """All split files as a table: class_name, filename, video (stem), split1, split2, split3.

    Split values are "train", "test" or "unused". Every class must list the same videos in its
    three files, and a video may belong to one class only.

    ``check_hmdb51``: check the official counts (70 train / 30 test per class and split, 3570 /
    1530 per split). ``None`` (default) checks when the classes are exactly HMDB51's 51 classes,
    so smaller datasets in the same layout (the demo) are accepted as they are.

    ``splits_dir`` may also hold UCF101's official lists or mmaction2 list files (see
    :mod:`utils.split_formats`): the same table, with ``table.attrs["class_names"]`` in the
    label order they define; ``None`` checks nothing there.
    """
    fmt, folder = split_formats.locate(splits_dir)
    if fmt not in (None, "hmdb51"):  # UCF101's official lists or mmaction2 list files (utils.split_formats)
        table = split_formats.load_table(splits_dir, fmt)
        if check_hmdb51:
            check_hmdb51_counts(table, folder)
        return table
    splits_dir = folder               # splits/, or mmaction2's annotations/ beside it
    files = _split_files(splits_dir)
    rows = []
    owner: dict[str, str] = {}
    for class_name in sorted(files):
        paths = files[class_name]
        parsed = {s: _read_split_file(paths[s]) for s in SPLITS}
        codes = {s: {name: code for name, code, _ in parsed[s]} for s in SPLITS}
        first = parsed[1]
        for s in SPLITS[1:]:
            for name, _, line_no in parsed[s]:
                if name not in codes[1]:
                    raise ValueError(f"{paths[s]}, line {line_no}: {name!r} is not listed in {paths[1].name}; "
                                     "the three split files of a class must list the same videos")
            for name, _, line_no in first:
                if name not in codes[s]:
                    raise ValueError(f"{paths[s]}: {name!r} (line {line_no} of {paths[1].name}) is missing; "
                                     "the three split files of a class must list the same videos")
        for filename, _, line_no in first:
            stem = os.path.splitext(filename)[0]
            if stem in owner:
                raise ValueError(f"{paths[1]}, line {line_no}: video {filename!r} is also listed "
                                 f"under class {owner[stem]!r}")
            owner[stem] = class_name
            rows.append({
                "class_name": class_name,
                "filename": filename,
                "video": stem,
                **{f"split{s}": SPLIT_CODES[codes[s][filename]] for s in SPLITS},
            })
    table = pd.DataFrame(rows, columns=["class_name", "filename", "video", "split1", "split2", "split3"])
    if check_hmdb51 is None:
        check_hmdb51 = tuple(sorted(files)) == HMDB51_CLASSES
    if check_hmdb51:
        check_hmdb51_counts(table, splits_dir)
    return table


def check_hmdb51_counts(table: pd.DataFrame, splits_dir="split files") -> None:
    """Raise ValueError unless the table has HMDB51's official 51 classes x 70 train / 30 test."""
    classes = sorted(table["class_name"].unique())
    if len(classes) != len(HMDB51_CLASSES):
        raise ValueError(f"{splits_dir}: expected {len(HMDB51_CLASSES)} HMDB51 classes, found {len(classes)}")
    for s in SPLITS:
        counts = pd.crosstab(table["class_name"], table[f"split{s}"])
        for role, expected in (("train", HMDB51_TRAIN_PER_CLASS), ("test", HMDB51_TEST_PER_CLASS)):
            per_class = counts[role] if role in counts else pd.Series(0, index=counts.index)
            wrong = per_class[per_class != expected]
            if len(wrong):
                detail = ", ".join(f"{c}: {n}" for c, n in wrong.head(5).items())
                raise ValueError(
                    f"{splits_dir}: split {s} must have {expected} {role} clips per class; {detail}"
                )
            total = int(per_class.sum())
            if total != expected * len(classes):
                raise ValueError(f"{splits_dir}: split {s} has {total} {role} clips, "
                                 f"expected {expected * len(classes)}")


# --------------------------------------------------------------------------------------
# Meta tags and sources
# --------------------------------------------------------------------------------------
def parse_meta(filename, class_name: str | None = None) -> dict:
    """Source video and meta tags from an HMDB51 file name (readable words, see module docstring).

    ``class_name`` tells where the source part ends; without it the HMDB51 class names are
    tried (longest first). Names that do not follow the pattern give ``source`` = stem and
    ``None`` for every tag; UCF101 names give their group (``"g08"``) and clip number.
    """
    stem = os.path.splitext(os.path.basename(str(filename)))[0]
    match = _META_PATTERN.match(stem)
    if match is None:
        ucf101 = split_formats.parse_ucf101_name(stem)  # v_<Class>_g08_c01: source "g08", clip 1
        return {"source": stem, **{key: None for key in META_KEYS}, **(ucf101 or {})}
    prefix = match["prefix"]
    candidates = [class_name] if class_name else sorted(HMDB51_CLASSES, key=len, reverse=True)
    source = prefix
    for name in candidates:
        if prefix.endswith("_" + name) and len(prefix) > len(name) + 1:
            source = prefix[: -len(name) - 1]
            break
    return {
        "source": source,
        "body_part": BODY_PART[match["body_part"]],
        "camera_motion": CAMERA_MOTION[match["camera_motion"]],
        "num_people": int(match["num_people"]),
        "viewpoint": VIEWPOINT[match["viewpoint"]],
        "quality": QUALITY[match["quality"]],
        "clip": int(match["clip"]),
    }


def source_group(source: str) -> str:
    """Key that joins spellings of one source video (case, a stray ``_avi`` suffix)."""
    return _CONTAINER_SUFFIX.sub("", str(source).casefold())


def carve_validation(table: pd.DataFrame, split: int, val_fraction: float, seed: int = 0) -> pd.Series:
    """Subset per row for one split: "train" | "val" | "test" | "unused".

    Validation clips come from the split's training clips only. Whole source videos (see
    :func:`source_group`) are moved to validation, class by class, until each class holds
    about ``val_fraction`` of its training clips; a source never sits on both sides, even when
    it has clips in several classes. Each class keeps at least one training source and, when
    ``val_fraction > 0`` and it has two or more sources, gets at least one validation source.
    Deterministic for a given ``seed``.
    """
    role = table[f"split{split}"].astype(str)
    subset = role.copy()
    if val_fraction <= 0:
        return subset
    rng = np.random.default_rng(seed)
    train = table[role == "train"]
    groups = train["source"].map(source_group)
    decided: dict[str, str] = {}  # group -> "val" | "train"
    for class_name in sorted(train["class_name"].unique()):
        in_class = groups[train["class_name"] == class_name]
        sizes = in_class.value_counts()
        names = sorted(sizes.index)
        order = [names[i] for i in rng.permutation(len(names))]
        target = max(1, int(np.floor(val_fraction * len(in_class) + 0.5))) if len(names) > 1 else 0
        n_val = sum(int(sizes[g]) for g in names if decided.get(g) == "val")
        n_train_groups = sum(1 for g in names if decided.get(g) == "train")
        open_groups = [g for g in order if g not in decided]
        chosen = []
        for g in open_groups:  # take a source when it brings the count closer to the target
            if abs(n_val + sizes[g] - target) < abs(n_val - target):
                chosen.append(g)
                n_val += int(sizes[g])
        if target > 0 and n_val == 0 and open_groups:  # at least one source: the smallest
            chosen.append(min(open_groups, key=lambda g: (sizes[g], open_groups.index(g))))
        if chosen and n_train_groups == 0 and len(chosen) == len(open_groups):
            chosen.pop()  # keep at least one training source
        for g in open_groups:
            decided[g] = "val" if g in chosen else "train"
    is_val = groups.map(decided) == "val"
    subset.loc[is_val[is_val].index] = "val"
    return subset


# --------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------
def build_index(cfg: Config, strict: bool = False, check_hmdb51: bool | None = None) -> pd.DataFrame:
    """One row per video listed in the dataset's split definitions, with its subset for ``cfg.split``.

    Columns: video, filename, class_name, label, source, split1..split3, subset, video_path,
    has_video, frames_path, n_frames, n_flows, body_part, camera_motion, num_people,
    viewpoint, quality, clip. ``label`` is the dataset's own number (:func:`class_names`), and
    ``index.attrs["class_names"]`` the whole class list by label. With a class subset (``cfg.classes``)
    only its classes' videos, labelled 0 .. k-1 in the dataset's class order, each in the train / val /
    test role it has in the whole dataset. Videos missing from
    ``cfg.videos_dir`` are kept (``has_video`` False) with a warning; ``strict=True`` raises
    instead. A dataset without ``videos/`` (frames made elsewhere, e.g. by mmaction2) is not
    warned about its videos, only about listed videos without a frames folder. Where mmaction2
    lists give ``total_frames``, a folder holding more frames is used up to that number (as
    mmaction2 reads it), one holding fewer as it is; either is warned about once.
    """
    table = load_splits(cfg.splits_dir, check_hmdb51=check_hmdb51)
    _, defined_in = split_formats.locate(cfg.splits_dir)     # splits/, annotations/ or the lists' folder
    if (table[f"split{cfg.split}"] == "unused").all():
        raise ValueError(f"{defined_in} defines no clips for split {cfg.split}")
    all_classes = list(table.attrs.get("class_names") or sorted(table["class_name"].unique()))
    classes = subset_classes(all_classes, cfg.classes, cfg.splits_dir)
    label_of = {name: i for i, name in enumerate(classes)}

    meta = pd.DataFrame(
        [parse_meta(f, c) for f, c in zip(table["filename"], table["class_name"])], index=table.index
    )
    index = pd.concat([table, meta], axis=1)
    # carved on every class, then cut: a class keeps the same validation videos in a subset
    index["subset"] = carve_validation(index, cfg.split, cfg.val_fraction, cfg.seed)
    index = index[index["class_name"].isin(classes)].reset_index(drop=True)
    index["label"] = index["class_name"].map(label_of).astype(int)

    videos_dir, frames_dir = cfg.videos_dir, cfg.frames_dir
    present = sorted(set(index["class_name"]))
    unlisted = unlisted_class_folders(videos_dir, all_classes)
    if unlisted:
        warnings.warn(f"{len(unlisted)} folder(s) of {videos_dir} have no split files in {defined_in}, so "
                      f"their videos are not in the index (never trained on or tested): {', '.join(unlisted)}; "
                      "add <class>_test_split<k>.txt files for them or move them out", stacklevel=2)
    on_disk = {c: file_names(videos_dir / c) for c in present}
    video_paths, has_video = [], []
    for class_name, filename, stem in zip(index["class_name"], index["filename"], index["video"]):
        names = on_disk[class_name]
        found = next((stem + ext for ext in (filename[len(stem):], *VIDEO_EXTENSIONS) if stem + ext in names), None)
        video_paths.append(videos_dir / class_name / (found or filename))
        has_video.append(found is not None)
    index["video_path"] = video_paths
    index["has_video"] = has_video

    extracted = {c: file_names(frames_dir / c) for c in present}  # skip scanning folders that do not exist
    index["frames_path"] = [frames_dir / c / v for c, v in zip(index["class_name"], index["video"])]
    counts = [count_frames(p) if v in extracted[c] else (0, 0)
              for c, v, p in zip(index["class_name"], index["video"], index["frames_path"])]
    index["n_frames"] = [n for n, _ in counts]
    index["n_flows"] = [n for _, n in counts]
    if "listed_frames" in index:
        _apply_listed_frames(index, defined_in)

    if videos_dir.is_dir():
        missing = index.loc[~index["has_video"], "video_path"]
        message = (f"{len(missing)} of {len(index)} videos listed in {defined_in} are not in {videos_dir}")
    else:   # frames made elsewhere, no videos/ at all: only a missing frames folder is worth a word
        missing = index.loc[index["n_frames"] < 1, "frames_path"]
        message = (f"{len(missing)} of {len(index)} videos listed in {defined_in} have no frames in "
                   f"{frames_dir} (and there is no {videos_dir} to extract them from)")
    if len(missing):
        if strict:
            first = "\n  ".join(str(p) for p in missing.head(5))
            raise FileNotFoundError(f"{message}; first missing:\n  {first}")
        warnings.warn(message + (" (indexed with has_video=False)" if videos_dir.is_dir() else ""), stacklevel=2)

    columns = ["video", "filename", "class_name", "label", "source", "split1", "split2", "split3",
               "subset", "video_path", "has_video", "frames_path", "n_frames", "n_flows", *META_KEYS]
    index = index[columns]
    index.attrs = {"class_names": classes}
    return index


def _apply_listed_frames(index: pd.DataFrame, lists_folder) -> None:
    """Use a list's ``total_frames`` where the folder holds more frames (mmaction2 reads only those); warn
    about every video whose folder holds another number (fewer: the folder's count is used)."""
    listed = index["listed_frames"].astype(int)
    extracted = index["n_frames"] > 0
    more = extracted & (index["n_frames"] > listed)
    fewer = extracted & (index["n_frames"] < listed)
    if not (more.any() or fewer.any()):
        return
    examples = [f"{r.class_name}/{r.video}: total_frames {int(r.listed_frames)} in the list, {int(r.n_frames)} "
                f"img_ files in {r.frames_path}" for r in index[more | fewer].head(3).itertuples()]
    warnings.warn(
        f"{int((more | fewer).sum())} of {int(extracted.sum())} extracted videos of the mmaction2 lists in "
        f"{lists_folder} hold another number of frames than their total_frames ({int(more.sum())} more: "
        f"only the first total_frames are used, as mmaction2 does; {int(fewer.sum())} fewer: the frames that "
        f"are there are used); e.g. " + "; ".join(examples), stacklevel=3)
    index.loc[more, "n_frames"] = listed[more]
    index.loc[more, "n_flows"] = np.minimum(index.loc[more, "n_flows"], listed[more] - 1).clip(lower=0)


def unlisted_class_folders(videos_dir, classes) -> list[str]:
    """Sub-folders of ``videos_dir`` that are not among ``classes``, as ``"name (N files)"``, sorted."""
    found = []
    try:
        entries = sorted(os.scandir(videos_dir), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in set(classes):
            n_files = sum(1 for name in file_names(Path(entry.path)) if not name.startswith("."))
            found.append(f"{entry.name}/ ({n_files} files)")
    return found


# --------------------------------------------------------------------------------------
# Which videos a stream can use
# --------------------------------------------------------------------------------------
NOT_EXTRACTED = "not extracted"   # on disk, no frames yet: running the extraction fixes it
UNUSABLE = "unusable"             # not on disk, extraction failed, or too short: left out and counted


class UsableVideos(NamedTuple):
    """What :func:`usable_videos` returns."""

    rows: pd.DataFrame        # the usable rows of the index (its own row labels kept)
    excluded: pd.DataFrame    # class_name, video, subset, status, reason: one row per video left out
    message: str              # one line, or a list of the videos left out and why


def usable_videos(index: pd.DataFrame, stack_length: int | None = None, *, frames_dir=None,
                  allow_not_extracted: bool = False, min_frames: int | None = None) -> UsableVideos:
    """The rows of ``index`` a stream can use, and the others with the reason, video by video.

    A video is usable when its frames are extracted and, given a ``stack_length`` L (the
    temporal stream; both streams at test time, where the RGB frame sits at a stack's start),
    when it has at least L flows, i.e. L + 1 frames. ``stack_length=None``: one frame is enough
    (training the spatial stream); ``min_frames`` asks for that many frames (streams that read frames
    only, such as SG3Is, at test time). Videos left out are either ``NOT_EXTRACTED`` (the video is
    there, its frames are not: raises FileNotFoundError naming them, since the extraction was
    not run or not finished, unless ``allow_not_extracted``) or ``UNUSABLE``: not on disk
    (``has_video`` False), listed in ``<frames_dir>/extraction_failures.csv`` (the reason is
    taken from there), or too short. ``frames_dir`` defaults to the folder above the
    ``frames_path`` of the rows.
    """
    if frames_dir is None and len(index):
        frames_dir = Path(index["frames_path"].iloc[0]).parent.parent
    failed = read_failures(frames_dir) if frames_dir is not None else {}
    has_video = index["has_video"] if "has_video" in index else pd.Series(True, index=index.index)
    subset = index["subset"] if "subset" in index else pd.Series("", index=index.index)
    status, reasons = [], []
    for row, present in zip(index.itertuples(), has_video):
        n_frames, n_flows = int(row.n_frames), int(row.n_flows)
        if n_frames < 1 and (row.class_name, row.video) in failed:
            status.append(UNUSABLE)
            reasons.append(f"extraction failed: {failed[row.class_name, row.video]}")
        elif n_frames < 1 and not present:
            status.append(UNUSABLE)
            where = Path(row.video_path).parent if "video_path" in index else f"videos/{row.class_name}/"
            if "video_path" in index and not Path(row.video_path).parent.parent.is_dir():   # frames-only dataset
                reasons.append(f"no frames folder in {Path(row.frames_path).parent} (and no videos folder "
                               "to extract it from)")
            else:
                reasons.append(f"video file not found in {where}")
        elif n_frames < 1:
            status.append(NOT_EXTRACTED)
            reasons.append("not extracted yet")
        elif min_frames is not None and n_frames < min_frames:
            status.append(UNUSABLE)
            reasons.append(f"too short: {n_frames} frames; {min_frames} are needed")
        elif stack_length is not None and n_flows < stack_length:
            status.append(UNUSABLE)
            reasons.append(f"too short: {n_frames} frames, {n_flows} flows; a stack of L = {stack_length} "
                           f"flows needs {stack_length + 1} frames")
        else:
            status.append(None)
            reasons.append(None)
    left_out = pd.Series([s is not None for s in status], index=index.index, dtype=bool)
    excluded = pd.DataFrame({"class_name": index["class_name"], "video": index["video"], "subset": subset,
                             "status": status, "reason": reasons})[left_out].reset_index(drop=True)
    message = _excluded_message(excluded, index["class_name"].value_counts(), stack_length)
    not_extracted = excluded[excluded["status"] == NOT_EXTRACTED]
    if len(not_extracted) and not allow_not_extracted:
        raise FileNotFoundError(f"{message}\nrun the extraction first (notebook 01, or python -m utils.extract "
                                f"--dataset ...): {len(not_extracted)} video(s) are on disk but have no frames "
                                f"in {frames_dir}")
    return UsableVideos(index[~left_out], excluded, message)


def _excluded_message(excluded: pd.DataFrame, class_sizes: pd.Series, stack_length: int | None,
                      max_listed: int = 20) -> str:
    """One line when nothing is left out; else the counts, whole classes left out, and each other video."""
    n_total = int(class_sizes.sum())
    if excluded.empty:
        needs = f" (at least L + 1 = {stack_length + 1} frames)" if stack_length is not None else ""
        return f"all {n_total} videos are extracted and usable{needs}"
    counts = ", ".join(f"{n} {status}" for status, n in excluded["status"].value_counts().items())
    lines = [f"{len(excluded)} of {n_total} videos left out ({counts}):"]
    whole = [c for c, group in excluded.groupby("class_name")
             if len(group) == class_sizes[c] and group["reason"].nunique() == 1]
    lines += [f"  class {c}: all {class_sizes[c]} videos, "
              f"{excluded.loc[excluded.class_name == c, 'reason'].iloc[0]}" for c in whole]
    single = excluded[~excluded["class_name"].isin(whole)]
    lines += [f"  {r.class_name}/{r.video}: {r.reason}" for r in single.head(max_listed).itertuples()]
    if len(single) > max_listed:
        lines.append(f"  ... and {len(single) - max_listed} more (all are in the `.excluded` table)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Summaries for exploration
# --------------------------------------------------------------------------------------
def split_table(index: pd.DataFrame) -> pd.DataFrame:
    """Clips per official split and role: rows split1..3, columns train / test / unused / total."""
    rows = {f"split{s}": index[f"split{s}"].value_counts() for s in SPLITS}
    table = pd.DataFrame(rows).T.reindex(columns=["train", "test", "unused"]).fillna(0).astype(int)
    table["total"] = table.sum(axis=1)
    return table


def summary_table(index: pd.DataFrame) -> pd.DataFrame:
    """Clips per class and subset (train / val / test / unused) for the configured split, plus a total row."""
    table = pd.crosstab(index["class_name"], index["subset"])
    table = table.reindex(columns=["train", "val", "test", "unused"], fill_value=0)
    table["sources"] = index.groupby("class_name")["source"].nunique()
    table.loc["total"] = table.sum()
    table.loc["total", "sources"] = index["source"].map(source_group).nunique()
    return table


def meta_counts(index: pd.DataFrame, column: str) -> pd.Series:
    """Clips per value of one meta column, in the order of the code table (numbers ascending)."""
    counts = index[column].value_counts()
    order = {"body_part": BODY_PART, "camera_motion": CAMERA_MOTION,
             "viewpoint": VIEWPOINT, "quality": QUALITY}.get(column)
    if order is None:
        return counts.sort_index()
    return counts.reindex([v for v in order.values() if v in counts.index])


def video_metadata(video_path) -> dict:
    """Frame count, fps, duration (s) and size from OpenCV's container metadata (no decoding).

    OpenCV may report one frame more than it can decode for HMDB51's AVI files.
    """
    import cv2

    capture = cv2.VideoCapture(str(video_path))
    try:
        if not capture.isOpened():
            return {"frames": 0, "fps": float("nan"), "seconds": float("nan"), "width": 0, "height": 0}
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or float("nan")
        return {
            "frames": frames,
            "fps": fps,
            "seconds": frames / fps if fps == fps and fps > 0 else float("nan"),
            "width": int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        }
    finally:
        capture.release()


def clip_lengths(index: pd.DataFrame, max_videos: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Per-video frames, fps, seconds, width, height (OpenCV metadata) for videos on disk.

    ``max_videos`` samples that many videos (deterministically) to keep it quick on HMDB51.
    """
    present = index[index["has_video"]]
    if max_videos is not None and len(present) > max_videos:
        present = present.sample(n=max_videos, random_state=seed)
    rows = [{"video": v, "class_name": c, **video_metadata(p)}
            for v, c, p in zip(present["video"], present["class_name"], present["video_path"])]
    return pd.DataFrame(rows, columns=["video", "class_name", "frames", "fps", "seconds", "width", "height"])


def read_frame(video_path, position: float = 0.5):
    """One RGB frame (uint8 HxWx3) at a relative position in the video, or None if unreadable."""
    import cv2

    capture = cv2.VideoCapture(str(video_path))
    try:
        n = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if n > 1:
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(position * (n - 2)))
        ok, frame = capture.read()
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None
    finally:
        capture.release()
