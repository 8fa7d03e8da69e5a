"""Extraction options that change which frames are stored: fixed-fps resampling and frames only (no flow)."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils import rawframes
from utils.config import Config
from utils.extract import extract_dataset, main
from utils.extract_job import resample_indices
from utils.rawframes import SETTINGS_FILE, count_frames

CLIPS = Path(__file__).parent / "data" / "hmdb51_clips"
GOLF = "golf/Golf_Tips_-_Hit_The_Driver_300+_Yards!!!_golf_f_nm_np1_fr_med_0.avi"   # 89 frames, 30 fps


def write_numbered_video(path: Path, n_frames: int, fps: float, size=(64, 48)) -> Path:
    """A video whose frame j is a flat grey of value 8 * j (so a stored frame says which one it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for j in range(n_frames):
        writer.write(np.full((size[1], size[0], 3), 8 * j, np.uint8))
    writer.release()
    return path


def stored_numbers(folder: Path) -> list[int]:
    """Which source frame each stored img_*.jpg is (from its grey value)."""
    n_frames, _ = count_frames(folder)
    return [int(round(cv2.imread(str(rawframes.frame_file(folder, i))).mean() / 8)) for i in range(1, n_frames + 1)]


@pytest.mark.parametrize("native", [30.0, 25.0, 29.97])
def test_resampled_frames_are_the_nearest_to_each_sixth_of_a_second(native):
    n = 95
    kept = resample_indices(n, native, 6)
    times = np.arange(len(kept)) / 6.0                          # the frame times asked for: k / 6 s
    assert np.all(np.abs(kept / native - times) <= 0.5 / native + 1e-9)   # the nearest frame to each
    assert kept[0] == 0 and np.all(np.diff(kept) > 0) and kept[-1] < n
    assert (len(kept) - 1) / 6.0 <= (n - 1) / native < len(kept) / 6.0  # every time inside the clip, no more
    assert list(resample_indices(31, 30, 6)) == [0, 5, 10, 15, 20, 25, 30]
    assert list(resample_indices(10, 5, 6)) == list(range(10))  # never more frames than the video has


def test_fps_extraction_stores_frames_a_sixth_of_a_second_apart_and_records_it(tmp_path):
    videos = tmp_path / "videos"
    write_numbered_video(videos / "c" / "thirty.avi", 31, 30)
    write_numbered_video(videos / "c" / "twentyfive.avi", 26, 25)
    out = tmp_path / "rawframes_6fps"
    summary = extract_dataset(videos, out, "dis-fast", workers=1, fps=6, progress=False)
    assert summary.done == 2 and not summary.warnings, summary     # fewer frames than announced: expected
    assert stored_numbers(out / "c" / "thirty") == [0, 5, 10, 15, 20, 25, 30]
    assert stored_numbers(out / "c" / "twentyfive") == [0, 4, 8, 13, 17, 21, 25]   # round(k * 25 / 6)
    assert count_frames(out / "c" / "thirty") == (7, 6)        # flow i: frame (i - 1) / 6 s -> i / 6 s
    assert json.loads((out / SETTINGS_FILE).read_text())["fps"] == 6
    with pytest.raises(ValueError, match="fps: 6 there, None now"):   # both kinds never mix in one folder
        extract_dataset(videos, out, "dis-fast", workers=1, progress=False)
    with pytest.raises(ValueError, match="fps must be a whole number"):
        extract_dataset(videos, tmp_path / "x", "dis-fast", workers=1, fps=0, progress=False)


def test_fps_has_its_own_rawframes_folder_and_run_name(tmp_path):
    write_numbered_video(tmp_path / "ds" / "videos" / "c" / "v.avi", 31, 30)
    assert main(["--dataset", str(tmp_path / "ds"), "--fps", "6", "--no-flow", "--workers", "1", "--no-progress"]) == 0
    cfg = Config(dataset=str(tmp_path / "ds"), fps=6)
    assert cfg.frames_dir == tmp_path / "ds" / "rawframes_6fps" and cfg.run_name == "ds_split1_6fps"
    assert stored_numbers(cfg.frames_dir / "c" / "v") == [0, 5, 10, 15, 20, 25, 30]
    assert not (tmp_path / "ds" / "rawframes").exists()        # the every-frame folder is another one
    assert Config(dataset=str(tmp_path / "ds")).run_name == "ds_split1"


def test_frames_only_extraction_writes_no_flow_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "frames"
    assert main(["--videos", str(CLIPS), "--out", str(out), "--no-flow", "--workers", "1", "--no-progress",
                 "--list", str(_list(tmp_path, [GOLF]))]) == 0
    folder = out / Path(GOLF).parent / Path(GOLF).stem
    assert count_frames(folder) == (89, 0)
    assert sorted(os.listdir(folder)) == [f"img_{i:05d}.jpg" for i in range(1, 90)]
    assert json.loads((out / SETTINGS_FILE).read_text())["method"] is None
    # a folder of frames only is not silently given flow later, nor the other way round
    assert main(["--videos", str(CLIPS), "--out", str(out), "--method", "dis-fast", "--no-progress",
                 "--list", str(_list(tmp_path, [GOLF]))]) == 2
    assert "method: None there, 'dis-fast' now" in capsys.readouterr().err


def test_no_flow_with_a_method_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--videos", str(CLIPS), "--out", str(tmp_path / "o"), "--no-flow", "--method", "dis"])
    assert exit_info.value.code == 2 and "--no-flow computes no optical flow" in capsys.readouterr().err


def test_settings_files_of_earlier_versions_still_match(tmp_path):
    """A folder extracted before ``fps`` existed (its settings file has no such key) is still resumed."""
    videos = tmp_path / "videos"
    write_numbered_video(videos / "c" / "a.avi", 4, 30)
    write_numbered_video(videos / "c" / "b.avi", 4, 30)
    out = tmp_path / "out"
    extract_dataset(videos, out, "dis-fast", workers=1, videos=["c/a.avi"], progress=False)
    old = json.loads((out / SETTINGS_FILE).read_text())
    del old["fps"]
    (out / SETTINGS_FILE).write_text(json.dumps(old))
    summary = extract_dataset(videos, out, "dis-fast", workers=1, progress=False)
    assert (summary.done, summary.skipped) == (1, 1)
    with pytest.raises(ValueError, match="fps: None there, 6 now"):
        extract_dataset(videos, out, "dis-fast", workers=1, fps=6, progress=False)


def _list(tmp_path: Path, videos) -> Path:
    path = tmp_path / "list.txt"
    path.write_text("\n".join(videos) + "\n")
    return path
