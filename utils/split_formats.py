"""Split definitions besides HMDB51's: UCF101's official lists and mmaction2's list files.

:mod:`utils.dataset` reads HMDB51's ``<class>_test_split<k>.txt`` files itself; a ``splits/``
folder in another format is read here into the same table (``class_name``, ``filename``,
``video``, ``split1`` .. ``split3`` = "train" / "test" / "unused"), so nothing downstream knows
which dataset it reads. :func:`detect_format` tells the formats apart by their file names.

UCF101 (Soomro et al. 2012), the files of ``UCF101TrainTestSplits-RecognitionTask.zip``
(folder ``ucfTrainTestlist/``), unchanged::

    classInd.txt        1 ApplyEyeMakeup                                   class index, 1-based
    trainlist0k.txt     ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1      k = 1, 2, 3
    testlist0k.txt      ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi        (no class index)

Lines end in CRLF. Labels follow ``classInd.txt`` (label = index - 1, as mmaction2's
``parse_ucf101_splits``), which is *not* Python's sorted order (``Hammering`` comes before
``HammerThrow``). A clip name ``v_<Class>_g<GG>_c<CC>`` says its group ``GG`` (01-25): the clips
of a group come from one long video, the same actors and background, and a group number
means the same recording session in every class; the official splits hold out groups 1-7,
8-14 and 15-21 as test. So the group is the clip's *source* (``"g08"``, shared across classes)
and the validation carve-out of :func:`utils.dataset.carve_validation` moves whole groups.
(The folder and the file name may spell a class differently: ``HandstandPushups/
v_HandStandPushups_g01_c01.avi``; the folder is the class.)

mmaction2's ``<dataset>_{train,val}_split_{1,2,3}_rawframes.txt`` lists (lines ``<class>/<video>
<total_frames> <label>``, the format of mmaction2's ``RawframeDataset``; ``val`` is the official test
split) are read in ``splits/``, in the dataset folder (where mmaction2's ``build_file_list.py``
writes them) or in ``annotations/``; :mod:`utils.mmaction_lists` writes them.

Where: the official files (HMDB51's or UCF101's) are looked for in ``splits/`` and then in
``annotations/`` (mmaction2's ``download_annotations.sh`` puts them there), and win over
mmaction2 lists (:func:`locate`).

Labels are the dataset's own numbers: UCF101's ``classInd.txt`` index - 1, a list's label as it
is written. The class list (``table.attrs["class_names"]``) is indexed by label, so it is as long
as the labels the dataset defines: all of ``classInd.txt`` (101 classes for UCF101, whichever
clips the lists hold), and labels 0 .. the largest label of mmaction2 lists, where a number no
line uses gets the name ``(label k)`` (:func:`unnamed_label`). The networks get that many outputs.

No name in a list may lead out of the dataset's folders: a class or video that is empty, ``.``
or ``..``, or holds a ``/`` (an absolute path) or a ``\\``, is refused with the file and line
(:func:`check_name`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

SPLITS = (1, 2, 3)
FORMATS = ("hmdb51", "ucf101", "mmaction2")
VIDEO_EXTENSIONS = (".avi", ".mp4")
UCF101_CLASS_INDEX = "classInd.txt"
_HMDB51_FILE = re.compile(r"^.+_test_split\d+\.txt$")
_UCF101_LIST = re.compile(r"^(?:train|test)list\d+\.txt$", re.IGNORECASE)
_UCF101_NAME = re.compile(r"^v_(?P<name>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
SUBSET_ROLES = {"train": "train", "val": "test"}   # mmaction2 list subset -> role in the split table
MAX_LABEL = 99_999     # labels of mmaction2 lists (Kinetics-700 has 700 classes)
_LIST_FILE = re.compile(r"^(?P<dataset>.+)_(?P<subset>train|val)_split_(?P<split>\d+)_rawframes\.txt$")


def ucf101_list_name(kind: str, split: int) -> str:
    """``trainlist01.txt`` / ``testlist03.txt``."""
    return f"{kind}list{split:02d}.txt"


def _file_names(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [e.name for e in entries if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []


ANNOTATIONS = "annotations"   # mmaction2's folder for the official split files, beside splits/
WHAT_IS_LOOKED_FOR = (
    "HMDB51's <class>_test_split<k>.txt files or UCF101's classInd.txt with trainlist0<k>.txt / "
    "testlist0<k>.txt (in splits/ or annotations/), or mmaction2's "
    "<dataset>_{train,val}_split_<k>_rawframes.txt lists (in splits/, the dataset folder or annotations/)")


def _official_format(folder: Path) -> str | None:
    """``"hmdb51"`` / ``"ucf101"`` when ``folder`` (HMDB51: or one sub-folder of it) holds official files."""
    names = _file_names(folder)
    if any(_HMDB51_FILE.match(n) for n in names):
        return "hmdb51"
    if any(n.casefold() == UCF101_CLASS_INDEX.casefold() or _UCF101_LIST.match(n) for n in names):
        return "ucf101"
    try:   # the official HMDB51 archive unpacks to testTrainMulti_7030_splits/
        subfolders = [e.path for e in os.scandir(folder) if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return None
    if any(_HMDB51_FILE.match(n) for sub in subfolders for n in _file_names(Path(sub))):
        return "hmdb51"
    return None


def locate(splits_dir) -> tuple[str | None, Path]:
    """``(format, folder)``: which split definition a dataset has and the folder that holds it.

    The official files first, in ``splits_dir`` and then in ``annotations/`` beside it (HMDB51's
    win when both kinds are in one folder: mmaction2's HMDB51 tools write UCF101-style lists next
    to them); then mmaction2 lists (:func:`find_list_folder`). ``(None, splits_dir)`` if none.
    """
    splits_dir = Path(splits_dir)
    for folder in (splits_dir, splits_dir.parent / ANNOTATIONS):
        fmt = _official_format(folder)
        if fmt is not None:
            return fmt, folder
    lists = find_list_folder(splits_dir)
    if lists is not None:
        return "mmaction2", lists
    return None, splits_dir


def detect_format(splits_dir) -> str:
    """``"hmdb51"``, ``"ucf101"`` or ``"mmaction2"``: which split definition the dataset of ``splits_dir``
    has (see :func:`locate`). None found is ``"hmdb51"``, whose reader then says what is missing."""
    return locate(splits_dir)[0] or "hmdb51"


def load_table(splits_dir, fmt: str) -> pd.DataFrame:
    """The split table of a non-HMDB51 format; ``table.attrs["class_names"]`` is the label order."""
    if fmt == "ucf101":
        return load_ucf101_splits(locate(splits_dir)[1])
    if fmt == "mmaction2":
        return load_list_splits(splits_dir)
    raise ValueError(f"format must be one of {FORMATS[1:]} here, got {fmt!r}")


def check_name(name: str, where: str, what: str) -> str:
    """``name`` (one class or video of a list line) if it is a plain folder name inside the dataset.

    Refused, naming ``where`` (file and line): empty, ``.`` or ``..``, or holding a ``/`` (an absolute
    path or nested folders), a ``\\`` or a NUL byte: each could read or write outside ``rawframes/``
    or ``videos/``.
    """
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        shown = "an empty name" if not name else repr(name)
        raise ValueError(f"{where}: {what} {shown} would lead outside the dataset's folders "
                         "(list files may not hold '.', '..', absolute paths or backslashes)")
    return name


def split_files(splits_dir, split: int) -> list[Path]:
    """The files that define split ``split`` of ``splits_dir``, whatever the format (for display)."""
    fmt, splits_dir = locate(splits_dir)
    if fmt == "ucf101":
        return [splits_dir / UCF101_CLASS_INDEX] + [splits_dir / ucf101_list_name(kind, split)
                                                    for kind in ("train", "test")]
    if fmt == "mmaction2":
        lists = find_lists(splits_dir)
        return [lists[key] for key in (("train", split), ("val", split)) if key in lists]
    found = sorted(p for p in (splits_dir / n for n in _file_names(splits_dir))
                   if p.name.endswith(f"_test_split{split}.txt"))
    if not found and splits_dir.is_dir():     # testTrainMulti_7030_splits/
        found = sorted(Path(e.path) / n for e in os.scandir(splits_dir) if e.is_dir()
                       for n in _file_names(Path(e.path)) if n.endswith(f"_test_split{split}.txt"))
    return found


# --------------------------------------------------------------------------------------
# UCF101
# --------------------------------------------------------------------------------------
def parse_ucf101_name(filename) -> dict | None:
    """``{"source": "g08", "clip": 1}`` for ``v_<Class>_g08_c01[.avi]``, else None."""
    stem = os.path.splitext(os.path.basename(str(filename)))[0]
    match = _UCF101_NAME.match(stem)
    if match is None:
        return None
    return {"source": f"g{int(match['group']):02d}", "clip": int(match["clip"])}


def _lines(path: Path):
    """``(line_no, stripped text)`` of the non-blank lines (UTF-8, a BOM and CRLF are fine)."""
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, line.strip()


def read_class_index(path) -> list[str]:
    """Class names of a ``classInd.txt`` in index order (lines ``<n> <Class>``, n = 1, 2, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UCF101 class index not found: {path} (from "
                                "UCF101TrainTestSplits-RecognitionTask.zip; `python -m utils.download "
                                "--dataset ucf101 --splits-only` gets it)")
    names: list[str] = []
    for line_no, text in _lines(path):
        parts = text.split()
        where = f"{path}, line {line_no}: {text!r}"
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{where}: expected '<index> <ClassName>'")
        if int(parts[0]) != len(names) + 1:
            raise ValueError(f"{where}: class indices must count 1, 2, 3, ... (expected {len(names) + 1})")
        if parts[1] in names:
            raise ValueError(f"{where}: class {parts[1]!r} already listed as {names.index(parts[1]) + 1}")
        names.append(check_name(parts[1], where, "class"))
    if not names:
        raise ValueError(f"class index is empty: {path}")
    return names


def read_ucf101_list(path, class_index: dict[str, int]) -> list[tuple[str, str, int]]:
    """``[(class_name, filename, line_no), ...]`` of a train or test list.

    Lines are ``<Class>/<clip>.avi`` with an optional class index (the train lists have one); the
    folder must be a class of ``class_index`` (name -> 1-based index) and the index must match it.
    """
    path = Path(path)
    entries: list[tuple[str, str, int]] = []
    seen: dict[str, int] = {}
    for line_no, text in _lines(path):
        parts = text.split()
        where = f"{path}, line {line_no}: {text!r}"
        if len(parts) not in (1, 2) or parts[0].count("/") != 1:
            raise ValueError(f"{where}: expected '<ClassName>/<clip>.avi' and an optional class index")
        class_name, filename = parts[0].split("/")
        check_name(class_name, where, "class")
        check_name(filename, where, "clip")
        if not filename.lower().endswith(VIDEO_EXTENSIONS):
            raise ValueError(f"{where}: video name must end in .avi or .mp4")
        if class_name not in class_index:
            raise ValueError(f"{where}: class {class_name!r} is not in {UCF101_CLASS_INDEX}")
        if len(parts) == 2 and parts[1] != str(class_index[class_name]):
            raise ValueError(f"{where}: class index {parts[1]} does not match {class_name!r}, which is "
                             f"{class_index[class_name]} in {UCF101_CLASS_INDEX}")
        if filename in seen:
            raise ValueError(f"{where}: {filename!r} already listed on line {seen[filename]}")
        seen[filename] = line_no
        entries.append((class_name, filename, line_no))
    if not entries:
        raise ValueError(f"split list is empty: {path}")
    return entries


def load_ucf101_splits(splits_dir) -> pd.DataFrame:
    """UCF101's official lists as the split table (see :func:`utils.dataset.load_splits`).

    A clip gets "train" or "test" in each split it is listed in, "unused" elsewhere. Errors
    name the file and line: a class missing from ``classInd.txt``, a wrong class index, a clip
    listed twice or in both lists of one split, or under two classes.
    """
    splits_dir = Path(splits_dir)
    classes = read_class_index(splits_dir / UCF101_CLASS_INDEX)
    class_index = {name: i + 1 for i, name in enumerate(classes)}
    paths = {(kind, k): splits_dir / ucf101_list_name(kind, k) for k in SPLITS for kind in ("train", "test")}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{splits_dir}: UCF101 split list(s) missing: {', '.join(missing)} "
                                "(all of trainlist0{1,2,3}.txt and testlist0{1,2,3}.txt are needed)")
    rows: dict[str, dict] = {}           # video stem -> row
    where: dict[tuple[str, int], str] = {}  # (stem, split) -> "file, line n"
    for (kind, k), path in paths.items():
        role = "train" if kind == "train" else "test"
        for class_name, filename, line_no in read_ucf101_list(path, class_index):
            stem = filename.rpartition(".")[0]
            row = rows.setdefault(stem, {"class_name": class_name, "filename": filename, "video": stem,
                                         **{f"split{s}": "unused" for s in SPLITS}})
            if row["class_name"] != class_name:
                raise ValueError(f"{path}, line {line_no}: clip {filename!r} is listed under class "
                                 f"{class_name!r} here and under {row['class_name']!r} elsewhere")
            if (stem, k) in where:
                raise ValueError(f"{path}, line {line_no}: clip {filename!r} is already in split {k} "
                                 f"({where[stem, k]}); a clip is either train or test")
            where[stem, k] = f"{path.name}, line {line_no}"
            row[f"split{k}"] = role
    order = {name: i for i, name in enumerate(classes)}
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: (order[r["class_name"]], r["filename"])),
                         columns=["class_name", "filename", "video", "split1", "split2", "split3"])
    table.attrs["class_names"] = list(classes)   # all of classInd.txt: label = index - 1, whichever clips are listed
    return table


# --------------------------------------------------------------------------------------
# mmaction2 rawframe lists
# --------------------------------------------------------------------------------------
def list_file_name(dataset_name: str, subset: str, split: int) -> str:
    """``<dataset>_<train|val>_split_<k>_rawframes.txt``, mmaction2's name."""
    return f"{dataset_name}_{subset}_split_{split}_rawframes.txt"


def parse_list_file_name(name: str) -> tuple[str, str, int] | None:
    """``(dataset, subset, split)`` of an mmaction2 list file name (see :func:`list_file_name`), else None."""
    match = _LIST_FILE.match(name)
    return (match["dataset"], match["subset"], int(match["split"])) if match else None


def find_lists(folder) -> dict[tuple[str, int], Path]:
    """``{("train", 1): path, ("val", 1): path, ...}`` of the list files in ``folder``.

    All must belong to one dataset name, and each split needs both its train and val file.
    """
    folder = Path(folder)
    found: dict[str, dict[tuple[str, int], Path]] = {}
    try:
        entries = [e for e in os.scandir(folder) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for entry in entries:
        match = _LIST_FILE.match(entry.name)
        if match:
            split = int(match["split"])
            if split not in SPLITS:
                raise ValueError(f"{entry.path}: split number must be 1, 2 or 3")
            found.setdefault(match["dataset"], {})[(match["subset"], split)] = Path(entry.path)
    if len(found) > 1:
        raise ValueError(f"{folder} holds mmaction2 lists of several datasets ({', '.join(sorted(found))}); "
                         "keep the lists of one dataset per folder")
    lists = next(iter(found.values()), {})
    for split in sorted({k for _, k in lists}):
        for subset in SUBSET_ROLES:
            if (subset, split) not in lists:
                other = lists[("val" if subset == "train" else "train", split)]
                raise FileNotFoundError(f"{folder}: {other.name} is there but not its {subset} list "
                                        f"(split {split} needs both the train and the val list)")
    return lists


def find_list_folder(splits_dir) -> Path | None:
    """``splits_dir``, the dataset folder above it or ``annotations/``, whichever holds mmaction2 lists first."""
    splits_dir = Path(splits_dir)
    for folder in (splits_dir, splits_dir.parent, splits_dir.parent / ANNOTATIONS):
        if find_lists(folder):
            return folder
    return None


def unnamed_label(label: int) -> str:
    """The class name of a label that mmaction2 lists leave unused: ``"(label 7)"``."""
    return f"(label {int(label)})"


def read_list(path) -> list[tuple[str, str, int, int, int]]:
    """``[(class_name, video, total_frames, label, line_no), ...]`` of one rawframe list file.

    Lines ``<class>/<video> <total_frames> <label>``; blank lines are skipped. Errors name the
    file and line: a folder without its class (a ``--level 1`` list), several labels (multi-label
    lists), numbers that are not integers, a video listed twice.
    """
    path = Path(path)
    entries = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}, line {line_no}: {line.strip()!r}"
            if len(parts) != 3:
                raise ValueError(f"{where}: expected '<class>/<video> <total_frames> <label>' "
                                 "(multi-label and offset lists are not supported)")
            folder, frames_text, label_text = parts
            if folder.startswith(("/", "\\")):
                check_name(folder, where, "folder")          # an absolute path: refused
            if folder.rstrip("/").count("/") != 1:
                raise ValueError(f"{where}: the folder must be '<class>/<video>' under rawframes/ "
                                 "(a list built with --level 1 has no class folder)")
            if not (frames_text.isdigit() and label_text.isdigit()):
                raise ValueError(f"{where}: total_frames and label must be non-negative integers")
            class_name, video = folder.rstrip("/").split("/")
            check_name(class_name, where, "class")
            check_name(video, where, "video")
            if folder in seen:
                raise ValueError(f"{where}: {folder!r} already listed on line {seen[folder]}")
            seen[folder] = line_no
            entries.append((class_name, video, int(frames_text), int(label_text), line_no))
    return entries


def load_list_splits(splits_dir) -> pd.DataFrame:
    """mmaction2 rawframe lists (see :func:`find_list_folder`) as the split table of ``utils.dataset``.

    A video is "train" in split k when the train list of split k has it, "test" when the val list
    has it, "unused" otherwise. Each class folder must carry one label and each label one class,
    and every list must give a video the same ``total_frames`` (column ``listed_frames``). The
    labels are kept as written: ``table.attrs["class_names"][label]`` is the class of a label, for
    labels 0 .. the largest one (:func:`unnamed_label` for numbers no line uses).
    """
    folder = find_list_folder(splits_dir)
    if folder is None:
        raise FileNotFoundError(f"no <dataset>_{{train,val}}_split_<k>_rawframes.txt in {splits_dir}, "
                                f"{Path(splits_dir).parent} or {Path(splits_dir).parent / ANNOTATIONS}")
    lists = find_lists(folder)
    rows: dict[str, dict] = {}
    label_of: dict[str, tuple[int, str]] = {}   # class -> (label, where)
    class_of: dict[int, str] = {}
    frames_of: dict[str, tuple[int, str]] = {}  # video -> (total_frames, where)
    for (subset, split), path in sorted(lists.items(), key=lambda item: (item[0][1], item[0][0])):
        for class_name, video, total_frames, label, line_no in read_list(path):
            where = f"{path}, line {line_no}"
            if label > MAX_LABEL:
                raise ValueError(f"{where}: label {label} is larger than {MAX_LABEL}: a network with that "
                                 "many outputs is surely not meant (labels are 0-based class numbers)")
            if class_name in label_of and label_of[class_name][0] != label:
                raise ValueError(f"{where}: class {class_name!r} has label {label} here but "
                                 f"{label_of[class_name][0]} at {label_of[class_name][1]}")
            if class_of.setdefault(label, class_name) != class_name:
                raise ValueError(f"{where}: label {label} is class {class_name!r} here but "
                                 f"{class_of[label]!r} elsewhere")
            label_of.setdefault(class_name, (label, where))
            row = rows.setdefault(video, {"class_name": class_name, "filename": f"{video}.avi", "video": video,
                                          **{f"split{s}": "unused" for s in SPLITS},
                                          "listed_frames": total_frames})
            if row["class_name"] != class_name:
                raise ValueError(f"{where}: video {video!r} is under class {class_name!r} here and "
                                 f"under {row['class_name']!r} elsewhere")
            listed, first = frames_of.setdefault(video, (total_frames, where))
            if listed != total_frames:
                raise ValueError(f"{where}: video {class_name}/{video} has total_frames {total_frames} here "
                                 f"but {listed} at {first}")
            if row[f"split{split}"] != "unused":
                raise ValueError(f"{where}: video {class_name}/{video} is in both lists of split {split}")
            row[f"split{split}"] = SUBSET_ROLES[subset]
    if not rows:
        raise ValueError(f"{folder}: the mmaction2 lists {', '.join(sorted(p.name for p in lists.values()))} "
                         "hold no video")
    classes = [class_of.get(label, unnamed_label(label)) for label in range(max(class_of) + 1)]
    clash = sorted(set(class_of.values()) & {unnamed_label(k) for k in range(len(classes)) if k not in class_of})
    if clash:
        raise ValueError(f"{folder}: a class folder is named {clash[0]!r}, the name given here to an unused label")
    order = {name: i for i, name in enumerate(classes)}
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: (order[r["class_name"]], r["video"])),
                         columns=["class_name", "filename", "video", "split1", "split2", "split3", "listed_frames"])
    table.attrs["class_names"] = classes
    return table
