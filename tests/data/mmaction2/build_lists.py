"""How the ucf101_*_split_*_rawframes.txt lists of this folder were made: by mmaction2's own code.

    python tests/data/mmaction2/build_lists.py PATH/TO/mmaction2      # a checkout (commit 4d6c934 was used)

It lays out, in a temporary folder, what mmaction2's UCF101 tools expect (tools/data/ucf101/README.md):
``data/ucf101/annotations/`` with the real ``classInd.txt`` (tests/data/ucf101_splits) and the lines of
the real ``trainlist0k.txt`` / ``testlist0k.txt`` for the clips in CLIPS, and ``data/ucf101/rawframes/
<Class>/<clip>/`` holding ``img_00001.jpg ...`` and ``x_00001.jpg``/``y_00001.jpg ...`` made by
:func:`write_rawframes` from mmaction2's ``tests/data/imgs`` (copied in imgs/ here). Then it runs what
``tools/data/ucf101/generate_rawframes_filelist.sh`` runs, ``build_file_list.py ucf101
data/ucf101/rawframes/ --level 2 --format rawframes --shuffle`` (with ``--flow-x-prefix x_
--flow-y-prefix y_``, the names of these flow files), with Python's ``random`` seeded 0, calling
mmaction2's ``parse_directory``, ``parse_ucf101_splits`` and ``build_file_list`` (the last one taken from
the script's source, which otherwise needs mmengine only to seed), and copies the six lists here.
tests/test_mmaction2_folder.py rebuilds the same rawframes with :func:`write_rawframes`.
"""
from __future__ import annotations

import ast
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
UCF101_SPLITS = HERE.parent / "ucf101_splits"
CLIPS = {f"{c}/v_{c}_g{g:02d}_c01": n for c in ("ApplyEyeMakeup", "HammerThrow", "YoYo")
         for g, n in ((1, 12), (8, 13), (15, 14), (22, 12))}
"""``<Class>/<clip>``: number of frames (flows: one fewer). Classes 1, 36 and 101 of classInd.txt."""


def write_rawframes(folder: Path, n_frames: int, imgs: Path = HERE / "imgs") -> None:
    """``img_00001.jpg .. img_<n>.jpg`` and ``x_/y_00001.jpg .. <n-1>``: copies of mmaction2's 10 frames and
    5 flows, taken in turn (frame i is ``img_{(i-1) % 10 + 1}``, flow i is ``x_/y_{(i-1) % 5 + 1}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n_frames + 1):
        shutil.copyfile(imgs / f"img_{(i - 1) % 10 + 1:05d}.jpg", folder / f"img_{i:05d}.jpg")
        if i < n_frames:
            for axis in "xy":
                shutil.copyfile(imgs / f"{axis}_{(i - 1) % 5 + 1:05d}.jpg", folder / f"{axis}_{i:05d}.jpg")


def main(mmaction2: Path) -> None:
    sys.path.insert(0, str(mmaction2))
    from tools.data.parse_file_list import parse_directory, parse_ucf101_splits

    source = (mmaction2 / "tools/data/build_file_list.py").read_text()
    function = next(node for node in ast.parse(source).body
                    if isinstance(node, ast.FunctionDef) and node.name == "build_file_list")
    namespace = {"random": random}
    exec(compile(ast.Module([function], []), "build_file_list.py", "exec"), namespace)
    build_file_list = namespace["build_file_list"]

    wanted = {f"{clip}.avi" for clip in CLIPS}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            annotations = Path("data/ucf101/annotations")
            annotations.mkdir(parents=True)
            shutil.copy(UCF101_SPLITS / "classInd.txt", annotations / "classInd.txt")
            for kind in ("trainlist", "testlist"):
                for k in (1, 2, 3):
                    lines = (UCF101_SPLITS / f"{kind}0{k}.txt").read_bytes().decode().splitlines(keepends=True)
                    (annotations / f"{kind}0{k}.txt").write_text(
                        "".join(line for line in lines if line.split()[0] in wanted), newline="")
            for clip, n_frames in CLIPS.items():
                write_rawframes(Path("data/ucf101/rawframes") / clip, n_frames)
            random.seed(0)
            frame_info = parse_directory("data/ucf101/rawframes/", rgb_prefix="img_", flow_x_prefix="x_",
                                         flow_y_prefix="y_", level=2)
            for i, split in enumerate(parse_ucf101_splits(2)):
                (train, val), _ = build_file_list(split, frame_info, shuffle=True)
                for subset, lines in (("train", train), ("val", val)):
                    (HERE / f"ucf101_{subset}_split_{i + 1}_rawframes.txt").write_text("".join(lines))
        finally:
            os.chdir(cwd)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
