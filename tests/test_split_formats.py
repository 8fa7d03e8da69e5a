"""UCF101's official lists and mmaction2's rawframe lists as a dataset's splits (utils/split_formats.py,
utils/mmaction_lists.py), on the real UCF101 lists (tests/data/ucf101_splits) and on lists made here."""
import re
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from utils import dataset, mmaction_lists, split_formats
from utils.config import Config

DATA = Path(__file__).resolve().parent / "data"
UCF101_SPLITS = DATA / "ucf101_splits"
HMDB51_SPLITS = DATA / "hmdb51_splits"
# Official sizes of UCF101's three splits (train, test), counted in the real lists.
UCF101_SIZES = {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}


def quiet_index(cfg, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return dataset.build_index(cfg, **kwargs)


def class_index_lines():
    return [line.split() for line in UCF101_SPLITS.joinpath("classInd.txt").read_text().splitlines()]


# ---------------------------------------------------------------- UCF101, the real lists
def test_ucf101_real_lists_load_as_splits():
    assert split_formats.detect_format(UCF101_SPLITS) == "ucf101"
    table = dataset.load_splits(UCF101_SPLITS)
    assert list(table.columns) == ["class_name", "filename", "video", "split1", "split2", "split3"]
    assert len(table) == 13320 and table["video"].is_unique
    for k, (n_train, n_test) in UCF101_SIZES.items():
        assert table[f"split{k}"].value_counts().to_dict() == {"train": n_train, "test": n_test}
    # labels follow classInd.txt, which is not Python's sorted order
    official = [name for _, name in class_index_lines()]
    assert table.attrs["class_names"] == official == dataset.class_names(UCF101_SPLITS)
    assert official.index("Hammering") < official.index("HammerThrow")
    assert sorted(official) != official
    # the folder is the class, even where the file name spells it differently
    odd = table[table["filename"] == "v_HandStandPushups_g08_c01.avi"]
    assert odd["class_name"].tolist() == ["HandstandPushups"]


def test_ucf101_index_groups_and_partial_copy(tmp_path):
    root = tmp_path / "ucf101"
    shutil.copytree(UCF101_SPLITS, root / "splits")
    present = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "YoYo/v_YoYo_g25_c05.avi",
               "HandstandPushups/v_HandStandPushups_g01_c01.avi"]
    for name in present:
        (root / "videos" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "videos" / name).write_bytes(b"")
    with pytest.warns(UserWarning, match="13317 of 13320 videos listed"):
        index = dataset.build_index(Config(dataset=str(root), split=1))
    indexes = {1: index, 2: quiet_index(Config(dataset=str(root), split=2)),
               3: quiet_index(Config(dataset=str(root), split=3))}
    assert index["has_video"].sum() == 3
    official = {name: int(number) - 1 for number, name in class_index_lines()}
    assert (index["label"] == index["class_name"].map(official)).all()
    assert index.loc[index["video"] == "v_HandStandPushups_g08_c01", "source"].item() == "g08"
    assert index.loc[index["video"] == "v_YoYo_g25_c05", "clip"].item() == 5
    assert index["body_part"].isna().all()
    # official test groups, and a validation carve-out by whole groups shared by every class
    for k, index_k in indexes.items():
        test_groups = set(index_k.loc[index_k["subset"] == "test", "source"])
        assert test_groups == {f"g{g:02d}" for g in range(7 * k - 6, 7 * k + 1)}
        val_groups = set(index_k.loc[index_k["subset"] == "val", "source"])
        train_groups = set(index_k.loc[index_k["subset"] == "train", "source"])
        assert val_groups and not val_groups & train_groups and not val_groups & test_groups
        per_class = index_k[index_k["subset"] == "val"].groupby("class_name")["source"].agg(frozenset)
        assert len(per_class) == 101 and per_class.nunique() == 1   # the same groups in every class
        share = (index_k["subset"] == "val").sum() / index_k["subset"].isin(["train", "val"]).sum()
        assert 0.10 < share < 0.25


def test_parse_ucf101_names():
    assert split_formats.parse_ucf101_name("v_ApplyEyeMakeup_g08_c01.avi") == {"source": "g08", "clip": 1}
    assert split_formats.parse_ucf101_name("v_Skiing_g3_c12") == {"source": "g03", "clip": 12}
    assert split_formats.parse_ucf101_name("April_09_brush_hair_u_nm_np1_ba_goo_0.avi") is None
    meta = dataset.parse_meta("v_YoYo_g25_c05.avi")
    assert meta["source"] == "g25" and meta["clip"] == 5 and meta["quality"] is None
    assert dataset.parse_meta("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "brush_hair")["source"] == "April_09"


def write_ucf101_lists(splits_dir, classes, clips, test_groups=None):
    """Official-format UCF101 lists: ``clips`` maps class -> [group numbers]; CRLF as in the real files.

    A clip of group g is test in split k when g is in ``test_groups[k]`` (default: UCF101's 1-7, 8-14, 15-21).
    """
    test_groups = test_groups or {k: range(7 * k - 6, 7 * k + 1) for k in (1, 2, 3)}
    splits_dir.mkdir(parents=True, exist_ok=True)
    (splits_dir / "classInd.txt").write_bytes(
        "".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)).encode())
    for k in (1, 2, 3):
        train, test = [], []
        for class_name, groups in clips.items():
            for g in groups:
                path = f"{class_name}/v_{class_name}_g{g:02d}_c01.avi"
                (test if g in test_groups[k] else train).append(path)
        (splits_dir / f"trainlist0{k}.txt").write_bytes("".join(
            f"{p} {classes.index(p.split('/')[0]) + 1}\r\n" for p in train).encode())
        (splits_dir / f"testlist0{k}.txt").write_bytes("".join(f"{p}\r\n" for p in test).encode())


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.joinpath("trainlist01.txt").write_text("Archery/v_Archery_g09_c01.avi 1\n"),
     r"trainlist01.txt, line 1: .*class index 1 does not match 'Archery', which is 2"),
    (lambda d: d.joinpath("testlist02.txt").write_text("Skiing/v_Skiing_g09_c01.avi\n"),
     r"testlist02.txt, line 1: .*class 'Skiing' is not in classInd.txt"),
    (lambda d: d.joinpath("testlist01.txt").write_text("Archery/v_Archery_g09_c01.avi\n"),
     r"testlist01.txt, line 1: clip 'v_Archery_g09_c01.avi' is already in split 1 \(trainlist01.txt, line"),
    (lambda d: d.joinpath("trainlist03.txt").unlink(), r"missing: trainlist03.txt"),
    (lambda d: d.joinpath("classInd.txt").write_text("1 ApplyEyeMakeup\n3 Archery\n"),
     r"classInd.txt, line 2: .*must count 1, 2, 3"),
    (lambda d: d.joinpath("trainlist02.txt").write_text("v_Archery_g09_c01.avi 2\n"),
     r"trainlist02.txt, line 1: .*expected '<ClassName>/<clip>.avi'"),
])
def test_ucf101_bad_lists_name_file_and_line(tmp_path, edit, message):
    write_ucf101_lists(tmp_path, ["ApplyEyeMakeup", "Archery"], {"ApplyEyeMakeup": [1, 9, 16, 22], "Archery": [2, 9, 16, 22]})
    dataset.load_splits(tmp_path)
    edit(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        dataset.load_splits(tmp_path)


def test_split_files_for_display():
    assert [p.name for p in split_formats.split_files(UCF101_SPLITS, 2)] == [
        "classInd.txt", "trainlist02.txt", "testlist02.txt"]
    hmdb = split_formats.split_files(HMDB51_SPLITS, 3)
    assert len(hmdb) == 51 and hmdb[0].name == "brush_hair_test_split3.txt"


# ---------------------------------------------------------------- mmaction2 list files
def write_tiny_rawframes(folder: Path, n_frames: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full((8, 8, 3), 128, np.uint8)
    for i in range(1, n_frames + 1):
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), image)
        if i < n_frames:
            for axis in "xy":
                cv2.imwrite(str(folder / f"flow_{axis}_{i:05d}.jpg"), image[..., 0])


def small_hmdb51_like(root: Path) -> pd.DataFrame:
    """Three classes in HMDB51's layout, every video but one extracted; returns the index."""
    splits = root / "splits"
    splits.mkdir(parents=True)
    for c in ("wave", "brush_hair", "climb"):
        names = [f"src{s}_{c}_f_cm_np1_fr_med_0.avi" for s in "ABCDE"]
        for k in (1, 2, 3):
            codes = {k - 1: 2, 3: 0 if k == 1 else 1}   # one test source per split, one unused in split 1
            (splits / f"{c}_test_split{k}.txt").write_text(
                "".join(f"{n} {codes.get(i, 1)} \n" for i, n in enumerate(names)))
        for i, n in enumerate(names):
            if (c, i) != ("climb", 4):
                write_tiny_rawframes(root / "rawframes" / c / Path(n).stem, 3 + i)
    return quiet_index(Config(dataset=str(root)))


# The rawframe annotation format of mmaction2 (docs/en/user_guides/prepare_dataset.md, "rawframe
# annotation", and RawframeDataset in mmaction/datasets/rawframe_dataset.py): one line per video,
# "<frame_directory> <total_frames> <label>", whitespace separated, frame_directory relative to the
# data root (data/<dataset>/rawframes in its HMDB51/UCF101 configs). tools/data/build_file_list.py
# writes <dataset>_{train,val}_split_{1,2,3}_rawframes.txt with the *test* part of split k as "val",
# total_frames = the number of img_ files (parse_directory), labels 0-based (HMDB51: sorted classes;
# UCF101: classInd index - 1) and only videos that have extracted frames.
MMACTION_LINE = re.compile(r"^(?P<dir>[^\s/]+/[^\s/]+) (?P<frames>\d+) (?P<label>\d+)$")


def test_mmaction_lists_follow_the_documented_format(tmp_path):
    root = tmp_path / "mini"
    index = small_hmdb51_like(root)
    result = mmaction_lists.write_lists(Config(dataset=str(root)), index)
    assert sorted(p.name for p in result["files"]) == sorted(
        f"mini_{s}_split_{k}_rawframes.txt" for s in ("train", "val") for k in (1, 2, 3))
    assert all(p.parent == root for p in result["files"])          # next to rawframes/, as mmaction2
    assert result["not_extracted"] == 1 and not list(root.glob(".*tmp*"))
    sorted_classes = sorted(index["class_name"].unique())
    for k in (1, 2, 3):
        for subset, role in (("train", "train"), ("val", "test")):
            lines = (root / f"mini_{subset}_split_{k}_rawframes.txt").read_text().splitlines()
            expected = index[(index[f"split{k}"] == role) & (index["n_frames"] > 0)]
            assert len(lines) == len(expected) > 0
            for line in lines:
                match = MMACTION_LINE.match(line)
                assert match, line
                folder = root / "rawframes" / match["dir"]
                n_img = sum(1 for p in folder.iterdir() if p.name.startswith("img_"))
                assert int(match["frames"]) == n_img
                assert sorted_classes[int(match["label"])] == match["dir"].split("/")[0]
                assert index.set_index("video").loc[match["dir"].split("/")[1], f"split{k}"] == role


def test_mmaction_lists_round_trip(tmp_path):
    source = tmp_path / "mini"
    index = small_hmdb51_like(source)
    mmaction_lists.write_lists(Config(dataset=str(source)), index)
    # an mmaction2-style dataset folder: rawframes/ and the lists, no splits/ and no videos/
    other = tmp_path / "from_mmaction"
    shutil.copytree(source / "rawframes", other / "rawframes")
    for path in source.glob("mini_*_rawframes.txt"):
        shutil.copy(path, other / path.name)
    assert split_formats.detect_format(other / "splits") == "mmaction2"
    back = quiet_index(Config(dataset=str(other)))
    extracted = index[index["n_frames"] > 0].reset_index(drop=True)
    columns = ["class_name", "video", "label", "split1", "split2", "split3", "n_frames", "n_flows", "source"]
    pd.testing.assert_frame_equal(back[columns].sort_values("video").reset_index(drop=True),
                                  extracted[columns].sort_values("video").reset_index(drop=True))
    assert dataset.class_names(Config(dataset=str(other))) == sorted(index["class_name"].unique())
    # and written again from there, the same files
    mmaction_lists.write_lists(Config(dataset=str(other)), back, dataset_name="mini")
    for path in source.glob("mini_*_rawframes.txt"):
        assert sorted((other / path.name).read_text().splitlines()) == sorted(path.read_text().splitlines())


def test_mmaction_lists_keep_ucf101_labels(tmp_path):
    root = tmp_path / "ucf"
    classes = ["ApplyEyeMakeup", "Hammering", "HammerThrow"]   # classInd order, not sorted order
    write_ucf101_lists(root / "splits", classes, {c: [1, 9, 10, 16] for c in classes})
    for c in classes:
        for g in (1, 9, 10, 16):
            write_tiny_rawframes(root / "rawframes" / c / f"v_{c}_g{g:02d}_c01", 4)
    index = quiet_index(Config(dataset=str(root)))
    mmaction_lists.write_lists(Config(dataset=str(root)), index)
    lines = (root / "ucf_train_split_1_rawframes.txt").read_text().splitlines()
    assert "HammerThrow/v_HammerThrow_g09_c01 4 2" in lines and "Hammering/v_Hammering_g09_c01 4 1" in lines
    val = (root / "ucf_val_split_1_rawframes.txt").read_text().splitlines()
    assert sorted(val) == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01 4 0", "HammerThrow/v_HammerThrow_g01_c01 4 2",
                           "Hammering/v_Hammering_g01_c01 4 1"]
    shutil.rmtree(root / "splits")            # read back from the lists alone: same labels, same groups
    back = quiet_index(Config(dataset=str(root)))
    assert back.set_index("video")["label"].to_dict() == index.set_index("video")["label"].to_dict()
    assert set(back["source"]) == {"g01", "g09", "g10", "g16"}


@pytest.mark.parametrize("text, message", [
    ("wave/a 10 0\nwave/b 12 1\n", r"line 2: class 'wave' has label 1 here but 0"),
    ("wave/a 10 0\nclimb/b 12 0\n", r"line 2: label 0 is class 'climb' here but 'wave'"),
    ("a 10 0\n", r"line 1: .*'<class>/<video>' under rawframes/ \(a list built with --level 1"),
    ("wave/a 10 0 3\n", r"line 1: .*multi-label"),
    ("wave/a ten 0\n", r"line 1: .*non-negative integers"),
])
def test_mmaction_bad_lists_name_file_and_line(tmp_path, text, message):
    (tmp_path / "splits").mkdir()
    (tmp_path / "d_train_split_1_rawframes.txt").write_text(text)
    (tmp_path / "d_val_split_1_rawframes.txt").write_text("wave/c 9 0\n")
    with pytest.raises(ValueError, match=r"d_train_split_1_rawframes.txt, " + message):
        dataset.load_splits(tmp_path / "splits")


def test_mmaction_lists_need_both_files_of_a_split_and_one_dataset(tmp_path):
    (tmp_path / "d_train_split_1_rawframes.txt").write_text("wave/a 10 0\n")
    with pytest.raises(FileNotFoundError, match="d_train_split_1_rawframes.txt is there but not its val list"):
        dataset.load_splits(tmp_path / "splits")
    (tmp_path / "d_val_split_1_rawframes.txt").write_text("wave/b 10 0\n")
    table = dataset.load_splits(tmp_path / "splits")
    assert table["split1"].tolist() == ["train", "test"] and set(table["split2"]) == {"unused"}
    with pytest.raises(ValueError, match="defines no clips for split 2"):
        quiet_index(Config(dataset=str(tmp_path), split=2))
    (tmp_path / "e_val_split_1_rawframes.txt").write_text("wave/b 10 0\n")
    with pytest.raises(ValueError, match="several datasets"):
        dataset.load_splits(tmp_path / "splits")


def test_official_files_win_over_lists(tmp_path):
    root = tmp_path / "mini"
    index = small_hmdb51_like(root)
    mmaction_lists.write_lists(Config(dataset=str(root)), index)
    assert split_formats.detect_format(root / "splits") == "hmdb51"
    assert len(quiet_index(Config(dataset=str(root)))) == len(index)   # the unextracted video stays indexed


def test_cli_writes_lists(tmp_path, capsys):
    root = tmp_path / "mini"
    small_hmdb51_like(root)
    assert mmaction_lists.main(["--dataset", str(root), "--out", str(tmp_path / "lists")]) == 0
    assert len(list((tmp_path / "lists").glob("mini_*_split_*_rawframes.txt"))) == 6
    assert "14 videos listed; 1 not extracted" in capsys.readouterr().out
    assert mmaction_lists.main(["--dataset", str(tmp_path / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err


def test_ucf101_subset_keeps_classind_numbers(tmp_path):
    """The real classInd.txt with lists of three of its classes: labels stay classInd - 1 (HammerThrow 35,
    not 1), through the index and the written lists, and the class list is all 101 (the networks' outputs)."""
    root = tmp_path / "ucf"
    (root / "splits").mkdir(parents=True)
    shutil.copy(UCF101_SPLITS / "classInd.txt", root / "splits" / "classInd.txt")
    keep = ("ApplyEyeMakeup/", "HammerThrow/", "YoYo/")
    for name in [f"{kind}list0{k}.txt" for kind in ("train", "test") for k in (1, 2, 3)]:
        lines = (UCF101_SPLITS / name).read_bytes().decode().splitlines(keepends=True)
        (root / "splits" / name).write_text("".join(l for l in lines if l.startswith(keep) and "_c01." in l), newline="")
    for clip in ("HammerThrow/v_HammerThrow_g08_c01", "HammerThrow/v_HammerThrow_g01_c01", "YoYo/v_YoYo_g08_c01"):
        write_tiny_rawframes(root / "rawframes" / clip, 4)
    index = quiet_index(Config(dataset=str(root)))
    assert index.groupby("class_name")["label"].first().to_dict() == {"ApplyEyeMakeup": 0, "HammerThrow": 35, "YoYo": 100}
    assert dataset.class_names(Config(dataset=str(root))) == [name for _, name in class_index_lines()]
    mmaction_lists.write_lists(Config(dataset=str(root)), index)
    assert (root / "ucf_train_split_1_rawframes.txt").read_text().splitlines() == [
        "HammerThrow/v_HammerThrow_g08_c01 4 35", "YoYo/v_YoYo_g08_c01 4 100"]
    assert (root / "ucf_val_split_1_rawframes.txt").read_text() == "HammerThrow/v_HammerThrow_g01_c01 4 35\n"
