"""Write mmaction2's rawframe list files for a dataset extracted here (reading them: utils.split_formats).

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
* the label is the dataset's own number, 0-based: UCF101's ``classInd.txt`` index - 1 (whichever
  classes are present), an mmaction2 list's label as it was read, HMDB51's sorted class list;
* ``val`` is the official **test** split of split k (``build_file_list`` writes ``splits[1]``,
  the test part, to the val file, and the configs test on it); there is no validation subset;
* videos without extracted frames are left out, as ``build_file_list`` does.

:func:`write_lists` writes them next to ``rawframes/`` (mmaction2's place), or into ``out_dir``. It
never overwrites a file it did not write (it keeps the SHA-256 of what it wrote in
``.mmaction_lists.json`` there; a file with the content it would write is left alone) and never
writes beside the lists of another dataset name (the folder would then hold lists of two datasets,
which the index refuses): it refuses before writing anything, and ``--out`` writes elsewhere. Only
the splits that list an extracted video are written.
The lists of a class subset or of frames resampled to a fixed fps (``cfg.variant``, e.g.
``_12cls-1a2b3c``) go to their own folder ``lists_<variant>/``, named ``<dataset><variant>_...``, with
the subset's labels 0 .. k-1 (those of the run's index, its models and its score files), so they never
replace the full lists.
:func:`utils.split_formats.load_list_splits` reads such files, in ``splits/`` or in the dataset
folder, as the split table of :func:`utils.dataset.load_splits`, so frames and lists made with
mmaction2's tools (``build_rawframes.py``, ``build_file_list.py``) run through these notebooks.

    python -m utils.mmaction_lists --dataset hmdb51        # data/hmdb51/hmdb51_*_split_*_rawframes.txt
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import pandas as pd

from . import split_formats
from .config import Config
from .dataset import build_index
from .rawframes import file_names, write_atomically
from .split_formats import SPLITS, SUBSET_ROLES, list_file_name

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


WRITTEN_RECORD = ".mmaction_lists.json"
"""In the folder the lists go to: ``{file name: sha256 of the text written}``, what this module wrote."""


class ListsNotWritten(ValueError):
    """Writing the lists would overwrite files this module did not write, or mix two datasets' lists."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_record(out_dir: Path) -> dict[str, str]:
    try:
        record = json.loads((out_dir / WRITTEN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def plan_lists(out_dir: Path, texts: dict[str, str]) -> list[str]:
    """The names of ``texts`` (file name -> content) to write in ``out_dir``, or :class:`ListsNotWritten`.

    A file that is there with the same content is left alone; one this module wrote (its SHA-256 is
    in ``.mmaction_lists.json`` and still matches) is replaced; any other is refused, and so are
    mmaction2 lists of another dataset name in ``out_dir``.
    """
    names = {split_formats.parse_list_file_name(n)[0] for n in texts}
    others = sorted(n for n in file_names(out_dir) if (parsed := split_formats.parse_list_file_name(n))
                    and parsed[0] not in names)
    if others:
        raise ListsNotWritten(
            f"{out_dir} holds mmaction2 lists of another dataset name ({', '.join(others[:3])}"
            f"{' ...' if len(others) > 3 else ''}): lists of {'/'.join(sorted(names))} beside them would make "
            "the folder hold two datasets' lists, which no reader can tell apart; write them elsewhere "
            "with --out DIR (or move those lists away)")
    record, to_write, foreign = _read_record(out_dir), [], []
    for name, text in texts.items():
        path = out_dir / name
        if not path.exists():
            to_write.append(name)
            continue
        try:
            found = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            found = None
        if found == text:
            continue
        if found is not None and record.get(name) == _sha256(found):
            to_write.append(name)
        else:
            foreign.append(name)
    if foreign:
        raise ListsNotWritten(
            f"{out_dir} already holds {', '.join(foreign)}, not written by python -m utils.mmaction_lists "
            f"(or changed since), with other lines than it would write: not overwritten (they may be the "
            f"lists this dataset is read from, in their own order). Write them elsewhere with --out DIR")
    return to_write


def write_lists(cfg, index: pd.DataFrame | None = None, out_dir=None, dataset_name: str | None = None) -> dict:
    """Write ``<dataset>_{train,val}_split_<k>_rawframes.txt`` for the extracted videos of ``cfg``.

    ``out_dir`` defaults to the dataset folder (next to ``rawframes/``, where mmaction2's configs
    look), or ``lists_<variant>/`` in it for a class subset or a fixed fps; ``dataset_name`` to
    ``cfg.dataset_name`` plus that variant. Splits without any extracted video are not
    written. Nothing is written when a file would overwrite one this module did not write, or when
    ``out_dir`` holds lists of another dataset name (:func:`plan_lists`: :class:`ListsNotWritten`).
    Each file is written to a temporary name and renamed. Returns ``{"files": [paths of the lists,
    written now or already identical], "written": [paths written now], "videos": n listed,
    "not_extracted": n left out}``.
    """
    if index is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # videos missing on disk: the lists need frames only
            index = build_index(cfg)
    variant = getattr(cfg, "variant", "")
    out_dir = Path(out_dir) if out_dir is not None else Path(cfg.data_root) / (f"lists{variant}" if variant else "")
    name = dataset_name or cfg.dataset_name + variant
    texts = {}
    for split in SPLITS:
        lines = {subset: list_lines(index, split, subset) for subset in SUBSET_ROLES}
        if any(lines.values()):
            texts.update({list_file_name(name, subset, split): "".join(lines[subset]) for subset in SUBSET_ROLES})
    if not texts:
        raise ValueError(f"no video of {cfg.data_root} is extracted under {cfg.frames_dir}: no list to write")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} is a file; give a folder")
    to_write = plan_lists(out_dir, texts) if out_dir.is_dir() else list(texts)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = _read_record(out_dir)
    for file_name in to_write:
        write_atomically(out_dir / file_name, texts[file_name])
        record[file_name] = _sha256(texts[file_name])
    if to_write:
        write_atomically(out_dir / WRITTEN_RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    used = index[index[[f"split{s}" for s in SPLITS]].ne("unused").any(axis=1)]
    return {"files": [out_dir / n for n in texts], "written": [out_dir / n for n in to_write],
            "videos": int((used["n_frames"] > 0).sum()), "not_extracted": int((used["n_frames"] <= 0).sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.mmaction_lists",
                                     description="Write mmaction2 rawframe lists for a dataset extracted here.")
    parser.add_argument("--dataset", required=True, help="demo | hmdb51 | PATH of a dataset folder")
    parser.add_argument("--out", type=Path, help="folder for the list files (default: the dataset folder); "
                        "files this tool did not write are never overwritten")
    parser.add_argument("--classes", help="a class subset: stanford40, a file of names, or names separated by commas")
    parser.add_argument("--fps", type=int, help="the frames resampled to this rate (rawframes_<fps>fps/)")
    args = parser.parse_args(argv)
    try:
        cfg = Config(dataset=args.dataset, classes=args.classes, fps=args.fps)
        result = write_lists(cfg, out_dir=args.out)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in result["files"]:
        print(path if path in result["written"] else f"{path} (unchanged)")
    print(f"{result['videos']} videos listed; {result['not_extracted']} not extracted under {cfg.frames_dir} "
          "(left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
