"""utils.extract: frames + flow of real HMDB51 clips, resume after a kill, failures, the CLI."""
import contextlib
import csv
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils import extract_job, rawframes
from utils.extract import extract_dataset, main
from utils.extract_job import count_decodable_frames, iter_frames, list_videos
from utils.rawframes import FAILURES_FILE
from utils.writers import LOCK_FILE
from utils.flow import FlowMethodUnavailable, dequantize_flow

ROOT = Path(__file__).resolve().parents[1]
CLIPS = Path(__file__).parent / "data" / "hmdb51_clips"
GOLF = "golf/Golf_Tips_-_Hit_The_Driver_300+_Yards!!!_golf_f_nm_np1_fr_med_0.avi"
CLIMB = "climb/(HQ)_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman_climb_f_cm_np1_le_med_2.avi"


# --- helpers -----------------------------------------------------------------------------------
def write_video(path, n_frames, size=(96, 72), seed=0, fourcc="MJPG"):
    """A short synthetic video of a blurred random texture drifting right and down."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    for t in range(n_frames):
        writer.write(np.roll(texture, (t, 2 * t), axis=(0, 1)))
    writer.release()
    return path


def own_decode_count(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def files(video_dir, prefix):
    return sorted(e.name for e in os.scandir(video_dir) if e.name.startswith(prefix))


def assert_complete(video_dir, n_frames=None, size=None):
    """img_00001..N, flow_x/flow_y_00001..N-1, every JPEG decodes, all the same size; returns N."""
    images = files(video_dir, "img_")
    n = len(images)
    assert n >= 2, f"{video_dir}: {n} frames"
    assert images == [f"img_{i:05d}.jpg" for i in range(1, n + 1)]
    for axis in "xy":
        assert files(video_dir, f"flow_{axis}_") == [f"flow_{axis}_{i:05d}.jpg" for i in range(1, n)]
    assert len(os.listdir(video_dir)) == 3 * n - 2
    shapes = set()
    for name in os.listdir(video_dir):
        image = cv2.imread(str(Path(video_dir) / name), cv2.IMREAD_UNCHANGED)
        assert image is not None, f"{video_dir}/{name} does not decode"
        assert image.ndim == (3 if name.startswith("img_") else 2), name   # flow JPEGs are grayscale
        shapes.add(image.shape[:2])
    assert len(shapes) == 1, shapes
    if n_frames is not None:
        assert n == n_frames
    if size is not None:
        assert shapes == {(size[1], size[0])}
    return n


def video_folders(out_dir):
    """Visible video folders <out>/<class>/<video> (hidden .tmp-* folders excluded)."""
    if not out_dir.is_dir():
        return []
    return [Path(v.path) for c in os.scandir(out_dir) if c.is_dir()
            for v in os.scandir(c.path) if v.is_dir() and not v.name.startswith(".")]


def tree_bytes(root):
    """Every file's bytes, the lock file aside (it names the process that last held it)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def run_cli(*args, **popen_kwargs):
    return subprocess.Popen([sys.executable, "-m", "utils.extract", "--no-progress", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen_kwargs)


# --- real HMDB51 clips -------------------------------------------------------------------------
def test_real_clips_with_tricky_names(tmp_path):
    summary = extract_dataset(CLIPS, tmp_path, "dis-fast", workers=1, videos=[GOLF, CLIMB], progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (2, 0, 0)
    total_pairs = 0
    for relative in (GOLF, CLIMB):
        video = CLIPS / relative
        out = tmp_path / video.parent.name / video.stem        # the folder is named exactly the stem
        assert out.is_dir(), sorted(os.listdir(tmp_path / video.parent.name))
        decodable = own_decode_count(video)
        reported = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
        assert reported == decodable + 1                      # the header over-counts by one
        assert count_decodable_frames(video) == decodable
        assert_complete(out, n_frames=decodable, size=(320, 240))
        total_pairs += decodable - 1
        first = cv2.imread(str(out / "img_00001.jpg"))
        original = next(iter_frames(video))
        assert np.abs(first.astype(int) - original).mean() < 3  # a q95 JPEG of the first frame
    assert summary.frame_pairs == total_pairs
    assert summary.pairs_per_second > 0

    again = extract_dataset(CLIPS, tmp_path, "dis-fast", workers=1, videos=[GOLF, CLIMB], progress=False)
    assert (again.done, again.skipped, again.failed, again.frame_pairs) == (0, 2, 0, 0)   # resume: skip


def test_tvl1_on_a_real_clip_and_settings_guard(tmp_path):
    summary = extract_dataset(CLIPS, tmp_path, "tvl1", workers=1, videos=[CLIMB], short_side=120, max_frames=3,
                              progress=False)
    assert (summary.done, summary.frame_pairs) == (1, 2)
    out = tmp_path / "climb" / Path(CLIMB).stem
    assert_complete(out, n_frames=3, size=(160, 120))
    flow_x = dequantize_flow(cv2.imread(str(out / "flow_x_00001.jpg"), cv2.IMREAD_GRAYSCALE))
    assert np.abs(flow_x).max() > 0.5                          # the camera pans: there is motion
    assert np.abs(flow_x).mean() < 10
    with pytest.raises(ValueError, match="other settings.*method: 'tvl1' there, 'dis' now"):
        extract_dataset(CLIPS, tmp_path, "dis", workers=1, videos=[CLIMB], short_side=120, max_frames=3)


# --- synthetic videos: resume after a kill, failures, CLI --------------------------------------
@pytest.fixture(scope="module")
def synthetic_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    names = ["walk/a (1) [x]!.avi", "walk/b+&c.avi", "walk/d.mp4", "run/e_f.avi", "run/(HQ)g!!!.avi",
             "run/h.avi", "run/i.avi", "jump/j.avi", "jump/k.avi", "jump/l.avi"]
    for seed, name in enumerate(names):
        write_video(root / name, 30, seed=seed, fourcc="mp4v" if name.endswith(".mp4") else "MJPG")
    return root


def test_list_videos_handles_odd_names(synthetic_videos):
    found = [p.relative_to(synthetic_videos).as_posix() for p in list_videos(synthetic_videos)]
    assert "walk/a (1) [x]!.avi" in found and "run/(HQ)g!!!.avi" in found and "walk/d.mp4" in found
    assert len(found) == 10 and found == sorted(found)


def test_killed_run_resumes_to_identical_output(synthetic_videos, tmp_path):
    reference = tmp_path / "reference"
    summary = extract_dataset(synthetic_videos, reference, "farneback", workers=1, progress=False)
    assert (summary.done, summary.failed, summary.frame_pairs) == (10, 0, 290)

    out = tmp_path / "interrupted"
    checked = set()

    def check_visible_folders():
        for folder in video_folders(out):
            if folder not in checked:
                assert_complete(folder)
                checked.add(folder)

    process = run_cli("--videos", synthetic_videos, "--out", out, "--method", "farneback", "--workers", 2,
                      start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not checked and process.poll() is None and time.monotonic() < deadline:
            check_visible_folders()
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)           # the parent only: its workers must die with it
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_alive(process.pid), "worker processes outlived the killed parent"
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    check_visible_folders()
    finished_before_kill = len(video_folders(out))
    assert 1 <= finished_before_kill < 10, "the run was not interrupted mid-way"

    process = run_cli("--videos", synthetic_videos, "--out", out, "--method", "farneback", "--workers", 2)
    while process.poll() is None:
        check_visible_folders()
        time.sleep(0.01)
    log = process.stdout.read()
    assert process.returncode == 0, log
    assert f"{10 - finished_before_kill} done, {finished_before_kill} skipped" in log
    assert not [p for p in out.rglob(".tmp-*")], "temporary folders left behind"
    assert tree_bytes(out) == tree_bytes(reference)      # byte-identical to an uninterrupted run


def _group_alive(pgid):
    """Whether a process of group ``pgid`` still runs; zombies (dead, not yet reaped) do not count."""
    return bool(_live_group_members(pgid))


def _live_group_members(pgid):
    """PIDs in process group ``pgid`` that are not zombies, from /proc/<pid>/stat (Linux)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:                      # exited while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()   # after "pid (comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def test_a_worker_whose_parent_already_died_exits():
    """A worker started just before its parent died missed PR_SET_PDEATHSIG: it must exit by itself."""
    code = "import sys; from utils.extract_job import init_worker; init_worker(1, int(sys.argv[1])); print('ran')"
    orphan = subprocess.run([sys.executable, "-c", code, "999999999"], cwd=ROOT, capture_output=True, text=True)
    assert (orphan.returncode, orphan.stdout) == (1, "")
    adopted = subprocess.run([sys.executable, "-c", code, str(os.getpid())], cwd=ROOT, capture_output=True, text=True)
    assert (adopted.returncode, adopted.stdout) == (0, "ran\n"), adopted.stderr


def exited_unreaped_child():
    """A child process that has exited but is not reaped yet (a zombie); call ``.wait()`` to reap it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    deadline = time.monotonic() + 30
    while _live_group_members(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Path(f"/proc/{child.pid}").exists(), "the zombie must still be there (not reaped yet)"
    os.killpg(child.pid, 0)          # kill(pid, 0) still succeeds: it must not count as alive
    return child


def test_unreadable_videos_are_recorded_and_the_run_goes_on(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "ok" / "good [1].avi", 5)
    write_video(videos / "ok" / "one_frame.avi", 1)
    (videos / "bad").mkdir()
    (videos / "bad" / "corrupt.avi").write_bytes(np.random.default_rng(0).bytes(20_000))
    (videos / "bad" / "empty.avi").write_bytes(b"")
    listed = ["ok/good [1].avi", "ok/one_frame.avi", "bad/corrupt.avi", "bad/empty.avi", "bad/missing.avi"]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    out = tmp_path / "out"

    process = run_cli("--videos", videos, "--out", out, "--method", "dis-fast", "--workers", 1,
                      "--list", tmp_path / "list.txt")
    log = process.communicate(timeout=120)[0]
    assert process.returncode == 1, log
    assert "1 done, 0 skipped (already there), 4 failed" in log
    assert_complete(out / "ok" / "good [1]", n_frames=5, size=(96, 72))
    assert video_folders(out) == [out / "ok" / "good [1]"]

    def failures():
        with open(out / FAILURES_FILE, newline="") as file:
            return {Path(row["video"]).name: row["reason"] for row in csv.DictReader(file)}

    reasons = failures()
    assert set(reasons) == {"one_frame.avi", "corrupt.avi", "empty.avi", "missing.avi"}
    assert reasons["empty.avi"] == "empty file (0 bytes)"
    assert reasons["missing.avi"] == "file not found"
    assert "corrupt" in reasons["corrupt.avi"] or "no decodable frames" in reasons["corrupt.avi"]
    assert "only 1 decodable frame" in reasons["one_frame.avi"]

    (videos / "bad" / "empty.avi").unlink()
    write_video(videos / "bad" / "empty.avi", 4)                      # fixed since the last run
    assert main(["--videos", str(videos), "--out", str(out), "--method", "dis-fast", "--workers", "1",
                 "--list", str(tmp_path / "list.txt"), "--no-progress"]) == 1
    assert set(failures()) == {"one_frame.avi", "corrupt.avi", "missing.avi"}   # rewritten, not appended
    assert_complete(out / "bad" / "empty", n_frames=4)


def test_dataset_option_and_resize(tmp_path):
    write_video(tmp_path / "ds" / "videos" / "wave" / "w1.avi", 6, size=(100, 60))
    write_video(tmp_path / "ds" / "videos" / "wave" / "w2.avi", 4, size=(60, 100), seed=1)
    assert main(["--dataset", str(tmp_path / "ds"), "--method", "dis-fast", "--workers", "1",
                 "--short-side", "30", "--no-progress"]) == 0
    frames = tmp_path / "ds" / "rawframes" / "wave"
    assert_complete(frames / "w1", n_frames=6, size=(50, 30))
    assert_complete(frames / "w2", n_frames=4, size=(30, 50))
    summary = extract_dataset(tmp_path / "ds" / "videos", tmp_path / "sized", "dis-fast", workers=1,
                              size=(40, 32), progress=False)
    assert summary.done == 2
    assert_complete(tmp_path / "sized" / "wave" / "w2", size=(40, 32))


def test_stale_temporary_folders_are_removed(tmp_path):
    write_video(tmp_path / "videos" / "c" / "v.avi", 3)
    zombie = exited_unreaped_child()     # a killed worker that PID 1 has not reaped yet
    stale = [tmp_path / "out" / "c" / ".tmp-v-999999999", tmp_path / "out" / "c" / f".tmp-w-{zombie.pid}"]
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "img_00001.jpg").write_bytes(b"partial")
    try:
        assert not _group_alive(zombie.pid)
        summary = extract_dataset(tmp_path / "videos", tmp_path / "out", "dis-fast", workers=1, progress=False)
    finally:
        zombie.wait()
    assert summary.done == 1 and not [folder for folder in stale if folder.exists()]
    assert_complete(tmp_path / "out" / "c" / "v", n_frames=3)


def test_missing_opencv_contrib_fails_early(tmp_path, monkeypatch, capsys):
    write_video(tmp_path / "videos" / "c" / "v.avi", 3)
    monkeypatch.delattr(cv2.optflow, "DualTVL1OpticalFlow_create")
    with pytest.raises(FlowMethodUnavailable, match="pip uninstall.*opencv-contrib-python-headless==5.0.0.93"):
        extract_dataset(tmp_path / "videos", tmp_path / "out", "tvl1", workers=2)
    assert not (tmp_path / "out").exists()                # checked before anything is written or spawned
    assert main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out")]) == 2
    assert "opencv-contrib" in capsys.readouterr().err


def test_chunks_do_not_change_the_output(tmp_path):
    video = write_video(tmp_path / "v.avi", 12)
    settings = extract_job.ExtractionSettings(method="dis-fast")
    assert extract_job.extract_video(video, tmp_path / "whole" / "v", settings=settings, chunk_frames=100) == 11
    assert extract_job.extract_video(video, tmp_path / "chunked" / "v", settings=settings, chunk_frames=4) == 11
    assert tree_bytes(tmp_path / "chunked") == tree_bytes(tmp_path / "whole")


# --- bad inputs: each is named, the run goes on where it can (issue 12) ------------------------
def test_non_utf8_file_name_is_recorded_and_the_run_goes_on(tmp_path):
    """OpenCV's VideoCapture crashes the process on a surrogate-escaped path: it must never get one."""
    videos = tmp_path / "videos"
    write_video(videos / "walk" / "fine.avi", 4)
    latin1 = os.path.join(os.fsencode(videos / "walk"), b"caf\xe9.avi")   # 'cafe' + e-acute in Latin-1
    try:
        with open(latin1, "wb") as file:
            file.write((videos / "walk" / "fine.avi").read_bytes())
    except OSError:
        pytest.skip("this file system does not take file names that are not UTF-8")
    out = tmp_path / "out"
    process = run_cli("--videos", videos, "--out", out, "--method", "dis-fast", "--workers", 2)
    log = process.communicate(timeout=120)[0]
    assert process.returncode == 1, log                     # 1 = some videos failed; not a crash
    assert "1 done, 0 skipped (already there), 1 failed" in log
    assert_complete(out / "walk" / "fine", n_frames=4)
    with open(out / FAILURES_FILE, newline="", encoding="utf-8") as file:
        (row,) = list(csv.DictReader(file))
    assert row["video"].endswith("caf\\udce9.avi")
    assert "not valid UTF-8" in row["reason"] and r"caf\xe9.avi" in row["reason"] and "rename" in row["reason"]


def test_truncated_and_damaged_videos_are_extracted_with_a_warning_naming_them(tmp_path):
    videos = tmp_path / "videos"
    (videos / "golf").mkdir(parents=True)
    (videos / "climb").mkdir()
    golf = (CLIPS / GOLF).read_bytes()
    shutil.copy(CLIPS / GOLF, videos / "golf" / "intact.avi")         # header: one frame more than decodes
    (videos / "golf" / "half.avi").write_bytes(golf[:len(golf) // 2])   # cut like an interrupted download
    damaged = bytearray((CLIPS / CLIMB).read_bytes())
    for i in range(len(damaged) // 3, len(damaged) // 3 + 20_000, 97):
        damaged[i] ^= 0xFF
    (videos / "climb" / "damaged.avi").write_bytes(bytes(damaged))
    mp4 = write_video(tmp_path / "whole.mp4", 10, fourcc="mp4v").read_bytes()
    (videos / "climb" / "cut.mp4").write_bytes(mp4[:len(mp4) // 2])           # its index (moov) is at the end
    announced = int(cv2.VideoCapture(str(videos / "golf" / "half.avi")).get(cv2.CAP_PROP_FRAME_COUNT))
    decoded = own_decode_count(videos / "golf" / "half.avi")
    assert announced > decoded + 2

    summary = extract_dataset(videos, tmp_path / "out", "dis-ultrafast", workers=1, progress=False)
    assert (summary.done, summary.failed) == (3, 1)                  # extracted all the same, but cut.mp4
    (video, reason), = summary.failures
    assert Path(video).name == "cut.mp4" and "OpenCV cannot open it" in reason and "(FFmpeg: '[mov," in reason
    assert_complete(tmp_path / "out" / "golf" / "half", n_frames=decoded)

    def warnings_file():
        with open(tmp_path / "out" / rawframes.WARNINGS_FILE, newline="") as file:
            return [(Path(row["video"]).name, row["warning"]) for row in csv.DictReader(file)]

    rows = warnings_file()
    assert {name for name, _ in rows} == {"half.avi", "damaged.avi"}            # not intact.avi
    assert f"only {decoded} of the {announced} frames" in dict(rows)["half.avi"]
    assert any(name == "damaged.avi" and "FFmpeg reported" in text and "@ 0x" in text for name, text in rows)
    assert "2 video(s) with warnings" in str(summary)

    again = extract_dataset(videos, tmp_path / "out", "dis-ultrafast", workers=1, progress=False)
    assert again.skipped == 3 and warnings_file() == rows                      # kept while the folders are
    shutil.rmtree(tmp_path / "out" / "golf" / "half")
    (videos / "golf" / "half.avi").write_bytes(golf)                             # downloaded again, whole
    extract_dataset(videos, tmp_path / "out", "dis-ultrafast", workers=1, progress=False)
    assert {name for name, _ in warnings_file()} == {"damaged.avi"}


@pytest.mark.parametrize("args, message", [
    (["--list", "{tmp}/no_such_list.txt"], "no_such_list.txt: no such file"),
    (["--list", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/a_file"], "a_file is a file"),
    (["--short-side", "0"], "short_side must be >= 1"),
    (["--size", "0x0"], "width and height must be positive"),
    (["--max-frames", "0"], "max_frames must be >= 2"),
    (["--jpeg-quality", "101"], "jpeg_quality must be in 0 ... 100"),
    (["--workers", "0"], "workers must be >= 1"),
])
def test_bad_usage_is_an_error_before_any_work(tmp_path, capsys, args, message):
    write_video(tmp_path / "videos" / "c" / "v.avi", 3)
    (tmp_path / "a_file").write_text("not a folder")
    argv = ["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--method", "dis-fast",
            "--no-progress", *(a.format(tmp=tmp_path) for a in args)]
    with pytest.raises(SystemExit) if "--size" in args else contextlib.nullcontext() as usage:
        assert main(argv) == 2
    assert usage is None or usage.value.code == 2             # argparse's own usage error
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_list_through_the_command_line(tmp_path):
    process = run_cli("--videos", tmp_path, "--out", tmp_path / "out", "--list", tmp_path / "missing.txt")
    log = process.communicate(timeout=120)[0]
    assert (process.returncode, log.strip()) == (2, f"error: --list {tmp_path / 'missing.txt'}: no such file")


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free some space"), (errno.EROFS, "read-only"),
                                          (errno.EACCES, "permissions")])
def test_unwritable_output_folder_is_an_error_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys,
                                                                          code, advice):
    write_video(tmp_path / "videos" / "c" / "v.avi", 3)
    (tmp_path / "out").mkdir()
    real_write_text = Path.write_text

    def fail_after_creating(path, *args, **kwargs):    # what a full disk / read-only mount does to a write
        real_write_text(path, "")
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(Path, "write_text", fail_after_creating)
    assert main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--method", "dis-fast",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write into the output folder {tmp_path / 'out'}: {os.strerror(code)}" in err
    assert advice in err and "Traceback" not in err
    assert os.listdir(tmp_path / "out") == []                  # no 0-byte .tmp-extraction_settings.json-<pid>


def test_class_folder_without_split_files_is_named(tmp_path, caplog):
    root = tmp_path / "ds"
    write_video(root / "videos" / "wave" / "w1.avi", 3)
    write_video(root / "videos" / "wave_extra" / "x1.avi", 3)
    (root / "splits").mkdir()
    for k in (1, 2, 3):
        (root / "splits" / f"wave_test_split{k}.txt").write_text("w1.avi 1 \n")
    with caplog.at_level(logging.INFO, logger="utils.extract"):
        assert main(["--dataset", str(root), "--method", "dis-fast", "--workers", "1", "--no-progress"]) == 0
    assert "2 done" in caplog.text and "no split files list the class folder(s) wave_extra/ (1 files)" in caplog.text
