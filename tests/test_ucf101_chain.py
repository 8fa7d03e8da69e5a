"""The whole chain on UCF101: clips with real UCF101 names (synthetic content, written with OpenCV) and
official-format lists made here -> index -> extraction -> generators -> tiny models trained one step ->
evaluation scores and fusion. Nothing downstream of the index knows which dataset it reads."""
import shutil
import warnings
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from utils import config as config_module
from utils import evaluation as ev
from utils import generators, models
from utils.config import Config
from utils.dataset import build_index
from utils.extract import extract_dataset

UCF101_SPLITS = Path(__file__).resolve().parent / "data" / "ucf101_splits"
# Folder -> the class part of its file names (UCF101 spells one class differently in the two places).
CLASSES = {"ApplyEyeMakeup": "ApplyEyeMakeup", "Hammering": "Hammering", "HammerThrow": "HammerThrow",
           "HandstandPushups": "HandStandPushups"}
GROUPS = (1, 8, 15, 22, 23)     # test in split 1, 2, 3 (UCF101's held-out groups 1-7, 8-14, 15-21), then train
N_FRAMES, SIZE, IMAGE_SIZE = 12, 48, 32


def write_clip(path: Path, class_number: int, group: int) -> None:
    """A square sliding over a noisy background: colour and direction from the class, background from the group."""
    rng = np.random.default_rng(group)
    background = rng.integers(40, 200, (SIZE + 24, SIZE + 24, 3), dtype=np.uint8)
    colour = [(40, 40, 220), (40, 220, 40), (220, 40, 40), (220, 220, 40)][class_number]
    dx, dy = [(2, 0), (0, 2), (-2, 0), (0, -2)][class_number]
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), 25, (SIZE, SIZE))
    assert writer.isOpened()
    for t in range(N_FRAMES):
        frame = background[12:12 + SIZE, 12:12 + SIZE].copy()
        x, y = (14 + dx * t) % (SIZE - 12), (14 + dy * t) % (SIZE - 12)
        frame[y:y + 12, x:x + 12] = colour
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory):
    """videos/<Class>/v_<Class>_g<GG>_c01.avi and splits/ with the real classInd.txt and lists written here."""
    root = tmp_path_factory.mktemp("ucf101")
    (root / "splits").mkdir()
    shutil.copy(UCF101_SPLITS / "classInd.txt", root / "splits" / "classInd.txt")   # all 101 classes, CRLF
    number = {line.split()[1]: int(line.split()[0]) for line in (root / "splits" / "classInd.txt").read_text().splitlines()}
    for k in (1, 2, 3):
        train, test = [], []
        for i, (folder, spelling) in enumerate(CLASSES.items()):
            (root / "videos" / folder).mkdir(parents=True, exist_ok=True)
            for group in GROUPS:
                name = f"v_{spelling}_g{group:02d}_c01.avi"
                if k == 1:
                    write_clip(root / "videos" / folder / name, i, group)
                if 7 * k - 6 <= group <= 7 * k:
                    test.append(f"{folder}/{name}\r\n")
                else:
                    train.append(f"{folder}/{name} {number[folder]}\r\n")
        (root / "splits" / f"trainlist0{k}.txt").write_bytes("".join(train).encode())
        (root / "splits" / f"testlist0{k}.txt").write_bytes("".join(test).encode())
    return root


def tiny_spatial_model(n_classes: int) -> keras.Model:
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Rescaling(1 / 128)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x))


def train_one_step(model, data) -> float:
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    history = model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    return history.history["loss"][0]


def test_ucf101_whole_chain(ucf_root, tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    cfg = Config(dataset=str(ucf_root), split=1, val_fraction=0.25, image_size=IMAGE_SIZE)
    keras.utils.set_random_seed(0)

    # index: labels in classInd order (Hammering before HammerThrow), groups as sources
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # every listed clip is on disk: no warning
        index = build_index(cfg)
    assert len(index) == 20 and index["has_video"].all()
    classes = ev.index_class_names(index)          # all 101 of classInd.txt: label = index - 1, kept
    official = [line.split()[1] for line in (ucf_root / "splits" / "classInd.txt").read_text().splitlines()]
    assert classes == official and [classes.index(c) for c in CLASSES] == [0, 34, 35, 36]
    assert set(index.loc[index["subset"] == "test", "source"]) == {"g01"}
    val_groups = index[index["subset"] == "val"].groupby("class_name")["source"].agg(frozenset)
    assert len(val_groups) == 4 and val_groups.nunique() == 1     # one group, in every class
    assert not set(next(iter(val_groups))) & set(index.loc[index["subset"] == "train", "source"])

    # extraction with a fast flow method, then the index sees the frames
    summary = extract_dataset(cfg.videos_dir, cfg.frames_dir, method="dis-ultrafast", workers=1, progress=False)
    assert summary.done == 20 and summary.failed == 0
    index = build_index(cfg)
    assert (index["n_frames"] == N_FRAMES).all() and (index["n_flows"] == N_FRAMES - 1).all()

    # generators -> tiny models trained one step
    train, val = index[index["subset"] == "train"], index[index["subset"] == "val"]
    trained = {
        "spatial": (tiny_spatial_model(len(classes)),
                    generators.SpatialFrames(train, training=True, image_size=IMAGE_SIZE, batch_size=8)),
        "temporal": (models.build_temporal_model(len(classes), image_size=IMAGE_SIZE, width=0.03, dropout=0.0),
                     generators.FlowStacks(train, training=True, image_size=IMAGE_SIZE, batch_size=8)),
    }
    for stream, (model, data) in trained.items():
        x, y = data[0]
        assert x.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE) and set(y) <= set(range(len(classes)))
        assert np.isfinite(train_one_step(model, data))

    # evaluation: score files of the test videos, class names and labels of classInd.txt; fusion
    test_videos = index.loc[index["subset"] == "test", "video"].tolist()
    scores, val_scores = {}, {}
    for stream, (model, _) in trained.items():
        scores[stream] = ev.evaluate_stream(cfg, stream, "whole_video", model=model, index=index, progress=False)
        val_scores[stream] = ev.evaluate_stream(cfg, stream, "one_frame", "val", model=model, index=index,
                                                progress=False)
        assert ev.scores_path(cfg, stream, "whole_video").is_file()
        saved = ev.load_scores(ev.scores_path(cfg, stream, "whole_video"))
        assert saved.class_names == classes and saved.video.tolist() == test_videos
        assert saved.label.tolist() == [0, 34, 35, 36] and np.allclose(saved.scores.sum(axis=1), 1, atol=1e-4)
        assert val_scores[stream].video.tolist() == val["video"].tolist()
    fused = ev.average_fusion(scores["spatial"], scores["temporal"])
    assert set(fused.metrics()) == {"top1", "top5", "mean_class", "n_videos"} and fused.metrics()["n_videos"] == 4
    weight, _ = ev.choose_fusion_weight(val_scores["spatial"], val_scores["temporal"])
    assert 0.0 <= weight <= 1.0
    assert cfg.run_name == f"{ucf_root.name}_split1"
