"""A dataset folder as mmaction2 leaves it: rawframes/ with x_/y_ flow files and the lists its own
build_file_list.py wrote (tests/data/mmaction2, see PROVENANCE.md), no videos/ and no splits/.

Labels are mmaction2's (UCF101's classInd.txt - 1: 0, 35, 100), flow files are read under either
naming, lists written here equal mmaction2's and pass its RawframeDataset's parsing rules, and the
user's lists are never overwritten. The slow test runs `python -m utils.run --dataset PATH --quick` on
it and checks the run goes through and its peak memory.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils import dataset, extract_job, flow, generators, mmaction_lists, rawframes, split_formats
from utils.config import REPO_ROOT, Config

MMACTION2 = Path(__file__).resolve().parent / "data" / "mmaction2"
_spec = importlib.util.spec_from_file_location("build_lists", MMACTION2 / "build_lists.py")
build_lists = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_lists)
LISTS = sorted(MMACTION2.glob("ucf101_*_split_*_rawframes.txt"))
LABELS = {"ApplyEyeMakeup": 0, "HammerThrow": 35, "YoYo": 100}     # classInd.txt 1, 36, 101, minus 1
PEAK_MEMORY_LIMIT_KB = 4 * 1024 * 1024                               # --quick: below 4 GB


def make_mmaction2_folder(root: Path) -> Path:
    """rawframes/<Class>/<clip>/ (img_, x_, y_ files) and mmaction2's six lists beside it, nothing else."""
    for clip, n_frames in build_lists.CLIPS.items():
        build_lists.write_rawframes(root / "rawframes" / clip, n_frames)
    for path in LISTS:
        shutil.copy(path, root / path.name)
    return root


@pytest.fixture
def mm_root(tmp_path):
    return make_mmaction2_folder(tmp_path / "mm_ucf101")


def mmaction2_parse(ann_file: Path, data_prefix: Path) -> list[dict]:
    """The parsing rules of mmaction2's RawframeDataset.load_data_list (mmaction/datasets/rawframe_dataset.py,
    commit 4d6c934; with_offset=False, multi_class=False): split each line on white space, frame_dir joined
    to data_prefix, then total_frames, then exactly one label."""
    data = []
    for line in ann_file.read_text().splitlines():     # mmengine's list_from_file: one item per line
        parts = line.strip().split()
        info = {"frame_dir": os.path.join(str(data_prefix), parts[0]), "total_frames": int(parts[1])}
        label = [int(x) for x in parts[2:]] or [-1]
        assert len(label) == 1                          # `assert len(label) == 1` in load_data_list
        info["label"] = label[0]
        data.append(info)
    return data


# ---------------------------------------------------------------- flow file names
def test_x_y_flow_names_are_read(mm_root):
    folder = mm_root / "rawframes" / "YoYo" / "v_YoYo_g15_c01"              # 14 frames, x_/y_ 1..13
    assert rawframes.count_frames(folder) == (14, 13)
    assert rawframes.flow_naming(folder) == ("x_", "y_")
    assert [p.name for p in rawframes.flow_files(folder, 7)] == ["x_00007.jpg", "y_00007.jpg"]
    stack = generators.read_flow_uint8(folder, 3, stack_length=4)
    expected = np.stack([cv2.imread(str(folder / f"{axis}_{t:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
                         for t in range(3, 7) for axis in "xy"], axis=-1)
    np.testing.assert_array_equal(stack, expected)
    assert flow.read_flow_jpegs(folder, 2).shape == (240, 320, 2)
    # a folder written here keeps its own names
    ours = mm_root / "ours"
    ours.mkdir()
    extract_job.write_flows(ours, 1, np.zeros((2, 4, 4, 2), np.float32), extract_job.ExtractionSettings())
    assert sorted(p.name for p in ours.iterdir()) == ["flow_x_00001.jpg", "flow_x_00002.jpg",
                                                       "flow_y_00001.jpg", "flow_y_00002.jpg"]
    assert rawframes.count_frames(ours) == (0, 2) and rawframes.flow_naming(ours) == ("flow_x_", "flow_y_")


# ---------------------------------------------------------------- the index of a frames-only folder
def test_frames_only_index_keeps_mmaction2_labels(mm_root):
    cfg = Config(dataset=str(mm_root))
    assert split_formats.locate(cfg.splits_dir) == ("mmaction2", mm_root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no word about a videos/ or splits/ folder that is not there
        index = dataset.build_index(cfg)
    assert len(index) == 12 and not index["has_video"].any()
    assert index.groupby("class_name")["label"].first().to_dict() == LABELS
    classes = dataset.class_names(cfg)
    assert len(classes) == 101 and index.attrs["class_names"] == classes
    assert [classes[k] for k in LABELS.values()] == list(LABELS)
    assert classes[1] == split_formats.unnamed_label(1) == "(label 1)"
    assert (index["n_flows"] == index["n_frames"] - 1).all() and index["n_flows"].min() == 11
    usable = dataset.usable_videos(index, 10, frames_dir=cfg.frames_dir)
    assert len(usable.rows) == 12, usable.message
    from utils.evaluation import index_class_names
    assert index_class_names(index[index.subset == "test"]) == classes      # the whole list survives a selection
    # a listed video without its frames folder: the message names the frames folder, not a video file
    shutil.rmtree(cfg.frames_dir / "YoYo" / "v_YoYo_g08_c01")
    with pytest.warns(UserWarning, match=r"1 of 12 videos listed in .*mm_ucf101 have no frames in .*rawframes "
                                         r"\(and there is no .*videos to extract them from\)") as caught:
        index = dataset.build_index(cfg)
    assert not any("are not in" in str(w.message) for w in caught)
    reason = dataset.usable_videos(index, 10, frames_dir=cfg.frames_dir).excluded.set_index("video")["reason"]
    assert reason["v_YoYo_g08_c01"].startswith(f"no frames folder in {cfg.frames_dir / 'YoYo'}")


def test_made_elsewhere_frames_are_recorded_as_such(mm_root, tmp_path, monkeypatch):
    frames_dir = mm_root / "rawframes"
    assert rawframes.read_extraction_settings(frames_dir) == {"origin": "made elsewhere; method unknown",
                                                              "method": None}
    from utils import config as config_module, predict
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    info = json.loads(predict.save_run_info(Config(dataset=str(mm_root))).read_text())    # what predict reads
    assert info["extraction"]["origin"] == rawframes.MADE_ELSEWHERE and info["frame_size"] == [320, 240]
    assert len(info["class_names"]) == 101 and info["class_names"][35] == "HammerThrow"
    # extracting more videos into it (notebook 01 on a folder that also has videos) does not claim the others
    extract_job.check_settings(frames_dir, extract_job.ExtractionSettings(method="dis"))
    recorded = json.loads((frames_dir / rawframes.SETTINGS_FILE).read_text())
    assert recorded["origin"] == rawframes.MADE_ELSEWHERE and recorded["method"] is None
    assert recorded["added_here"]["method"] == "dis"
    extract_job.check_settings(frames_dir, extract_job.ExtractionSettings(method="dis"))   # the same again: fine
    with pytest.raises(ValueError, match="method: 'dis' there, 'farneback' now"):
        extract_job.check_settings(frames_dir, extract_job.ExtractionSettings(method="farneback"))
    assert rawframes.read_extraction_settings(frames_dir)["method"] is None
    fresh = mm_root / "fresh"                       # a new folder records the settings as before
    fresh.mkdir()
    extract_job.check_settings(fresh, extract_job.ExtractionSettings(method="dis"))
    assert rawframes.read_extraction_settings(fresh)["method"] == "dis"


def test_extract_on_a_frames_only_folder_says_there_is_nothing_to_extract(mm_root, capsys):
    from utils import extract
    before = sorted(p.relative_to(mm_root) for p in mm_root.rglob("*"))
    assert extract.main(["--dataset", str(mm_root), "--method", "dis"]) == 0
    out = capsys.readouterr().out
    assert "nothing to extract" in out and f"{len(build_lists.CLIPS)} videos" in out, out
    assert sorted(p.relative_to(mm_root) for p in mm_root.rglob("*")) == before      # nothing written


def test_total_frames_of_a_list_against_the_folder(mm_root):
    lists = sorted(mm_root.glob("ucf101_*_rawframes.txt"))
    for path in lists:                    # say 10 frames for one clip of 12 and 16 for another of 12
        text = path.read_text().replace("v_YoYo_g01_c01 12 ", "v_YoYo_g01_c01 10 ")
        path.write_text(text.replace("v_HammerThrow_g22_c01 12 ", "v_HammerThrow_g22_c01 16 "))
    with pytest.warns(UserWarning, match=r"2 of 12 extracted videos .* hold another number of frames than their "
                                         r"total_frames \(1 more: only the first total_frames are used"):
        index = dataset.build_index(Config(dataset=str(mm_root))).set_index("video")
    assert index.loc["v_YoYo_g01_c01", ["n_frames", "n_flows"]].tolist() == [10, 9]
    assert index.loc["v_HammerThrow_g22_c01", ["n_frames", "n_flows"]].tolist() == [12, 11]
    path = mm_root / "ucf101_train_split_2_rawframes.txt"       # two lists disagree: refused by line
    path.write_text(path.read_text().replace("v_HammerThrow_g22_c01 16 ", "v_HammerThrow_g22_c01 12 "))
    with pytest.raises(ValueError, match=r"ucf101_train_split_2_rawframes.txt, line \d+: video "
                                         r"HammerThrow/v_HammerThrow_g22_c01 has total_frames 12 here but 16"):
        dataset.load_splits(mm_root / "splits")


# ---------------------------------------------------------------- lists written here
def test_written_lists_equal_mmaction2s_and_parse_by_its_rules(mm_root, tmp_path):
    cfg = Config(dataset=str(mm_root))
    out = tmp_path / "written"
    result = mmaction_lists.write_lists(cfg, out_dir=out, dataset_name="ucf101")
    assert sorted(p.name for p in result["files"]) == [p.name for p in LISTS]
    for path in LISTS:                                   # the same lines (build_file_list shuffles them)
        assert sorted((out / path.name).read_text().splitlines()) == sorted(path.read_text().splitlines())
        for info in mmaction2_parse(out / path.name, cfg.frames_dir):
            folder = Path(info["frame_dir"])
            assert info["label"] == LABELS[folder.parent.name]
            for i in range(1, info["total_frames"] + 1):          # filename_tmpl 'img_{:05}.jpg', start_index 1
                assert (folder / "img_{:05}.jpg".format(i)).is_file()
            for i in range(1, info["total_frames"]):             # flow configs: '{}_{:05d}.jpg'
                assert all((folder / "{}_{:05d}.jpg".format(a, i)).is_file() for a in "xy")
    # read back from the written lists alone: the same table, labels and all
    back = make_mmaction2_folder(tmp_path / "back")
    for path in LISTS:
        shutil.copy(out / path.name, back / path.name)
    columns = ["video", "class_name", "label", "split1", "split2", "split3", "n_frames", "n_flows"]
    first = dataset.build_index(cfg)[columns].sort_values("video").reset_index(drop=True)
    again = dataset.build_index(Config(dataset=str(back)))[columns].sort_values("video").reset_index(drop=True)
    assert first.equals(again)


def test_lists_are_never_overwritten_nor_mixed(mm_root, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in LISTS}
    # the dataset folder holds the user's lists, in mmaction2's shuffled order: not overwritten
    with pytest.raises(mmaction_lists.ListsNotWritten, match=r"ucf101_train_split_1_rawframes.txt.*, not written "
                                                             r"by python -m utils.mmaction_lists .*--out DIR"):
        mmaction_lists.write_lists(Config(dataset=str(mm_root)), dataset_name="ucf101")
    # ... and lists of another name beside them would make the folder unreadable: refused too
    assert mmaction_lists.main(["--dataset", str(mm_root)]) == 2       # its name: mm_ucf101
    assert "holds mmaction2 lists of another dataset name" in capsys.readouterr().err
    assert {p.name: (mm_root / p.name).read_bytes() for p in LISTS} == before
    assert not list(mm_root.glob("mm_ucf101_*")) and not (mm_root / mmaction_lists.WRITTEN_RECORD).exists()
    dataset.build_index(Config(dataset=str(mm_root)))            # the folder still reads
    # --out elsewhere: written; again: left as it is; an update of our own file: replaced
    out = tmp_path / "lists"
    assert mmaction_lists.main(["--dataset", str(mm_root), "--out", str(out)]) == 0
    assert mmaction_lists.main(["--dataset", str(mm_root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("(unchanged)") == 6
    shutil.rmtree(mm_root / "rawframes" / "YoYo" / "v_YoYo_g22_c01")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = mmaction_lists.write_lists(Config(dataset=str(mm_root)), out_dir=out)
    assert len(result["written"]) == 3                  # g22 is train in every split
    assert all("v_YoYo_g22_c01" not in p.read_text() for p in out.glob("*_train_*"))
    # a file of ours that someone edited is not ours any more
    edited = out / "mm_ucf101_val_split_1_rawframes.txt"
    edited.write_text(edited.read_text() + "YoYo/v_YoYo_g99_c01 12 100\n")
    shutil.rmtree(mm_root / "rawframes" / "YoYo" / "v_YoYo_g01_c01")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(mmaction_lists.ListsNotWritten, match="mm_ucf101_val_split_1_rawframes.txt, not written"):
            mmaction_lists.write_lists(Config(dataset=str(mm_root)), out_dir=out)


# ---------------------------------------------------------------- annotations/, refusals
def test_official_lists_in_annotations_are_found(tmp_path):
    root = tmp_path / "ucf"
    shutil.copytree(MMACTION2.parent / "ucf101_splits", root / "annotations")     # mmaction2's place
    assert split_formats.locate(root / "splits") == ("ucf101", root / "annotations")
    assert dataset.load_splits(root / "splits").attrs["class_names"][35] == "HammerThrow"
    hmdb = tmp_path / "hmdb"
    shutil.copytree(MMACTION2.parent / "hmdb51_splits", hmdb / "annotations")
    assert len(dataset.class_names(hmdb / "splits")) == 51
    with pytest.raises(FileNotFoundError, match=r"UCF101's classInd.txt .*mmaction2's .*annotations"):
        dataset.build_index(Config(dataset=str(tmp_path / "nothing")))


@pytest.mark.parametrize("line, what", [
    ("../secret 13 1", "class '..'"),                        # issue 22, item 5
    ("/abs/olute 13 1", "folder '/abs/olute'"),
    ("wave/.. 13 1", "video '..'"),
    ("wave/. 13 1", "video '.'"),
    ("wa\\ve/clip 13 1", "class 'wa\\\\ve'"),
])
def test_list_lines_leading_outside_are_refused(tmp_path, line, what):
    (tmp_path / "d_train_split_1_rawframes.txt").write_text(f"wave/a 10 0\n{line}\n")
    (tmp_path / "d_val_split_1_rawframes.txt").write_text("wave/c 9 0\n")
    with pytest.raises(ValueError, match=rf"d_train_split_1_rawframes.txt, line 2: .*{re.escape(what)} would lead outside"):
        dataset.load_splits(tmp_path / "splits")


@pytest.mark.parametrize("fixture, message", [
    ("rawframe_test_list.txt", r"line 1: 'imgs 5 127': the folder must be '<class>/<video>' .*--level 1"),
    ("rawframe_test_list_multi_label.txt", r"line 1: 'imgs 5 1': the folder must be '<class>/<video>'"),
    ("rawframe_test_list_with_offset.txt", r"line 1: 'imgs 2 5 127': expected .*multi-label and offset"),
])
def test_mmaction2s_own_other_list_formats_are_refused(tmp_path, fixture, message):
    """mmaction2's test lists (its tests/data/annotations): one-level folders, several labels, offsets;
    read where mmaction2 keeps annotation files, in annotations/, and refused with what they are."""
    (tmp_path / "annotations").mkdir()
    for subset in ("train", "val"):
        shutil.copy(MMACTION2 / "annotations" / fixture, tmp_path / "annotations" / f"d_{subset}_split_1_rawframes.txt")
    assert split_formats.locate(tmp_path / "splits") == ("mmaction2", tmp_path / "annotations")
    with pytest.raises(ValueError, match=r"annotations/d_(train|val)_split_1_rawframes.txt, " + message):
        dataset.load_splits(tmp_path / "splits")


def test_split_files_leading_outside_are_refused(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    for k in (1, 2, 3):
        (splits / f"wave_test_split{k}.txt").write_text("a_wave_f_cm_np1_fr_med_0.avi 1 \n../up.avi 2 \n")
    with pytest.raises(ValueError, match=r"wave_test_split1.txt, line 2: .*video '../up.avi' would lead outside"):
        dataset.load_splits(splits)
    (splits / "classInd.txt").write_text("1 ..\n")
    for k in (1, 2, 3):
        (splits / f"wave_test_split{k}.txt").unlink()
        (splits / f"trainlist0{k}.txt").write_text("../v_x_g01_c01.avi 1\n")
        (splits / f"testlist0{k}.txt").write_text("")
    with pytest.raises(ValueError, match=r"classInd.txt, line 1: .*class '..' would lead outside"):
        dataset.load_splits(splits)


def test_list_labels_with_gaps_are_kept(tmp_path):
    (tmp_path / "d_train_split_1_rawframes.txt").write_text("wave/a 10 0\nclimb/b 10 7\nrun/c 10 50\nrun/d 10 50\n")
    (tmp_path / "d_val_split_1_rawframes.txt").write_text("wave/e 9 0\nclimb/f 9 7\nrun/g 9 50\n")
    for name in "abcdefg":
        folder = tmp_path / "rawframes" / {"a": "wave", "e": "wave", "b": "climb", "f": "climb"}.get(name, "run") / name
        folder.mkdir(parents=True)
        for i in range(1, (10 if name in "abcd" else 9) + 1):
            (folder / f"img_{i:05d}.jpg").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = dataset.build_index(Config(dataset=str(tmp_path)))
    assert index.set_index("video")["label"].to_dict() == dict(zip("abcdefg", (0, 7, 50, 50, 0, 7, 50)))
    assert len(index.attrs["class_names"]) == 51 and index.attrs["class_names"][50] == "run"
    written = mmaction_lists.write_lists(Config(dataset=str(tmp_path)), index, out_dir=tmp_path / "out")
    assert "run/g 9 50" in (tmp_path / "out" / written["files"][1].name).read_text().splitlines()


# ---------------------------------------------------------------- the whole run, --quick, on this folder
def test_quick_means_the_same_settings_on_every_dataset():
    """What notebooks 02, 03 and 05 make of the --quick parameters, for the demo, HMDB51 and a path."""
    from utils import evaluation, run, training

    q = run.QUICK
    def resolved(name):
        spatial = training.default_settings(
            "spatial", name, pretrained=q["weights"] is not None, image_size=q["image_size"],
            batch_size=q["spatial_batch_size"], frames_per_video=q["frames_per_video"],
            warmup_epochs=q["warmup_epochs"], finetune_epochs=q["finetune_epochs"],
            head_learning_rate=q["head_learning_rate"], finetune_learning_rate=q["finetune_learning_rate"],
            unfreeze_from=q["unfreeze_from"], dropout=q["spatial_dropout"], optimizer=q["spatial_optimizer"],
            label_smoothing=q["label_smoothing"], refit=q["refit"])
        temporal = training.default_settings(
            "temporal", name, image_size=q["image_size"], batch_size=q["temporal_batch_size"],
            stacks_per_video=q["stacks_per_video"], epochs=q["temporal_epochs"], width=q["temporal_width"],
            dropout=q["temporal_dropout"], learning_rate=q["temporal_learning_rate"], optimizer=q["temporal_optimizer"],
            refit=q["refit"])
        for settings in (spatial, temporal):
            settings.pop("crop_scales")       # the demo's squares need their own crops; costs nothing
        return spatial, temporal, evaluation.whole_video_settings(name, segments=q["whole_video_segments"],
                                                                   crops=q["test_crops"])
    demo = resolved("demo")
    assert resolved("hmdb51") == resolved("mm_ucf101") == demo
    spatial, temporal, whole_video = demo
    assert spatial["image_size"] == temporal["image_size"] == 42 and temporal["batch_size"] == 16
    assert temporal["width"] == 0.25 and temporal["stacks_per_video"] == 4 and whole_video["crops"] == 1


@pytest.mark.slow
@pytest.mark.notebooks
def test_quick_run_on_a_frames_only_mmaction2_folder(tmp_path):
    """`python -m utils.run --dataset PATH --quick` in a copy of the repository: notebook 01 has nothing to
    extract and says so, the run goes on to the table, labels stay mmaction2's, peak memory below 4 GB.
    (Notebook 04 is left out to keep it short: 05 computes the one-frame scores and the table as well.)"""
    repo = tmp_path / "repo"
    for folder in ("utils", "notebooks"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    root = make_mmaction2_folder(tmp_path / "mm_ucf101")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    # the peak resident memory of every process of the run (utils.run and the notebook kernels it waits for)
    measure = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "utils.run", "--dataset", str(root),
                           "--quick", "--only", "00,01,02,03,05"],     # 05 scores both protocols (04's work too)
                          cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    peak_kb = int(done.stdout.split("PEAK_KB")[-1].split()[0])
    assert 300 * 1024 < peak_kb < PEAK_MEMORY_LIMIT_KB, f"peak memory {peak_kb / 1024:.0f} MB"
    terminal = done.stdout + done.stderr
    assert "are not in" not in terminal and "videos folder" not in terminal
    executed = repo / "report" / "mm_ucf101_split1" / "notebooks"
    outputs = json.dumps(json.loads((executed / "01_extract_frames_and_flow.ipynb").read_text())["cells"])
    assert "nothing to extract" in outputs and "made elsewhere; method unknown" in outputs
    outputs = json.dumps(json.loads((executed / "00_explore_dataset.ipynb").read_text())["cells"])
    assert "0: ApplyEyeMakeup, 35: HammerThrow, 100: YoYo" in outputs and "(label 1)" not in outputs
    from utils.evaluation import load_scores
    for stream in ("spatial", "temporal"):
        scores = load_scores(repo / "report" / "mm_ucf101_split1" / "scores" / f"{stream}_whole_video.npz")
        assert len(scores.class_names) == 101 and sorted(set(scores.label.tolist())) == [0, 35, 100]
        assert scores.meta["extraction"]["origin"] == rawframes.MADE_ELSEWHERE
    results = (repo / "report" / "mm_ucf101_split1" / "results.md").read_text()
    assert "101 labels (the dataset's numbering), 3 of them in the test videos" in results
    assert "flow made elsewhere; method unknown" in results
    print(f"peak memory of the run: {peak_kb / 1024:.0f} MB")
