"""utils.extract_batched: a batched flow method in the main process, decoding and writing in workers.

A stand-in batched method (DIS ultrafast pair by pair behind a ``pairs``/``plan`` interface, with
calls of 3 pairs) makes the output comparable byte for byte with the per-process path of
``utils.extract``; one run with the real ``tvl1-keras`` checks the integration with TVL1Keras.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_extract import assert_complete, write_video

from utils import extract_batched, extract_job, rawframes
from utils.extract import extract_dataset
from utils.rawframes import FAILURES_FILE
from utils.flow import FLOW_METHODS, make_video_flow, register_flow_method

CALL = 3      # pairs per flow call of the stand-in method


class PairwiseBatched:
    """DIS ultrafast behind the batched interface; records the pairs of every call."""

    def __init__(self):
        self.dis = make_video_flow("dis-ultrafast")
        self.calls = []

    def plan(self, height, width, n_pairs):
        return CALL, 1

    def pairs(self, frames0, frames1):
        self.calls.append((len(frames0), frames0.shape[1:]))
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)             # as the per-process reference path: DIS differs with OpenCV's threads
        try:
            return np.stack([self.dis(np.stack([a, b]))[0] for a, b in zip(frames0, frames1)])
        finally:
            cv2.setNumThreads(previous)

    def __call__(self, frames):
        return self.pairs(frames[:-1], frames[1:])


@pytest.fixture
def batched_method(monkeypatch):
    flow = PairwiseBatched()
    monkeypatch.setitem(FLOW_METHODS, "test-batched", FLOW_METHODS["dis-ultrafast"])   # restored afterwards
    register_flow_method("test-batched", lambda: flow, batched=True)
    monkeypatch.setattr(extract_job, "_flow_fns", {})
    return flow


@pytest.fixture
def videos(tmp_path):
    """Five short 96x72 videos (4 to 7 frames) and an empty file. One frame size: OpenCV's DIS (the
    reference) gives other flow after it has seen another size, so mixed sizes are tested apart."""
    root = tmp_path / "videos"
    for k, n in enumerate((5, 4, 7, 6, 4)):
        write_video(root / ("walk" if k % 2 else "run") / f"clip_{k}.avi", n, seed=k)
    (root / "walk" / "empty.avi").write_bytes(b"")
    return root


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


def test_batched_pipeline_writes_what_the_serial_path_writes(videos, tmp_path, batched_method):
    serial = extract_dataset(videos, tmp_path / "serial", "dis-ultrafast", workers=1, progress=False)
    piped = extract_dataset(videos, tmp_path / "piped", "test-batched", workers=2, progress=False)
    assert (piped.done, piped.failed, piped.frame_pairs) == (serial.done, serial.failed, serial.frame_pairs) == (5, 1, 21)
    assert _tree(tmp_path / "piped") == _tree(tmp_path / "serial")             # byte for byte
    for folder in (tmp_path / "piped").glob("*/*"):
        assert_complete(folder)
    assert (tmp_path / "piped" / FAILURES_FILE).read_text() == (tmp_path / "serial" / FAILURES_FILE).read_text()
    assert "empty file" in (tmp_path / "piped" / FAILURES_FILE).read_text()
    assert not [p for p in (tmp_path / "piped").rglob(".tmp-*")]
    # Pairs of several videos share a call: 21 pairs in calls of 3 (a video alone would need 9 calls).
    assert [n for n, _ in batched_method.calls] == [CALL] * 7
    # Resume: a second run skips everything and computes nothing.
    again = extract_dataset(videos, tmp_path / "piped", "test-batched", workers=2, progress=False)
    assert (again.done, again.skipped) == (0, 5) and sum(n for n, _ in batched_method.calls) == 21


def test_stats_and_interruption_leave_no_temporary_folder(videos, tmp_path, batched_method):
    out = tmp_path / "out"
    jobs = [extract_job.Job(str(p), str(out / p.parent.name / p.stem), extract_job.ExtractionSettings(method="test-batched"))
            for p in extract_job.list_videos(videos) if p.stat().st_size]
    stats = extract_batched.PipelineStats()
    results = list(extract_batched.run_batched(jobs, batched_method, workers=2, stats=stats))
    assert sorted(r.frame_pairs for r in results) == [3, 3, 4, 5, 6] and stats.pairs == 21
    assert stats.batch_pairs == CALL and stats.flow_calls == 7 and stats.wall >= stats.flow + stats.waiting
    assert [sum(n for _, _, n in call) for call in stats.calls] == [CALL] * 7            # what each call held
    assert sorted({path for call in stats.calls for path, _, _ in call}) == sorted(j.video_path for j in jobs)
    # Stopped after the first finished video: the others' temporary folders are removed.
    interrupted = tmp_path / "interrupted"
    jobs = [extract_job.Job(j.video_path, j.video_out_dir.replace(str(out), str(interrupted)), j.settings) for j in jobs]
    run = extract_batched.run_batched(jobs, batched_method, workers=2)
    first = next(run)
    run.close()
    finished = [p for p in interrupted.glob("*/*")]
    assert [p.name for p in finished] == [Path(first.video_path).stem]
    assert not [p for p in interrupted.rglob(".tmp-*")]


def test_per_video_method_without_pairs_is_called_once_per_video(videos, tmp_path, monkeypatch):
    calls = []
    dis = make_video_flow("dis-ultrafast")

    def whole_video(frames):
        calls.append(len(frames))
        cv2.setNumThreads(1)
        return dis(frames)

    monkeypatch.setitem(FLOW_METHODS, "test-video", FLOW_METHODS["dis-ultrafast"])
    register_flow_method("test-video", lambda: whole_video, batched=True)
    monkeypatch.setattr(extract_job, "_flow_fns", {})
    summary = extract_dataset(videos, tmp_path / "out", "test-video", workers=2, progress=False)
    assert summary.done == 5 and sorted(calls) == [4, 4, 5, 6, 7]
    reference = extract_dataset(videos, tmp_path / "ref", "dis-ultrafast", workers=1, progress=False)
    assert reference.frame_pairs == summary.frame_pairs and _tree(tmp_path / "out") == _tree(tmp_path / "ref")


def test_a_call_never_mixes_frame_sizes(tmp_path, batched_method):
    root = tmp_path / "videos"
    for k, size in enumerate([(96, 72), (64, 48), (96, 72), (64, 48)]):
        write_video(root / "c" / f"v{k}.avi", 3, size=size, seed=k)
    summary = extract_dataset(root, tmp_path / "out", "test-batched", workers=2, progress=False)
    assert summary.done == 4 and summary.frame_pairs == 8
    assert sorted(batched_method.calls) == [(1, (48, 64)), (1, (72, 96)), (3, (48, 64)), (3, (72, 96))]


class HostQuantised:
    """A batched method's ``pairs`` and ``plan`` without quantisation on the device: the workers quantise."""

    def __init__(self, flow):
        self.flow, self.plan = flow, flow.plan

    def pairs(self, frames0, frames1):
        return self.flow.pairs(frames0, frames1)


@pytest.mark.slow
def test_tvl1_keras_through_the_pipeline(tmp_path, monkeypatch):
    """The real batched method: pairs of two 32x24 videos share calls; quantised on the device, the
    stored flows are byte for byte those the workers write from the float flow, and match the flow
    of each video computed alone (up to quantisation and JPEG)."""
    from utils.flow import read_flow_jpegs
    options = {"slots": 2, "pairs_per_slot": 2}
    root = tmp_path / "videos"
    paths = [write_video(root / "a" / "one.avi", 4, size=(32, 24), seed=1),
             write_video(root / "a" / "two.avi", 3, size=(32, 24), seed=2)]
    summary = extract_dataset(root, tmp_path / "out", "tvl1-keras", workers=2, progress=False, method_options=options)
    assert (summary.done, summary.frame_pairs, summary.workers) == (2, 5, 2)
    host = HostQuantised(make_video_flow("tvl1-keras", **options))
    assert host.flow.quantizes_on_device and not hasattr(host, "quantizes_on_device")
    monkeypatch.setitem(FLOW_METHODS, "test-host-quantised", FLOW_METHODS["tvl1-keras"])    # removed afterwards
    register_flow_method("test-host-quantised", lambda **_: host, batched=True)
    monkeypatch.setattr(extract_job, "_flow_fns", {})   # this process builds the method again
    extract_dataset(root, tmp_path / "host", "test-host-quantised", workers=2, progress=False, method_options=options)
    assert _tree(tmp_path / "out") == _tree(tmp_path / "host")                             # byte for byte
    flow_fn = host.flow
    assert flow_fn.plan(24, 32, 10**6)[0] == 4              # 5 pairs: calls of 4 pairs mix the two videos
    for path in paths:
        video = tmp_path / "out" / "a" / path.stem
        assert_complete(video)
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in extract_job.iter_frames(path)])
        alone = flow_fn(gray)
        stored = np.stack([read_flow_jpegs(video, i) for i in range(1, len(gray))])
        assert np.abs(np.clip(alone, -20, 20) - stored).mean() < 0.1          # quantisation step 0.16 px


def test_damaged_videos_get_the_same_warnings_and_failures(tmp_path, batched_method):
    """A truncated AVI, a damaged one (FFmpeg's messages) and an MP4 without its index: the same
    failures file and warnings file as the per-process path."""
    import shutil
    from test_extract import CLIMB, CLIPS, GOLF
    videos = tmp_path / "videos"
    (videos / "golf").mkdir(parents=True)
    (videos / "climb").mkdir()
    golf = (CLIPS / GOLF).read_bytes()
    shutil.copy(CLIPS / GOLF, videos / "golf" / "intact.avi")
    (videos / "golf" / "half.avi").write_bytes(golf[:len(golf) // 2])
    damaged = bytearray((CLIPS / CLIMB).read_bytes())
    for i in range(len(damaged) // 3, len(damaged) // 3 + 20_000, 97):
        damaged[i] ^= 0xFF
    (videos / "climb" / "damaged.avi").write_bytes(bytes(damaged))
    mp4 = write_video(tmp_path / "whole.mp4", 10, fourcc="mp4v").read_bytes()
    (videos / "climb" / "cut.mp4").write_bytes(mp4[:len(mp4) // 2])
    serial = extract_dataset(videos, tmp_path / "serial", "dis-ultrafast", workers=1, progress=False)
    piped = extract_dataset(videos, tmp_path / "piped", "test-batched", workers=2, progress=False)
    import re
    same = lambda text: re.sub(r"@ 0x[0-9a-f]+", "@ 0x?", text)     # noqa: E731 (FFmpeg's decoder address)
    assert (piped.done, piped.failed) == (serial.done, serial.failed) == (3, 1)
    assert len(piped.warnings) == len(serial.warnings) >= 2
    for name in (FAILURES_FILE, rawframes.WARNINGS_FILE):
        assert same((tmp_path / "piped" / name).read_text()) == same((tmp_path / "serial" / name).read_text()), name
    assert _tree(tmp_path / "piped") == _tree(tmp_path / "serial")
