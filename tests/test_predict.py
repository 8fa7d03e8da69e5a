"""python -m utils.predict: both streams of a run on one clip, on a small demo dataset and a real HMDB51 clip.

The run's checkpoints are small models with random weights (the answer is not the point here, the
chain is): saved as models/demo_split1/{spatial,temporal}/best.keras in a temporary MODELS_DIR.
"""
import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from utils import config as config_module
from utils import models, predict
from utils.demo_data import DEMO_CLASSES, make_demo_dataset
from utils.extract import extract_dataset
from utils.extract_job import list_videos

REAL_CLIP = next((Path(__file__).resolve().parent / "data" / "hmdb51_clips" / "golf").iterdir())
SMALL = dict(clips_per_class=3, test_per_split=1, unused_per_split=0, frames=(13, 14))
RUN = "demo_split1"


def tiny_spatial_model(n_classes: int, image_size: int = 56) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 128)(inputs)
    x = keras.layers.Conv2D(8, 5, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """data/demo (small, one clip extracted with DIS) and the run's two checkpoints, random weights."""
    root = tmp_path_factory.mktemp("predict")
    demo = root / "data" / "demo"
    make_demo_dataset(demo, **SMALL)
    videos = list_videos(demo / "videos")
    extract_dataset(demo / "videos", demo / "rawframes", method="dis", workers=1, videos=videos[:1], progress=False)
    keras.utils.set_random_seed(0)
    checkpoints = {"spatial": tiny_spatial_model(len(DEMO_CLASSES)),
                   "temporal": models.build_temporal_model(len(DEMO_CLASSES), image_size=56, width=0.03, dropout=0.0)}
    for stream, model in checkpoints.items():
        (root / "models" / RUN / stream).mkdir(parents=True)
        model.save(root / "models" / RUN / stream / "best.keras")
    return {"root": root, "demo_clip": videos[-1]}


@pytest.fixture
def folders(world, monkeypatch):
    for name in ("DATA_DIR", "MODELS_DIR", "REPORT_DIR"):
        monkeypatch.setattr(config_module, name, world["root"] / name.split("_")[0].lower())
    return world


def test_refuses_without_checkpoints(tmp_path, monkeypatch, capsys, folders):
    clip = folders["demo_clip"]
    assert predict.main([str(clip), "--run", "hmdb51_split1"]) == 2
    error = capsys.readouterr().err
    for stream in ("spatial", "temporal"):
        assert str(folders["root"] / "models" / "hmdb51_split1" / stream / "best.keras") in error
    assert "notebooks 02 (spatial) and 03 (temporal)" in error and "python -m utils.run --dataset hmdb51" in error
    assert f"--run {RUN}" in error                       # the run that can be used
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path)
    (tmp_path / RUN / "spatial").mkdir(parents=True)
    (tmp_path / RUN / "spatial" / "best.keras").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing \S+temporal/best.keras\. Train"):
        predict.predict_video(clip, RUN)


def test_demo_clip(folders, capsys):
    clip = folders["demo_clip"]
    out = folders["root"] / "demo.png"
    assert predict.main([str(clip), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "This clip looks like a demo clip" in text and "WARNING" not in text
    assert f"the clip's folder names the class {clip.parent.name!r}" in text
    for title in predict.STREAM_TITLES.values():
        assert title in text
    ranked = [line.split()[1] for line in text.splitlines() if line[:5].strip().rstrip(".").isdigit()]
    assert len(ranked) == 15 and set(ranked) <= set(DEMO_CLASSES)
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] > 1000 and picture.std() > 10
    # the classes and the extraction came from the run's dataset and are now kept with the run
    info = json.loads((folders["root"] / "models" / RUN / predict.RUN_INFO_FILE).read_text())
    assert info["class_names"] == sorted(DEMO_CLASSES) and info["frame_size"] == [48, 48]
    assert info["extraction"]["method"] == "dis"


def test_prediction_scores(folders):
    prediction = predict.predict_video(folders["demo_clip"], RUN)
    spatial, temporal, fusion = (prediction.scores[s].scores[0] for s in ("spatial", "temporal", "fusion"))
    for probs in (spatial, temporal, fusion):
        assert probs.shape == (len(DEMO_CLASSES),) and abs(probs.sum() - 1) < 1e-4
    np.testing.assert_allclose(fusion, (spatial + temporal) / 2, atol=1e-6)
    assert prediction.top("fusion", 3)[0][0] == prediction.class_names[int(fusion.argmax())]
    assert prediction.n_frames == prediction.n_flows + 1
    assert prediction.flow_method == "dis" and prediction.stored_size == prediction.native_size == (48, 48)
    assert len(prediction.frames) == len(prediction.flows) == predict.N_PICTURES


def test_real_clip_with_demo_models_says_the_answer_is_meaningless(folders, capsys, monkeypatch):
    predict.load_run_info(RUN)           # recorded with the run, so the dataset folder is not needed
    monkeypatch.setattr(config_module, "DATA_DIR", folders["root"] / "no_data_here")
    assert predict.main([str(REAL_CLIP), "--max-frames", "24"]) == 0
    text = capsys.readouterr().out
    assert "WARNING: the models of run demo_split1 were trained on the synthetic demo dataset" in text
    assert "so the answer below is meaningless" in text
    assert "24 frames (320x240, extracted at 64x48)" in text      # resized to the demo frames' short side
    assert (folders["root"] / "report" / RUN / "predictions" / f"{REAL_CLIP.stem}.png").is_file()


def test_other_flow_method_is_noted(folders):
    prediction = predict.predict_video(folders["demo_clip"], RUN, flow_method="farneback")
    assert any("trained on 'dis' flow" in note for note in prediction.notes)


def test_run_without_info_or_dataset(folders, monkeypatch, tmp_path):
    run_dir = tmp_path / "models" / "mine_split1"
    for stream in ("spatial", "temporal"):
        (run_dir / stream).mkdir(parents=True)
        (run_dir / stream / "best.keras").symlink_to(folders["root"] / "models" / RUN / stream / "best.keras")
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(FileNotFoundError, match="cannot tell the classes of run 'mine_split1'.*--dataset PATH"):
        predict.predict_video(folders["demo_clip"], "mine_split1")
    (run_dir / predict.RUN_INFO_FILE).write_text(json.dumps({"class_names": ["a", "b"], "dataset": "mine"}))
    with pytest.raises(ValueError, match="predicts 9 classes but run 'mine_split1' has 2"):
        predict.predict_video(folders["demo_clip"], "mine_split1")
