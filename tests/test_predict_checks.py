"""python -m utils.predict: which flow method and why, a wrong path before Keras loads, a short clip
refused before any stream runs. Reuses the small demo run of tests/test_predict.py."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from test_predict import RUN, folders, world   # noqa: F401  (fixtures)
from utils import evaluation, predict
from utils.config import REPO_ROOT


def test_a_wrong_path_is_refused_before_keras_is_imported(tmp_path):
    code = ("import sys; from utils import predict; rc = predict.main([sys.argv[1]]); "
            "print(rc, sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope.avi")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[-2] == "2 []", done.stdout + done.stderr
    assert f"error: no video {tmp_path / 'nope.avi'}" in done.stderr


def test_a_clip_too_short_for_the_temporal_stream_is_refused_before_the_spatial_one(folders, tmp_path, monkeypatch):
    clip = tmp_path / "short.avi"
    writer = cv2.VideoWriter(str(clip), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), 25, (48, 48))
    for t in range(6):
        writer.write(np.full((48, 48, 3), 40 * t, np.uint8))
    writer.release()
    loaded = []
    monkeypatch.setattr(evaluation, "load_stream_model", lambda path, *a, **k: loaded.append(path))
    with pytest.raises(ValueError, match=r"short.avi has 6 decodable frames; the temporal stream of run "
                                         r"'demo_split1' needs at least 11 \(stacks of 10 flows\)"):
        predict.predict_video(clip, RUN)
    assert loaded == []                      # no stream was loaded, let alone run


def test_the_flow_method_and_why(folders, monkeypatch):
    prediction = predict.predict_video(folders["demo_clip"], RUN)
    assert any(note.startswith("optical flow: 'dis', the method the frames of run demo_split1 were extracted with")
               for note in prediction.notes), prediction.notes
    assert "optical flow: 'dis'" in predict.format_prediction(prediction)
    asked = predict.flow_method_reason({"run": RUN, "extraction": {"method": "dis"}}, "farneback")
    assert asked == "'farneback', as asked (--flow-method)"
    info = {"run": "mm_split1", "extraction": {"origin": "made elsewhere; method unknown", "method": None}}
    reason = predict.flow_method_reason(info)
    assert reason.startswith("'tvl1', the default (the paper's TV-L1), because the frames of run mm_split1 were "
                             "made elsewhere; method unknown") and "--flow-method" in reason
    assert predict.clip_settings(info).method == "tvl1"
    assert "records no extraction settings" in predict.flow_method_reason({"run": "x_split1"})
