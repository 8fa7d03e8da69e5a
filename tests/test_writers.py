"""One writer per output folder (issue 22, case 3 and the locks of every tool): a second run on the same
folder is refused by name, a killed run never leaves the lock stuck, and the temporaries of killed
writers are removed at the next start."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from utils import config as config_module
from utils import run, training, writers
from utils.config import REPO_ROOT
from utils.extract import main as extract_main
from utils.extract_job import ExtractionSettings, check_settings
from utils.rawframes import SETTINGS_FILE

HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from utils import writers
    lock = writers.hold(sys.argv[1], sys.argv[2], shared=sys.argv[3] == "shared")
    print("held", flush=True)
    time.sleep(600)
""")


def hold_in_another_process(folder: Path, what: str = "extraction", shared: bool = False) -> subprocess.Popen:
    """A process that takes the lock of ``folder`` and keeps it until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(REPO_ROOT)), str(folder), what,
                                "shared" if shared else "exclusive"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.fixture
def holder():
    started = []

    def start(folder, what="extraction", shared=False):
        started.append(hold_in_another_process(folder, what, shared))
        return started[-1]
    yield start
    for process in started:
        process.kill()
        process.wait(timeout=30)


def test_a_held_folder_is_refused_and_a_killed_holder_releases_it(tmp_path, holder):
    process = holder(tmp_path / "out", "extraction")
    with pytest.raises(writers.FolderBusy) as refused:
        writers.hold(tmp_path / "out", "extraction")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'out' / writers.LOCK_FILE}: another process (pid {process.pid} on ")
    assert "wait until it has finished (or stop it)" in message
    os.kill(process.pid, signal.SIGKILL)            # no clean-up at all: the kernel releases the lock
    process.wait(timeout=30)
    writers.hold(tmp_path / "out", "extraction").release()


def test_shards_share_a_folder_and_exclude_a_whole_run(tmp_path, holder):
    holder(tmp_path / "out", "extraction", shared=True)
    writers.hold(tmp_path / "out", "extraction", shared=True).release()     # a second shard: fine
    with pytest.raises(writers.FolderBusy, match="parallel parts"):
        writers.hold(tmp_path / "out", "extraction")


def test_second_extraction_on_one_folder_is_refused(tmp_path, holder, capsys):
    from test_extract import write_video

    write_video(tmp_path / "videos" / "c" / "v.avi", 3)
    holder(tmp_path / "out")
    assert extract_main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"),
                         "--method", "dis-fast", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'out' / writers.LOCK_FILE}: another process") and "Traceback" not in err
    assert not (tmp_path / "out" / "c").exists()                   # nothing extracted next to the other run


def test_two_extractions_with_other_settings_never_both_record_theirs(tmp_path, monkeypatch):
    """The race of issue 22 case 3, made deterministic: the other run records its settings right after
    this one looked (is_file was False); this one must then compare, not overwrite."""
    out = tmp_path / "out"
    out.mkdir()
    check_settings(out, ExtractionSettings(method="farneback"))     # the other run, first
    real_is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: False if self.name == SETTINGS_FILE else real_is_file(self))
    with pytest.raises(ValueError, match="method: 'farneback' there, 'dis' now"):
        check_settings(out, ExtractionSettings(method="dis"))
    assert json.loads((out / SETTINGS_FILE).read_text())["method"] == "farneback"
    assert sorted(p.name for p in out.iterdir()) == [SETTINGS_FILE]        # no temporary left


def test_second_training_run_on_one_folder_is_refused(tmp_path, holder):
    out = tmp_path / "models" / "run" / "temporal"
    holder(out, "training run")
    x = np.zeros((4, 32, 32, 4), np.float32)
    model = training.models.build_temporal_model(2, image_size=32, stack_length=2, width=0.125)
    with pytest.raises(writers.FolderBusy, match=r"temporal/\.lock: another process"):
        training.train_temporal(model, (x, np.zeros(4, np.int32)), None, out, epochs=1, patience=None,
                                batch_size=2, verbose=0)
    assert not (out / training.LAST_FILE).exists()


def test_second_run_of_the_notebooks_on_one_report_folder_is_refused(tmp_path, holder, monkeypatch, capsys):
    from test_run import write_notebook

    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    write_notebook(notebooks / "00_a.ipynb", "dataset = 'x'\nsplit = 1", "print('ran')")
    holder(tmp_path / "report" / "demo_split1", "run of the notebooks")
    assert run.main(["--notebooks-dir", str(notebooks), "--dataset", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'report' / 'demo_split1' / writers.LOCK_FILE}: another process")
    assert not (tmp_path / "report" / "demo_split1" / "notebooks" / "00_a.ipynb").exists()


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    live = str(os.getppid())
    for name in (f".spatial_one_frame.npz.tmp-{dead}", f".confusion.tmp-{dead}.png", f".x.npz.tmp-{live}",
                 "spatial_one_frame.npz", writers.LOCK_FILE):
        (tmp_path / name).write_bytes(b"")
    removed = writers.remove_dead_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [f".confusion.tmp-{dead}.png", f".spatial_one_frame.npz.tmp-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".x.npz.tmp-{live}", "spatial_one_frame.npz",
                                                                 writers.LOCK_FILE])


def test_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with writers.one_writer(tmp_path, "training run"):
        with writers.one_writer(tmp_path, "training run"):
            pass
        probe = subprocess.run([sys.executable, "-c", HOLD.format(root=str(REPO_ROOT)).replace(
            "time.sleep(600)", ""), str(tmp_path), "x", "exclusive"], capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "FolderBusy" in probe.stderr      # still held by this process
    done = subprocess.run([sys.executable, "-c", HOLD.format(root=str(REPO_ROOT)).replace("time.sleep(600)", ""),
                           str(tmp_path), "x", "exclusive"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_read_only_folder_needs_no_lock(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(writers.LOCK_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with writers.one_writer(tmp_path, "extraction") as lock:
        assert lock.fd is None
