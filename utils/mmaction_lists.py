"""mmaction2's rawframe list files, both ways: write them for mmaction2, read them as a dataset's splits.

mmaction2's ``RawframeDataset`` takes an annotation file whose lines are "the directory to frames
of a video, total frames of the video and the label of a video, which are split with a
whitespace" (``mmaction/datasets/rawframe_dataset.py``; docs: user_guides/prepare_dataset.md,
"rawframe annotation")::

    brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0 408 0

Its ``tools/data/build_file_list.py --format rawframes --level 2`` writes them as
``data/<dataset>/<dataset>_{train,val}_split_{1,2,3}_rawframes.txt``, and its HMDB51 and UCF101
configs read them with ``data_root = 'data/<dataset>/rawframes'``. So:

* the folder is ``<class>/<video>``, relative to the ``rawframes/`` folder;
* ``total_frames`` is the number of ``img_*.jpg`` in it (the RGB list; mmaction2's flow configs
  use the same file);
* the label is 0-based: UCF101's ``classInd.txt`` index - 1, HMDB51's sorted class list;
* ``val`` is the official **test** split of split k (``build_file_list`` writes ``splits[1]``,
  the test part, to the val file, and the configs test on it); there is no validation subset;
* videos without extracted frames are left out, as ``build_file_list`` does.

:func:`write_lists` writes them next to ``rawframes/`` (mmaction2's place); :func:`load_list_splits`
reads such files, in ``splits/`` or in the dataset folder, as the split table of
:func:`utils.dataset.load_splits`, so frames and lists made with mmaction2's tools
(``build_rawframes.py``, ``build_file_list.py``) run through these notebooks.

    python -m utils.mmaction_lists --dataset hmdb51        # data/hmdb51/hmdb51_*_split_*_rawframes.txt
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pandas as pd

SPLITS = (1, 2, 3)
SUBSET_ROLES = {"train": "train", "val": "test"}   # list subset -> role in the split table
_LIST_FILE = re.compile(r"^(?P<dataset>.+)_(?P<subset>train|val)_split_(?P<split>\d+)_rawframes\.txt$")


def list_file_name(dataset_name: str, subset: str, split: int) -> str:
    """``<dataset>_<train|val>_split_<k>_rawframes.txt``, mmaction2's name."""
    return f"{dataset_name}_{subset}_split_{split}_rawframes.txt"


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
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
    """``splits_dir`` or the dataset folder above it, whichever holds mmaction2 list files first."""
    splits_dir = Path(splits_dir)
    for folder in (splits_dir, splits_dir.parent):
        if find_lists(folder):
            return folder
    return None


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
            if folder.strip("/").count("/") != 1:
                raise ValueError(f"{where}: the folder must be '<class>/<video>' under rawframes/ "
                                 "(a list built with --level 1 has no class folder)")
            if not (frames_text.isdigit() and label_text.isdigit()):
                raise ValueError(f"{where}: total_frames and label must be non-negative integers")
            class_name, video = folder.strip("/").split("/")
            if folder in seen:
                raise ValueError(f"{where}: {folder!r} already listed on line {seen[folder]}")
            seen[folder] = line_no
            entries.append((class_name, video, int(frames_text), int(label_text), line_no))
    if not entries:
        raise ValueError(f"list file is empty: {path}")
    return entries


def load_list_splits(splits_dir) -> pd.DataFrame:
    """mmaction2 rawframe lists (see :func:`find_list_folder`) as the split table of ``utils.dataset``.

    A video is "train" in split k when the train list of split k has it, "test" when the val list
    has it, "unused" otherwise. Each class folder must carry one label and each label one class;
    the labels give the class order (``table.attrs["class_names"]``).
    """
    folder = find_list_folder(splits_dir)
    if folder is None:
        raise FileNotFoundError(f"no <dataset>_{{train,val}}_split_<k>_rawframes.txt in {splits_dir} "
                                f"or {Path(splits_dir).parent}")
    lists = find_lists(folder)
    rows: dict[str, dict] = {}
    label_of: dict[str, tuple[int, str]] = {}   # class -> (label, where)
    class_of: dict[int, str] = {}
    for (subset, split), path in sorted(lists.items(), key=lambda item: (item[0][1], item[0][0])):
        for class_name, video, _, label, line_no in read_list(path):
            where = f"{path}, line {line_no}"
            if class_name in label_of and label_of[class_name][0] != label:
                raise ValueError(f"{where}: class {class_name!r} has label {label} here but "
                                 f"{label_of[class_name][0]} at {label_of[class_name][1]}")
            if class_of.setdefault(label, class_name) != class_name:
                raise ValueError(f"{where}: label {label} is class {class_name!r} here but "
                                 f"{class_of[label]!r} elsewhere")
            label_of.setdefault(class_name, (label, where))
            row = rows.setdefault(video, {"class_name": class_name, "filename": f"{video}.avi", "video": video,
                                          **{f"split{s}": "unused" for s in SPLITS}})
            if row["class_name"] != class_name:
                raise ValueError(f"{where}: video {video!r} is under class {class_name!r} here and "
                                 f"under {row['class_name']!r} elsewhere")
            if row[f"split{split}"] != "unused":
                raise ValueError(f"{where}: video {class_name}/{video} is in both lists of split {split}")
            row[f"split{split}"] = SUBSET_ROLES[subset]
    classes = [class_of[label] for label in sorted(class_of)]
    order = {name: i for i, name in enumerate(classes)}
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: (order[r["class_name"]], r["video"])),
                         columns=["class_name", "filename", "video", "split1", "split2", "split3"])
    table.attrs["class_names"] = classes
    return table


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def list_lines(index: pd.DataFrame, split: int, subset: str) -> list[str]:
    """The lines of one list file from a dataset index: extracted videos of that split and role."""
    role = SUBSET_ROLES[subset]
    rows = index[(index[f"split{split}"] == role) & (index["n_frames"] > 0)]
    lines = []
    for class_name, video, n_frames, label in zip(rows["class_name"], rows["video"], rows["n_frames"], rows["label"]):
        folder = f"{class_name}/{video}"
        if any(c.isspace() for c in folder):
            raise ValueError(f"{folder!r} contains white space, which mmaction2's list format cannot hold")
        lines.append(f"{folder} {int(n_frames)} {int(label)}\n")
    return lines


def write_lists(cfg, index: pd.DataFrame | None = None, out_dir=None, dataset_name: str | None = None) -> dict:
    """Write ``<dataset>_{train,val}_split_{1,2,3}_rawframes.txt`` for the extracted videos of ``cfg``.

    ``out_dir`` defaults to the dataset folder (next to ``rawframes/``, where mmaction2's configs
    look); ``dataset_name`` to ``cfg.dataset_name``. Each file is written to a temporary name and
    renamed. Returns ``{"files": [paths], "videos": n listed, "not_extracted": n left out}``.
    """
    if index is None:
        import warnings

        from .dataset import build_index
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # videos missing on disk: the lists need frames only
            index = build_index(cfg)
    out_dir = Path(out_dir) if out_dir is not None else Path(cfg.data_root)
    name = dataset_name or cfg.dataset_name
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for split in SPLITS:
        for subset in SUBSET_ROLES:
            path = out_dir / list_file_name(name, subset, split)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                tmp.write_text("".join(list_lines(index, split, subset)), encoding="utf-8")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            files.append(path)
    used = index[index[[f"split{s}" for s in SPLITS]].ne("unused").any(axis=1)]
    return {"files": files, "videos": int((used["n_frames"] > 0).sum()),
            "not_extracted": int((used["n_frames"] <= 0).sum())}


def main(argv=None) -> int:
    from .config import Config

    parser = argparse.ArgumentParser(prog="python -m utils.mmaction_lists",
                                     description="Write mmaction2 rawframe lists for a dataset extracted here.")
    parser.add_argument("--dataset", required=True, help="demo | hmdb51 | PATH of a dataset folder")
    parser.add_argument("--out", type=Path, help="folder for the list files (default: the dataset folder)")
    args = parser.parse_args(argv)
    try:
        cfg = Config(dataset=args.dataset)
        result = write_lists(cfg, out_dir=args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in result["files"]:
        print(path)
    print(f"{result['videos']} videos listed; {result['not_extracted']} not extracted under {cfg.frames_dir} "
          "(left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
