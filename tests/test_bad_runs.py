"""Issue 22 through the entry points: never a silently wrong table, nothing read or written outside its
folder because of a list line or a link, and every remaining crash a named error (or a recomputation).

The numbers in the test names are the issue's cases; the locks of case 3 are in tests/test_writers.py,
the memory estimate of case 13 in tests/test_memory.py.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_bad_inputs import tiny, tiny_model, write_rawframes  # noqa: F401  (the fixture and its helpers)
from test_extract import write_video
from test_run import write_notebook

from utils import config as config_module
from utils import download, predict, report, run, training
from utils import evaluation as ev
from utils.config import REPO_ROOT, Config
from utils.extract import main as extract_main
from utils.rawframes import FAILURES_FILE, SETTINGS_FILE, WARNINGS_FILE

pytestmark = pytest.mark.filterwarnings("ignore:'test' videos", "ignore:.*no record of the flow")


def save_checkpoint(cfg: Config, stream: str, seed: int) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    path = cfg.stream_dir(stream) / "best.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    tiny_model(3 if stream == "spatial" else 2 * cfg.stack_length).save(path)
    return path


def evaluate_all(cfg, index, protocols=ev.PROTOCOLS):
    for protocol in protocols:
        for stream in ev.STREAMS:
            ev.evaluate_stream(cfg, stream, protocol, index=index, progress=False)


def course_cells(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.split("## ")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in report.NETWORKS.values():
            rows[cells[0]] = cells[1:]
    return rows


# ----------------------------------------------------------------------------------------
# 1, 2: a result is always computed from the checkpoint and the flow it names
# ----------------------------------------------------------------------------------------
def test_1_scores_of_a_checkpoint_trained_again_are_left_out_of_the_table(tiny):
    cfg, index = tiny
    cfg = cfg.override(stack_length=5)
    spatial = save_checkpoint(cfg, "spatial", 0)
    save_checkpoint(cfg, "temporal", 1)
    evaluate_all(cfg, index)
    first = ev.checkpoint_sha256(spatial)
    text = report.write_report(cfg, figures=False).read_text()
    cells = course_cells(text)
    assert cells.pop("Fusion (weighted, w from validation)") == ["NA", "NA"]     # no validation videos here
    assert all(re.fullmatch(r"\d+\.\d", c) for row in cells.values() for c in row), cells
    assert f"`{first[:12]}`" in text and "(RGB only)" in text        # which checkpoint and flow made each row
    csv_table = pd.read_csv(cfg.report_dir / "results.csv")
    assert set(csv_table.loc[csv_table.network == "Spatial ResNet-50", "checkpoint_sha256"]) == {first[:12]}

    save_checkpoint(cfg, "spatial", 2)                       # trained again; then `utils.run --only 04`
    for stream in ev.STREAMS:
        ev.evaluate_stream(cfg, stream, "one_frame", index=index, progress=False)
    text = report.write_report(cfg, figures=False).read_text()
    cells = course_cells(text)
    assert cells["Spatial ResNet-50"][1] == "NA" and cells["Fusion (average)"][1] == "NA"   # whole video: stale
    assert cells["Temporal"][1] != "NA" and cells["Spatial ResNet-50"][0] != "NA"
    now = ev.checkpoint_sha256(spatial)
    stale = ev.scores_path(cfg, "spatial", "whole_video")
    assert (f"- {stale}: made by {spatial} with SHA-256 {first[:12]}, which now has SHA-256 {now[:12]} "
            f"(trained again since); re-run the evaluation") in text
    assert report.LEFT_OUT in (config_module.REPORT_DIR / "results.md").read_text()
    assert report.LEFT_OUT in run._course_table(cfg.report_dir / "results.md")     # what utils.run prints


def test_1_a_rewritten_checkpoint_of_the_same_size_and_time_is_scored_again(tiny, monkeypatch):
    from test_evaluation import RecordingLoader, StubModel

    cfg, index = tiny
    checkpoint = cfg.stream_dir("spatial") / "best.keras"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"model A")
    monkeypatch.setattr(ev, "load_stream_model", lambda path: StubModel(2))

    def scored():
        loader = RecordingLoader()
        ev.evaluate_stream(cfg, "spatial", "one_frame", index=index, loader=loader, progress=False)
        return len(loader.requests)

    assert scored() == 1 and scored() == 0
    stat = checkpoint.stat()
    checkpoint.write_bytes(b"model B")                      # same path, same size ...
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # ... and the same modification time
    assert scored() == 1


def test_2_a_temporal_model_is_not_scored_on_flow_of_another_method(tiny):
    cfg, index = tiny
    cfg = cfg.override(stack_length=5)
    checkpoint = save_checkpoint(cfg, "temporal", 0)
    trained_on = {"method": "dis", "flow_bound": 20.0, "method_options": {}}
    (checkpoint.parent / training.STATE_FILE).write_text(json.dumps(
        {"epochs_done": 3, "settings": {"run_info": {"extraction": trained_on}}}))
    settings = Path(cfg.frames_dir) / SETTINGS_FILE
    settings.write_text(json.dumps({**trained_on, "method": "farneback"}))      # re-extracted, not retrained
    with pytest.raises(ValueError) as refused:
        ev.evaluate_stream(cfg, "temporal", "one_frame", index=index, progress=False)
    message = str(refused.value)
    assert message.startswith(f"{checkpoint}: this temporal model was trained on 'dis' flow clipped at +-20 px "
                              f"({checkpoint.parent / training.STATE_FILE}), but {settings} says the frames now "
                              f"hold 'farneback' flow clipped at +-20 px (differs in method)")
    settings.write_text(json.dumps({**trained_on, "flow_bound": 15.0}))          # another bound
    with pytest.raises(ValueError, match="differs in flow_bound"):
        ev.evaluate_stream(cfg, "temporal", "one_frame", index=index, progress=False)
    settings.write_text(json.dumps(trained_on))
    assert len(ev.evaluate_stream(cfg, "temporal", "one_frame", index=index, progress=False)) == 2


# ----------------------------------------------------------------------------------------
# 4, 11: nothing outside the folder because of a list line or a link
# ----------------------------------------------------------------------------------------
def test_4_a_list_line_leaving_the_videos_folder_is_refused_by_line_number(tmp_path, capsys):
    root = tmp_path / "ds"
    write_video(root / "videos" / "c" / "v.avi", 3)
    write_video(root / "outside.avi", 3)
    listed = tmp_path / "list.txt"
    listed.write_text("c/v.avi\n../outside.avi\n")
    assert extract_main(["--videos", str(root / "videos"), "--out", str(root / "rawframes"), "--list", str(listed),
                         "--method", "dis-fast", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: --list {listed}, line 2: '../outside.avi' is not a <class>/<file> path inside "
                           f"the videos folder (no '..', no absolute path); fix or remove the line")
    assert sorted(p.name for p in root.iterdir()) == ["outside.avi", "videos"]      # nothing written anywhere


def test_11_links_fifos_devices_and_folders_named_like_videos_are_skipped_and_named(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out"
    write_video(videos / "walk" / "real.avi", 4)
    walk = videos / "walk"
    os.symlink("loop.avi", walk / "loop.avi")                 # a link to itself
    os.symlink("nowhere.avi", walk / "dangling.avi")
    os.mkfifo(walk / "fifo.avi")                              # reading it would wait forever
    os.symlink("/dev/zero", walk / "zero.avi")                # reading it would never end
    (walk / "folder.avi").mkdir()
    os.symlink("looping", videos / "looping")                 # a class folder that is a loop
    assert extract_main(["--videos", str(videos), "--out", str(out), "--method", "dis-fast", "--workers", "1",
                         "--no-progress"]) == 1               # 1: some videos failed; the run went on
    assert (out / "walk" / "real").is_dir()
    with open(out / FAILURES_FILE, newline="", encoding="utf-8") as file:
        reasons = {Path(row["video"]).name: row["reason"] for row in csv.DictReader(file)}
    assert reasons == {
        "loop.avi": "a symbolic link loop, not a video file: skipped",
        "dangling.avi": "a symbolic link to nothing (-> nowhere.avi), not a video file: skipped",
        "fifo.avi": "a named pipe (FIFO), not a video file: skipped",
        "zero.avi": "a device (-> /dev/zero), not a video file: skipped",
        "folder.avi": "a folder, not a video file: skipped",
        "looping": "a symbolic link loop, not a class folder: skipped"}


# ----------------------------------------------------------------------------------------
# 6, 10: utils.predict's arguments and file names
# ----------------------------------------------------------------------------------------
PREDICT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from utils import config, predict
    config.MODELS_DIR = Path({models!r})
    sys.exit(predict.main([os.fsdecode({video!r})]))
""")


def test_6_predict_on_a_file_name_that_is_not_utf8_is_an_error_not_a_crash(tmp_path):
    models = tmp_path / "models"
    for stream in ("spatial", "temporal"):
        (models / "demo_split1" / stream).mkdir(parents=True)
        (models / "demo_split1" / stream / "best.keras").write_bytes(b"")        # only looked for here
    (models / "demo_split1" / predict.RUN_INFO_FILE).write_text(json.dumps({"class_names": ["a", "b"]}))
    latin1 = os.path.join(os.fsencode(tmp_path), b"caf\xe9.avi")
    clip = write_video(tmp_path / "clip.avi", 4)            # OpenCV must not see the name, not even here
    try:
        os.rename(clip, latin1)
    except OSError:
        pytest.skip("this file system does not take file names that are not UTF-8")
    done = subprocess.run([sys.executable, "-c", PREDICT.format(root=str(REPO_ROOT), models=str(models),
                                                                  video=latin1)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])         # not -11 (a segmentation fault)
    error = done.stderr.strip().splitlines()[-1]          # after TensorFlow's start-up lines, if any
    assert error.startswith("error: b'") and "the file name is not valid UTF-8" in error
    assert "rename the file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--top", "0", "argument --top: must be >= 1, got 0"),
    ("--batch-size", "0", "argument --batch-size: must be >= 1, got 0"),
    ("--max-frames", "0", "argument --max-frames: must be >= 2 (a flow needs two frames), got 0"),
    ("--top", "many", "argument --top: must be a whole number >= 1, got 'many'"),
])
def test_10_predict_refuses_counts_that_cannot_work(option, value, message, capsys):
    with pytest.raises(SystemExit) as usage:
        predict.main(["clip.avi", option, value])
    assert usage.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5"])
def test_10_extract_refuses_opencv_threads_below_one(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as usage:
        extract_main(["--videos", str(tmp_path), "--out", str(tmp_path / "out"), "--opencv-threads", value])
    assert usage.value.code == 2
    assert f"argument --opencv-threads: must be >= 1, got {value}" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# 7: damaged files are named, or recomputed
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_7_a_damaged_score_file_is_recomputed_with_a_note_and_named_in_the_report(tiny, monkeypatch, damage):
    cfg, index = tiny
    cfg = cfg.override(stack_length=5)
    save_checkpoint(cfg, "spatial", 0)
    first = ev.evaluate_stream(cfg, "spatial", "one_frame", index=index, progress=False)
    path = ev.scores_path(cfg, "spatial", "one_frame")
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[:len(data) // 2])
    text = report.write_report(cfg, figures=False, publish=False).read_text()
    assert f"- {path}: not a readable score file ({0 if damage == 'empty' else len(data) // 2} bytes;" in text
    with pytest.warns(UserWarning, match=re.escape(f"{path}: not a readable score file")) as warned:
        again = ev.evaluate_stream(cfg, "spatial", "one_frame", index=index, progress=False)
    assert any("recomputing it" in str(w.message) for w in warned)
    np.testing.assert_allclose(again.scores, first.scores, atol=1e-6)
    assert ev.load_scores(path).meta["checkpoint_sha256"] == first.meta["checkpoint_sha256"]


def test_7_a_killed_score_write_leaves_no_temporary_file(tiny):
    cfg, index = tiny
    cfg = cfg.override(stack_length=5)
    save_checkpoint(cfg, "spatial", 0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftover = ev.scores_path(cfg, "spatial", "one_frame").with_name(f".spatial_one_frame.npz.tmp-{dead}")
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a score file")
    ev.evaluate_stream(cfg, "spatial", "one_frame", index=index, progress=False)
    assert not leftover.exists()


@pytest.mark.parametrize("content, what", [("{}", "no whole number epochs_done"), ("[1, 2]", "no whole number"),
                                           ('{"epochs_done": "3"}', "no whole number"), ("{not json", "not valid JSON")])
def test_7_a_damaged_training_state_is_named(tmp_path, content, what):
    (tmp_path / training.STATE_FILE).write_text(content)
    x = np.zeros((4, 32, 32, 4), np.float32)
    model = training.models.build_temporal_model(2, image_size=32, stack_length=2, width=0.125)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / training.STATE_FILE}: ")) as refused:
        training.train_temporal(model, (x, np.zeros(4, np.int32)), None, tmp_path, epochs=1, patience=None,
                                batch_size=2, verbose=0)
    assert what in str(refused.value) and "delete it to start the run over" in str(refused.value)


@pytest.mark.parametrize("content", ["\x00\x01\x02 garbage\n\"unclosed,1\n", "a,b\n1,2\n"])
def test_7_a_damaged_training_history_is_named(tmp_path, monkeypatch, content):
    (tmp_path / training.HISTORY_FILE).write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / training.HISTORY_FILE}: not a training history")):
        training.read_history(tmp_path)
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    cfg = Config(dataset="demo")
    history = cfg.stream_dir("spatial") / training.HISTORY_FILE
    history.parent.mkdir(parents=True)
    history.write_text(content)
    with pytest.warns(UserWarning, match=re.escape(f"{history}: not a training history")):
        assert report.load_history(cfg, "spatial") is None          # the report goes on without its curves


def test_7_damaged_extraction_records_are_named_before_any_work(tmp_path, capsys):
    write_video(tmp_path / "videos" / "c" / "v.avi", 3)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--videos", str(tmp_path / "videos"), "--out", str(out), "--method", "dis-fast", "--workers", "1",
            "--no-progress"]
    (out / SETTINGS_FILE).write_text("[1, 2]")
    assert extract_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / SETTINGS_FILE}: not the settings of an extraction") and "Traceback" not in err
    (out / SETTINGS_FILE).unlink()
    (out / WARNINGS_FILE).write_text("this is not,a warnings,file\n\x00\x01\n")
    assert extract_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / WARNINGS_FILE}: not an extraction warnings file") and "delete it" in err
    assert not (out / "c").exists()                         # refused before the work, not after it
    (out / WARNINGS_FILE).unlink()
    assert extract_main(argv) == 0 and (out / "c" / "v").is_dir()


def test_7_damaged_extraction_settings_are_named_by_the_evaluation(tiny):
    cfg, index = tiny
    save_checkpoint(cfg, "spatial", 0)
    (Path(cfg.frames_dir) / SETTINGS_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=re.escape(f"{Path(cfg.frames_dir) / SETTINGS_FILE}: not the settings")):
        ev.evaluate_stream(cfg, "spatial", "one_frame", index=index, progress=False)


@pytest.mark.parametrize("content", ["", "[]", '{"run": "demo_split1"}'])
def test_7_a_damaged_run_info_is_named_or_made_again(tmp_path, monkeypatch, content, capsys):
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(config_module, "DATA_DIR", tmp_path / "data")
    path = tmp_path / "models" / "hmdb51_split1" / predict.RUN_INFO_FILE
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a run's record (")) as refused:
        predict.load_run_info("hmdb51_split1")
    assert "pass --dataset PATH" in str(refused.value)


# ----------------------------------------------------------------------------------------
# 8: notebook 04 with a first test video that cannot be used
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("notebook", ["04_fusion_one_frame", "05_fusion_whole_video"])
def test_8_the_example_video_is_one_that_can_be_shown(tmp_path, monkeypatch, notebook):
    """The first test video is missing (not extracted) and the second too short: the example is the third."""
    import matplotlib
    import nbformat

    matplotlib.use("Agg")
    root = tmp_path / "ds"
    (root / "splits").mkdir(parents=True)
    names = ["a_missing.avi", "b_short.avi", "c_fine.avi", "d_train.avi"]
    for k in (1, 2, 3):
        (root / "splits" / f"wave_test_split{k}.txt").write_text("".join(f"{n} {2 if n[0] < 'd' else 1}\n"
                                                                           for n in names))
    write_rawframes(root / "rawframes" / "wave" / "b_short", 5)
    write_rawframes(root / "rawframes" / "wave" / "c_fine", 14)
    write_rawframes(root / "rawframes" / "wave" / "d_train", 14)
    cells = [c.source for c in nbformat.read(REPO_ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4).cells
             if c.cell_type == "code"]
    monkeypatch.chdir(REPO_ROOT / "notebooks")
    namespace: dict = {}
    exec(cells[0], namespace)                       # the parameters, then this dataset
    namespace["dataset"] = str(root)
    with pytest.warns(UserWarning):                 # the index says which videos are missing
        for source in cells[1:4]:                   # the set-up, the index, the example
            exec(source, namespace)
    assert namespace["example"].video == "c_fine"


# ----------------------------------------------------------------------------------------
# 9, 12: utils.run and utils.download on folders they cannot use; Ctrl-C; full disks
# ----------------------------------------------------------------------------------------
@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    folder = tmp_path / "nbs"
    folder.mkdir()
    write_notebook(folder / "00_a.ipynb", "dataset = 'x'\nsplit = 1\nepochs: int = None  # (None: preset)",
                   "print('ran')")
    return folder


def test_9_run_output_dir_that_is_a_file_or_read_only(notebooks, tmp_path, capsys, monkeypatch):
    target = tmp_path / "a_file"
    target.write_text("")
    assert run.main(["--notebooks-dir", str(notebooks), "--dataset", "demo", "--output-dir", str(target)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {target}: is a file, not a folder; give --output-dir a folder"
    real_write_bytes = Path.write_bytes

    def read_only(path, data):
        if path.parent == tmp_path / "report" / "demo_split1":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    assert run.main(["--notebooks-dir", str(notebooks), "--dataset", "demo", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'report' / 'demo_split1'}: cannot be written (Permission denied); "
                          "it is not writable for you") and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["-p", "epohcs=3"], "error: no notebook's parameters cell defines epohcs (epohcs: did you mean epochs?); "
                         "the parameters are: dataset, epochs, split"),
    (["-p", "epochs=abc"], "error: -p epochs='abc': 00_a.ipynb expects an int for epochs (its parameters cell; "
                           "None also works), got str; give an int"),
    (["-p", "epochs=2.5"], "got float; give an int"),
])
def test_9_unknown_names_and_wrong_types_are_refused_up_front(notebooks, capsys, args, message):
    assert run.main(["--notebooks-dir", str(notebooks), "--dataset", "demo", "--list", *args]) == 2
    assert message in capsys.readouterr().err


def test_9_a_full_disk_leaves_no_empty_executed_notebook(notebooks, tmp_path, capsys, monkeypatch):
    import papermill.engines
    import papermill.execute

    def disk_full(nb, path, *args, **kwargs):     # what a full disk does: the file is created, nothing fits
        Path(path).write_bytes(b"")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(papermill.execute, "write_ipynb", disk_full)
    monkeypatch.setattr(papermill.engines, "write_ipynb", disk_full)
    out = tmp_path / "out"
    assert run.main(["--notebooks-dir", str(notebooks), "--dataset", "demo", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {out / '00_a.ipynb'}: cannot be written (No space left on device); free some space" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]            # no 0-byte notebook, no temporary


def test_12_ctrl_c_during_a_run_prints_one_line(notebooks, tmp_path):
    write_notebook(notebooks / "00_a.ipynb", "dataset = 'x'\nsplit = 1",
                   "from pathlib import Path\nPath('started').write_text('')\nimport time\ntime.sleep(300)")
    command = textwrap.dedent(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a terminal's Ctrl-C, even where this
        sys.path.insert(0, {str(REPO_ROOT)!r})                     # test runs in the background (SIGINT ignored)
        from pathlib import Path
        from utils import config, run
        config.REPORT_DIR = Path({str(tmp_path / "report")!r})      # not the repository's report/
        sys.exit(run.main(sys.argv[1:]))
    """)
    process = subprocess.Popen([sys.executable, "-c", command, "--notebooks-dir", str(notebooks), "--dataset",
                                "demo", "--output-dir", str(tmp_path / "out")], cwd=REPO_ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (notebooks / "started").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)              # Ctrl-C in a terminal: the foreground process group
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip() == "interrupted; re-run the same command to resume"


def test_12_a_full_disk_during_training_is_named_and_leaves_no_temporary(tmp_path, monkeypatch):
    import keras

    real_save = keras.Model.save

    def save_on_a_full_disk(model, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04")          # the start of the archive, then no space
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(keras.Model, "save", save_on_a_full_disk)
    x = np.zeros((4, 32, 32, 4), np.float32)
    model = training.models.build_temporal_model(2, image_size=32, stack_length=2, width=0.125)
    with pytest.raises(OSError) as full:
        training.train_temporal(model, (x, np.zeros(4, np.int32)), None, tmp_path, epochs=1, patience=None,
                                batch_size=2, verbose=0)
    monkeypatch.setattr(keras.Model, "save", real_save)
    assert str(full.value).startswith(f"{tmp_path / 'last.tmp.keras'}: No space left on device while training "
                                      f"into {tmp_path}; free some space, then run again")
    assert not list(tmp_path.glob("*.tmp.keras"))


def test_12_a_full_disk_during_extraction_stops_the_run_with_one_error(tmp_path, monkeypatch, capsys):
    for k in range(3):
        write_video(tmp_path / "videos" / "c" / f"v{k}.avi", 3, seed=k)
    real_write_bytes = Path.write_bytes

    def disk_full(path, data):
        if path.name.startswith("img_"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    out = tmp_path / "out"
    assert extract_main(["--videos", str(tmp_path / "videos"), "--out", str(out), "--method", "dis-fast",
                         "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: no space left on the output disk")
    assert "free some space" in err[0] and "v0.avi" in err[0]
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob("img_*"))            # no half-written folder


def test_9_download_dest_that_is_a_file_or_read_only(tmp_path, capsys, monkeypatch):
    target = tmp_path / "a_file"
    target.write_text("")
    assert download.main(["--dataset", "ucf101", "--splits-only", "--dest", str(target)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {target}: is a file, not a folder; give --dest a folder")

    def read_only(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    assert download.main(["--dataset", "ucf101", "--splits-only", "--dest", str(tmp_path / "ro")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'ro'}: cannot be written (Permission denied); "
                                               f"fix its permissions or give --dest a folder you can write into")
