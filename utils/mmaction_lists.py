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
* the label is 0-based: UCF101's ``classInd.txt`` index - 1, HMDB51's sorted class list;
* ``val`` is the official **test** split of split k (``build_file_list`` writes ``splits[1]``,
  the test part, to the val file, and the configs test on it); there is no validation subset;
* videos without extracted frames are left out, as ``build_file_list`` does.

:func:`write_lists` writes them next to ``rawframes/`` (mmaction2's place); the lists of a class
subset or of frames resampled to a fixed fps (``cfg.variant``, e.g. ``_12cls-1a2b3c``) go to their
own folder ``lists_<variant>/``, named ``<dataset><variant>_...``, with the subset's labels 0 .. k-1
(those of the run's index, its models and its score files), so they never replace the full lists.
:func:`utils.split_formats.load_list_splits` reads such files, in ``splits/`` or in the dataset
folder, as the split table of :func:`utils.dataset.load_splits`, so frames and lists made with
mmaction2's tools (``build_rawframes.py``, ``build_file_list.py``) run through these notebooks.

    python -m utils.mmaction_lists --dataset hmdb51        # data/hmdb51/hmdb51_*_split_*_rawframes.txt
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import pandas as pd

from .config import Config
from .dataset import build_index
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


def write_lists(cfg, index: pd.DataFrame | None = None, out_dir=None, dataset_name: str | None = None) -> dict:
    """Write ``<dataset>_{train,val}_split_{1,2,3}_rawframes.txt`` for the extracted videos of ``cfg``.

    ``out_dir`` defaults to the dataset folder (next to ``rawframes/``, where mmaction2's configs
    look), or ``lists_<variant>/`` in it for a class subset or a fixed fps; ``dataset_name`` to
    ``cfg.dataset_name`` plus that variant. Each file is written to a temporary name and
    renamed. Returns ``{"files": [paths], "videos": n listed, "not_extracted": n left out}``.
    """
    if index is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # videos missing on disk: the lists need frames only
            index = build_index(cfg)
    variant = getattr(cfg, "variant", "")
    if out_dir is None:
        out_dir = Path(cfg.data_root) / (f"lists{variant}" if variant else "")
    out_dir = Path(out_dir)
    name = dataset_name or cfg.dataset_name + variant
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
    parser = argparse.ArgumentParser(prog="python -m utils.mmaction_lists",
                                     description="Write mmaction2 rawframe lists for a dataset extracted here.")
    parser.add_argument("--dataset", required=True, help="demo | hmdb51 | PATH of a dataset folder")
    parser.add_argument("--out", type=Path, help="folder for the list files (default: the dataset folder)")
    parser.add_argument("--classes", help="a class subset: stanford40, a file of names, or names separated by commas")
    parser.add_argument("--fps", type=int, help="the frames resampled to this rate (rawframes_<fps>fps/)")
    args = parser.parse_args(argv)
    try:
        cfg = Config(dataset=args.dataset, classes=args.classes, fps=args.fps)
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
