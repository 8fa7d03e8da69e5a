"""Tests for utils/dataset.py on the real official HMDB51 split files (tests/data/hmdb51_splits)."""
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils import dataset, rawframes
from utils.config import Config

SPLITS_FIXTURE = Path(__file__).resolve().parent / "data" / "hmdb51_splits"

ROCK = "(HQ)_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman_climb_f_cm_np1_le_med_2.avi"
GOLF = "Golf_Tips_-_Hit_The_Driver_300+_Yards!!!_golf_f_nm_np1_fr_med_0.avi"
BRACKETS = "Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_fr_goo_0.avi"
AMPERSAND = "Goal_1_&_2_kick_ball_f_cm_np1_fr_goo_2.avi"
SPECIAL = {ROCK: "climb", GOLF: "golf", BRACKETS: "brush_hair", AMPERSAND: "kick_ball"}


def quiet_index(cfg, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return dataset.build_index(cfg, **kwargs)


@pytest.fixture(scope="module")
def hmdb_root(tmp_path_factory):
    """A dataset folder with the real split files and no videos."""
    root = tmp_path_factory.mktemp("hmdb51")
    shutil.copytree(SPLITS_FIXTURE, root / "splits")
    return root


@pytest.fixture(scope="module")
def hmdb_index(hmdb_root):
    return {k: quiet_index(Config(dataset=str(hmdb_root), split=k)) for k in (1, 2, 3)}


def write_split_files(splits_dir, classes, lines_by_split=None):
    """Small split files: ``classes`` maps class -> list of (name, code) for every split."""
    splits_dir.mkdir(parents=True, exist_ok=True)
    for class_name, entries in classes.items():
        for k in (1, 2, 3):
            entries_k = (lines_by_split or {}).get((class_name, k), entries)
            text = "".join(f"{name} {code} \n" for name, code in entries_k)
            (splits_dir / f"{class_name}_test_split{k}.txt").write_text(text)


def tiny_classes():
    """Two classes, two sources each: train 1, test 2, unused 0."""
    classes = {}
    for c in ("wave", "brush_hair"):
        classes[c] = [(f"srcA_{c}_f_cm_np1_fr_med_{i}.avi", 1) for i in range(3)]
        classes[c] += [(f"srcB_{c}_u_nm_np2_le_goo_{i}.avi", 1) for i in range(3)]
        classes[c] += [(f"srcC_{c}_h_nm_np1_ri_bad_0.avi", 2), (f"srcD_{c}_l_cm_np3_ba_med_0.avi", 0)]
    return classes


# ---------------------------------------------------------------- official split files
def test_parse_split_file_real_file():
    entries = dataset.parse_split_file(SPLITS_FIXTURE / "brush_hair_test_split1.txt")
    assert len(entries) == 107
    assert entries[0] == ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1)
    assert {code for _, code in entries} == {0, 1, 2}
    assert sum(code == 1 for _, code in entries) == 70
    assert sum(code == 2 for _, code in entries) == 30


def test_load_splits_official_counts():
    table = dataset.load_splits(SPLITS_FIXTURE)
    assert list(table.columns) == ["class_name", "filename", "video", "split1", "split2", "split3"]
    assert len(table) == 6766
    assert table["video"].is_unique
    assert tuple(sorted(table["class_name"].unique())) == dataset.HMDB51_CLASSES
    for k in (1, 2, 3):
        assert table[f"split{k}"].value_counts().to_dict() == {"train": 3570, "unused": 1666, "test": 1530}
        per_class = pd.crosstab(table["class_name"], table[f"split{k}"])
        assert (per_class["train"] == 70).all() and (per_class["test"] == 30).all()


def test_class_names_sorted_from_path_or_config(hmdb_root):
    names = dataset.class_names(SPLITS_FIXTURE)
    assert names == sorted(names) == list(dataset.HMDB51_CLASSES)
    assert dataset.class_names(Config(dataset=str(hmdb_root))) == names


def test_build_index_columns_and_labels(hmdb_index):
    index = hmdb_index[1]
    assert len(index) == 6766
    expected = ["video", "filename", "class_name", "label", "source", "split1", "split2", "split3",
                "subset", "video_path", "has_video", "frames_path", "n_frames", "n_flows",
                "body_part", "camera_motion", "num_people", "viewpoint", "quality", "clip"]
    assert list(index.columns) == expected
    names = list(dataset.HMDB51_CLASSES)
    assert (index["label"] == index["class_name"].map(names.index)).all()
    assert set(index["label"]) == set(range(51))
    assert not index["has_video"].any() and (index["n_frames"] == 0).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_validation_carved_from_train_grouped_by_source(hmdb_index, k):
    index = hmdb_index[k]
    role, subset = index[f"split{k}"], index["subset"]
    # test and unused clips keep their role; train + val = the official training part
    assert (subset[role == "test"] == "test").all()
    assert (subset[role == "unused"] == "unused").all()
    assert set(subset[role == "train"]) == {"train", "val"}
    assert (subset == "test").sum() == 1530 and subset.isin(["train", "val"]).sum() == 3570
    # no source video on both sides of the train/val border, across all classes
    groups = index["source"].map(dataset.source_group)
    assert not set(groups[subset == "train"]) & set(groups[subset == "val"])
    # about val_fraction of the training clips, in every class
    counts = pd.crosstab(index["class_name"], subset)
    fraction = counts["val"] / (counts["val"] + counts["train"])
    assert 0.13 <= fraction.mean() <= 0.19
    assert fraction.min() >= 0.07 and fraction.max() <= 0.30
    assert (counts["train"] >= 40).all()


def test_validation_deterministic_by_seed(hmdb_root, hmdb_index):
    again = quiet_index(Config(dataset=str(hmdb_root), split=1))
    pd.testing.assert_series_equal(again["subset"], hmdb_index[1]["subset"])
    other = quiet_index(Config(dataset=str(hmdb_root), split=1, seed=1))
    assert (other["subset"] != again["subset"]).any()
    assert (other["subset"] == "val").sum() == pytest.approx((again["subset"] == "val").sum(), rel=0.1)


def test_no_validation_when_fraction_is_zero(hmdb_root):
    index = quiet_index(Config(dataset=str(hmdb_root), split=2, val_fraction=0.0))
    assert "val" not in set(index["subset"])
    assert (index["subset"] == index["split2"]).all()


def test_source_group_joins_spellings():
    assert dataset.source_group("How_to_do_a_Cartwheel") == dataset.source_group("how_to_do_a_cartwheel")
    assert (dataset.source_group("Die_Another_Day_-_Fencing_Scene_Part_1_[HD]_avi")
            == dataset.source_group("Die_Another_Day_-_Fencing_Scene_Part_1_[HD]"))


# ---------------------------------------------------------------- meta tags
def test_parse_meta_real_names():
    meta = dataset.parse_meta(ROCK, "climb")
    assert meta == {"source": "(HQ)_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman",
                    "body_part": "full body", "camera_motion": "moving", "num_people": 1,
                    "viewpoint": "left", "quality": "medium", "clip": 2}
    golf = dataset.parse_meta(GOLF)   # class found among the HMDB51 names
    assert golf["source"] == "Golf_Tips_-_Hit_The_Driver_300+_Yards!!!"
    assert (golf["camera_motion"], golf["viewpoint"], golf["clip"]) == ("static", "front", 0)
    assert dataset.parse_meta(AMPERSAND)["source"] == "Goal_1_&_2"        # kick_ball, not kick
    assert dataset.parse_meta("April_09_brush_hair_u_nm_np1_ba_goo_0.avi")["body_part"] == "upper body"
    assert dataset.parse_meta("x_clap_h_nm_np10_ri_bad_13.avi", "clap")["num_people"] == 10


def test_parse_meta_unusual_name_does_not_crash():
    meta = dataset.parse_meta("my holiday video.mp4", "wave")
    assert meta["source"] == "my holiday video"
    assert all(meta[key] is None for key in dataset.META_KEYS)


def test_meta_columns_cover_every_real_name(hmdb_index):
    index = hmdb_index[1]
    assert index[list(dataset.META_KEYS)].notna().all().all()
    assert set(index["body_part"]) == {"full body", "upper body", "lower body", "head"}
    assert set(index["quality"]) == {"bad", "medium", "good"}
    assert (index["source"] != index["video"]).all()
    assert index["source"].nunique() > 1000
    quality = dataset.meta_counts(index, "quality")
    assert list(quality.index) == ["bad", "medium", "good"] and quality.sum() == 6766
    assert list(dataset.meta_counts(index, "num_people").index) == [0, 1, 2, 3, 4, 5, 6, 10]


# ---------------------------------------------------------------- files on disk
def test_special_names_survive_indexing(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(SPLITS_FIXTURE, root / "splits")
    for name, class_name in SPECIAL.items():
        folder = root / "videos" / class_name
        folder.mkdir(parents=True, exist_ok=True)
        stem = Path(name).stem
        (folder / (stem + (".mp4" if name == GOLF else ".avi"))).write_bytes(b"x")
    frames = root / "rawframes" / "brush_hair" / Path(BRACKETS).stem
    frames.mkdir(parents=True)
    for i in range(1, 6):
        (frames / f"img_{i:05d}.jpg").write_bytes(b"")
    for i in range(1, 5):
        (frames / f"flow_x_{i:05d}.jpg").write_bytes(b"")
        (frames / f"flow_y_{i:05d}.jpg").write_bytes(b"")
    (frames / "img_notes.txt").write_text("not a frame")
    # a sibling whose name a glob built from BRACKETS would also match must not be counted
    decoy = root / "rawframes" / "brush_hair" / Path(BRACKETS).stem.replace("[", "").replace("]", "")
    decoy.mkdir()
    (decoy / "img_00001.jpg").write_bytes(b"")

    with pytest.warns(UserWarning, match=r"6762 of 6766 videos"):
        index = dataset.build_index(Config(dataset=str(root)))
    rows = index.set_index("filename").loc[list(SPECIAL)]
    assert rows["has_video"].all()
    assert rows.loc[GOLF, "video_path"] == root / "videos" / "golf" / (Path(GOLF).stem + ".mp4")
    assert rows.loc[ROCK, "video_path"].is_file()
    assert (rows.loc[BRACKETS, "n_frames"], rows.loc[BRACKETS, "n_flows"]) == (5, 4)
    assert rows.loc[BRACKETS, "frames_path"] == frames
    assert index["n_frames"].sum() == 5 and index["has_video"].sum() == 4
    assert rawframes.count_frames(frames) == (5, 4)
    assert rawframes.count_frames(tmp_path / "missing") == (0, 0)


def test_partial_dataset_strict_raises(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(SPLITS_FIXTURE, root / "splits")
    (root / "videos" / "climb").mkdir(parents=True)
    (root / "videos" / "climb" / ROCK).write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"6765 of 6766 videos") as error:
        dataset.build_index(Config(dataset=str(root)), strict=True)
    assert "April_09_brush_hair_u_nm_np1_ba_goo_0.avi" in str(error.value)


def test_small_dataset_complete_no_warning(tmp_path):
    root = tmp_path / "small"
    classes = tiny_classes()
    write_split_files(root / "splits", classes)
    for c, entries in classes.items():
        (root / "videos" / c).mkdir(parents=True)
        for name, _ in entries:
            (root / "videos" / c / name).write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = dataset.build_index(Config(dataset=str(root)), strict=True)
    assert dataset.class_names(root / "splits") == ["brush_hair", "wave"]
    assert index.groupby("class_name")["label"].first().to_dict() == {"brush_hair": 0, "wave": 1}
    assert index["has_video"].all()
    # each class: one of its two training sources goes to validation, whole
    for c in classes:
        rows = index[(index["class_name"] == c) & index["subset"].isin(["train", "val"])]
        assert rows.groupby("source")["subset"].nunique().max() == 1
        assert sorted(rows["subset"].value_counts().tolist()) == [3, 3]


# ---------------------------------------------------------------- malformed split files
def test_bad_code_names_file_and_line(tmp_path):
    classes = tiny_classes()
    bad = list(classes["wave"])
    bad[2] = (bad[2][0], 7)
    write_split_files(tmp_path / "splits", classes, {("wave", 2): bad})
    with pytest.raises(ValueError, match=r"wave_test_split2\.txt, line 3") as error:
        dataset.load_splits(tmp_path / "splits")
    assert "code must be 0" in str(error.value)


def test_duplicate_line_names_both_lines(tmp_path):
    classes = tiny_classes()
    dup = list(classes["wave"]) + [classes["wave"][1]]
    write_split_files(tmp_path / "splits", classes, {("wave", 1): dup})
    with pytest.raises(ValueError, match=r"wave_test_split1\.txt, line 9.*already listed on line 2"):
        dataset.load_splits(tmp_path / "splits")


def test_malformed_line_names_file_and_line(tmp_path):
    write_split_files(tmp_path / "splits", tiny_classes())
    path = tmp_path / "splits" / "brush_hair_test_split3.txt"
    path.write_text(path.read_text() + "a_line_without_code.avi\n")
    with pytest.raises(ValueError, match=r"brush_hair_test_split3\.txt, line 9"):
        dataset.load_splits(tmp_path / "splits")


def test_missing_split_file_is_named(tmp_path):
    write_split_files(tmp_path / "splits", tiny_classes())
    (tmp_path / "splits" / "wave_test_split2.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"wave_test_split2\.txt"):
        dataset.load_splits(tmp_path / "splits")


def test_split_files_must_list_the_same_videos(tmp_path):
    classes = tiny_classes()
    write_split_files(tmp_path / "splits", classes, {("wave", 3): classes["wave"][:-1]})
    with pytest.raises(ValueError, match=r"wave_test_split3\.txt.*srcD_wave_l_cm_np3_ba_med_0\.avi"):
        dataset.load_splits(tmp_path / "splits")


def test_missing_splits_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="splits folder not found"):
        dataset.build_index(Config(dataset=str(tmp_path / "nothing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no <class>_test_split"):
        dataset.load_splits(tmp_path / "empty")


def test_hmdb51_counts_checked_only_for_hmdb51(tmp_path):
    splits = tmp_path / "splits"
    shutil.copytree(SPLITS_FIXTURE, splits)
    path = splits / "wave_test_split1.txt"
    lines = path.read_text().splitlines(keepends=True)
    first_train = next(i for i, line in enumerate(lines) if line.split()[1] == "1")
    lines[first_train] = lines[first_train].replace(" 1 ", " 2 ")
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"split 1 must have 70 train clips per class; wave: 69"):
        dataset.load_splits(splits)
    assert len(dataset.load_splits(splits, check_hmdb51=False)) == 6766
    # fewer classes than HMDB51: no 70/30 check
    small = tmp_path / "small"
    small.mkdir()
    for name in ("wave", "golf"):
        for k in (1, 2, 3):
            shutil.copy(splits / f"{name}_test_split{k}.txt", small)
    assert dataset.load_splits(small)["class_name"].nunique() == 2


# ---------------------------------------------------------------- summaries
def test_summary_and_split_tables(hmdb_index):
    index = hmdb_index[3]
    summary = dataset.summary_table(index)
    assert list(summary.columns) == ["train", "val", "test", "unused", "sources"]
    assert summary.loc["total", ["train", "val"]].sum() == 3570
    assert summary.loc["total", "test"] == 1530
    assert len(summary) == 52
    splits = dataset.split_table(index)
    assert splits.loc["split2"].to_dict() == {"train": 3570, "test": 1530, "unused": 1666, "total": 6766}


def test_clip_lengths_and_read_frame(tmp_path):
    cv2 = pytest.importorskip("cv2")
    root = tmp_path / "ds"
    write_split_files(root / "splits", tiny_classes())
    name = tiny_classes()["wave"][0][0]
    path = root / "videos" / "wave" / name
    path.parent.mkdir(parents=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    assert writer.isOpened()
    for i in range(12):
        writer.write(np.full((24, 32, 3), i * 20, np.uint8))
    writer.release()
    index = quiet_index(Config(dataset=str(root)))
    lengths = dataset.clip_lengths(index)
    assert len(lengths) == 1
    row = lengths.iloc[0]
    assert (row["frames"], row["fps"], row["width"], row["height"]) == (12, 10.0, 32, 24)
    assert row["seconds"] == pytest.approx(1.2)
    frame = dataset.read_frame(path)
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8
    assert dataset.read_frame(tmp_path / "missing.avi") is None


# ---------------------------------------------------------------- split files from other systems (issue 12)
def test_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    classes = tiny_classes()
    write_split_files(tmp_path / "splits", classes)
    path = tmp_path / "splits" / "wave_test_split2.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))   # a Windows editor's save
    table = dataset.load_splits(tmp_path / "splits")
    assert table["filename"].tolist().count(classes["wave"][0][0]) == 1
    assert dataset.parse_split_file(path) == [(name, code) for name, code in classes["wave"]]


def test_byte_that_is_not_utf8_names_file_and_line(tmp_path):
    write_split_files(tmp_path / "splits", tiny_classes())
    path = tmp_path / "splits" / "wave_test_split1.txt"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = b"caf\xe9_" + lines[3]                       # Latin-1 e-acute
    path.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=r"wave_test_split1\.txt, line 4: byte 0xe9 is not UTF-8"):
        dataset.load_splits(tmp_path / "splits")


def test_official_archive_sub_folder_is_found(tmp_path):
    """The official test_train_splits.rar unpacks to testTrainMulti_7030_splits/ inside splits/."""
    root = tmp_path / "ds"
    shutil.copytree(SPLITS_FIXTURE, root / "splits" / "testTrainMulti_7030_splits")
    index = quiet_index(Config(dataset=str(root)))
    assert len(index) == 6766 and dataset.class_names(root / "splits") == list(dataset.HMDB51_CLASSES)
    write_split_files(root / "splits" / "copy", tiny_classes())
    with pytest.raises(FileNotFoundError, match=r"sets in 2 sub-folders \(copy, testTrainMulti_7030_splits\)"):
        dataset.load_splits(root / "splits")


# ---------------------------------------------------------------- which videos a stream can use (issue 12)
@pytest.fixture
def partly_extracted(tmp_path):
    """Small dataset: class wave extracted (one clip too short, one failed, one not yet), brush_hair missing."""
    root = tmp_path / "small"
    classes = tiny_classes()
    write_split_files(root / "splits", classes)
    (root / "videos" / "wave").mkdir(parents=True)
    lengths = {0: 12, 1: 12, 2: 6, 3: 12, 5: 12, 6: 12}     # clip 4: extraction failed; clip 7: not yet
    for i, (name, _) in enumerate(classes["wave"]):
        (root / "videos" / "wave" / name).write_bytes(b"x")
        if i in lengths:
            frames = root / "rawframes" / "wave" / Path(name).stem
            frames.mkdir(parents=True)
            for t in range(1, lengths[i] + 1):
                (frames / f"img_{t:05d}.jpg").write_bytes(b"")
                if t < lengths[i]:
                    (frames / f"flow_x_{t:05d}.jpg").write_bytes(b"")
                    (frames / f"flow_y_{t:05d}.jpg").write_bytes(b"")
    failed = root / "videos" / "wave" / classes["wave"][4][0]
    (root / "rawframes" / "extraction_failures.csv").write_text(f"video,reason\n{failed},no decodable frames\n")
    with pytest.warns(UserWarning, match="8 of 16 videos"):
        index = dataset.build_index(Config(dataset=str(root)))
    return root, classes, index


def test_usable_videos_name_every_video_left_out_and_why(partly_extracted):
    root, classes, index = partly_extracted
    wave = [Path(name).stem for name, _ in classes["wave"]]
    with pytest.raises(FileNotFoundError, match=rf"(?s)wave/{wave[7]}: not extracted yet.*run the extraction"):
        dataset.usable_videos(index, 10)

    usable = dataset.usable_videos(index, 10, allow_not_extracted=True)
    assert sorted(usable.rows["video"]) == sorted(wave[i] for i in (0, 1, 3, 5, 6))
    reasons = dict(zip(usable.excluded["video"], usable.excluded["reason"]))
    assert reasons[wave[2]] == "too short: 6 frames, 5 flows; a stack of L = 10 flows needs 11 frames"
    assert reasons[wave[4]] == "extraction failed: no decodable frames"
    assert reasons[wave[7]] == "not extracted yet"
    assert all(reasons[Path(n).stem].startswith("video file not found in") for n, _ in classes["brush_hair"])
    message = usable.message
    assert message.startswith("11 of 16 videos left out (10 unusable, 1 not extracted):")
    assert "class brush_hair: all 8 videos, video file not found in" in message       # a missing class: one line
    assert f"wave/{wave[2]}: too short" in message and f"wave/{wave[4]}: extraction failed" in message

    assert len(dataset.usable_videos(index, 5, allow_not_extracted=True).rows) == 6   # the model's L decides
    spatial = dataset.usable_videos(index[index.subset.isin(["train", "val"])], None, allow_not_extracted=True)
    assert wave[2] in set(spatial.rows["video"])                                     # one frame is enough
    complete = dataset.usable_videos(index[index.video.isin(wave[:2])], 10)
    assert complete.excluded.empty and complete.message == "all 2 videos are extracted and usable (at least L + 1 = 11 frames)"


@pytest.mark.filterwarnings("ignore:8 of 16 videos")
def test_class_folder_without_split_files_is_named_by_the_index(partly_extracted):
    root, _, _ = partly_extracted
    (root / "videos" / "jump").mkdir()
    (root / "videos" / "jump" / "j1.avi").write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"1 folder\(s\) of .* have no split files .*: jump/ \(1 files\)"):
        dataset.build_index(Config(dataset=str(root)))
