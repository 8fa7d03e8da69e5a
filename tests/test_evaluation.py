"""Evaluation protocols, score files and fusion, on hand-made scores and a tiny extracted dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils import config as config_module
from utils import evaluation as ev
from utils.config import Config

L = 10  # stack length used throughout


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
def make_scores(videos, labels, probs, classes=("a", "b"), meta=None) -> ev.Scores:
    return ev.Scores(np.array(videos), np.array(labels), np.array(probs, dtype=np.float32),
                     list(classes), meta=meta or {})


def binary_from_margins(margins) -> np.ndarray:
    """Two-class softmax rows with p(class 0) - p(class 1) = margin."""
    m = np.asarray(margins, dtype=np.float64)
    return np.stack([(1 + m) / 2, (1 - m) / 2], axis=1)


class StubModel:
    """Returns a fixed softmax per class of input: the class is read from the input's mean value."""

    def __init__(self, n_classes):
        self.n_classes = n_classes
        self.batch_sizes = []

    def __call__(self, x):
        x = np.asarray(x)
        self.batch_sizes.append(len(x))
        cls = np.rint(x.reshape(len(x), -1).mean(axis=1)).astype(int) % self.n_classes
        out = np.full((len(x), self.n_classes), 0.1 / (self.n_classes - 1), dtype=np.float32)
        out[np.arange(len(x)), cls] = 0.9
        return out


class RecordingLoader:
    """Input loader that records what is requested and checks it against the folder on disk."""

    def __init__(self, value_of=None):
        self.requests = []        # (stream, video, positions)
        self.value_of = value_of or {}

    def __call__(self, stream, frames_path, positions, *, image_size, stack_length, batch_size, crops=1):
        frames_path = Path(frames_path)
        self.requests.append((stream, frames_path.name, list(positions)))
        n_flows = len(list(frames_path.glob("flow_x_*.jpg")))
        n_frames = len(list(frames_path.glob("img_*.jpg")))
        for p in positions:
            if stream == "temporal":
                assert 1 <= p and p + stack_length - 1 <= n_flows, (frames_path.name, p)
            else:
                assert 1 <= p <= n_frames, (frames_path.name, p)
        channels = 3 if stream == "spatial" else 2 * stack_length
        value = self.value_of.get(frames_path.name, 0)
        for i in range(0, len(positions), batch_size):
            n = len(positions[i:i + batch_size]) * crops
            yield np.full((n, image_size, image_size, channels), value, dtype=np.float32)


def write_rawframes(folder: Path, n_frames: int, size: int = 8) -> None:
    """A tiny extracted video: img_00001.jpg ... and flow_x/flow_y_00001.jpg ... (n_frames - 1)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_frames)
    for i in range(1, n_frames + 1):
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), rng.integers(0, 255, (size, size, 3), np.uint8))
        if i < n_frames:
            for axis in "xy":
                cv2.imwrite(str(folder / f"flow_{axis}_{i:05d}.jpg"),
                            rng.integers(100, 156, (size, size), np.uint8))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A 2-class dataset folder with extracted rawframes, and models/report redirected to tmp."""
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    root = tmp_path / "tinyset"
    videos = [  # (class, video, subset, n_frames)
        ("clap", "clap_a", "test", 11), ("clap", "clap_b", "test", 25), ("clap", "clap_c", "val", 14),
        ("wave", "wave_a", "test", 30), ("wave", "wave_b", "test", 12), ("wave", "wave_c", "val", 20),
        ("wave", "wave_d", "train", 15),
    ]
    rows = []
    for cls, video, subset, n in videos:
        frames_path = root / "rawframes" / cls / video
        write_rawframes(frames_path, n)
        rows.append({"video": video, "class_name": cls, "label": ["clap", "wave"].index(cls),
                     "subset": subset, "frames_path": frames_path, "n_frames": n, "n_flows": n - 1})
    cfg = Config(dataset=str(root), image_size=8)
    return cfg, pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# Which inputs each protocol uses
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_flows, expected", [(10, 1), (11, 1), (12, 2), (20, 6), (21, 6), (100, 46)])
def test_one_frame_start_is_middle_and_fits(n_flows, expected):
    start = ev.one_frame_start(n_flows, L)
    assert start == expected
    assert 1 <= start and start + L - 1 <= n_flows


def test_one_frame_start_rejects_short_clip():
    with pytest.raises(ValueError, match="too short"):
        ev.one_frame_start(9, L)


def test_input_positions_whole_video_and_stride():
    assert ev.input_positions("spatial", "whole_video", 5, 4, L) == [1, 2, 3, 4, 5]
    assert ev.input_positions("temporal", "whole_video", 15, 14, L) == [1, 2, 3, 4, 5]
    assert ev.input_positions("temporal", "whole_video", 15, 14, L, stride=2) == [1, 3, 5]
    assert ev.input_positions("spatial", "whole_video", 7, 6, L, stride=3) == [1, 4, 7]
    # one frame: a single input, the same position for both streams
    assert ev.input_positions("spatial", "one_frame", 31, 30, L) == [11]
    assert ev.input_positions("temporal", "one_frame", 31, 30, L) == [11]
    with pytest.raises(ValueError, match="protocol"):
        ev.input_positions("spatial", "ten_crops", 31, 30, L)


# ----------------------------------------------------------------------------------------
# Metrics and fusion on hand-made scores
# ----------------------------------------------------------------------------------------
def test_classification_metrics_by_hand():
    # 6 classes; class 0 has 3 videos (2 right), class 1 has 1 video (wrong, true class 2nd best)
    scores = np.full((4, 6), 0.0)
    scores[0, 0] = scores[1, 0] = 1.0                    # right
    scores[2, [3, 0]] = [0.6, 0.4]                       # wrong, true class 2nd
    scores[3, [2, 3, 4, 5, 0, 1]] = [.3, .25, .2, .15, .07, .03]  # true class 1 ranked 6th
    m = ev.classification_metrics([0, 0, 0, 1], scores)
    assert m["top1"] == pytest.approx(0.5)
    assert m["top5"] == pytest.approx(0.75)
    assert m["mean_class"] == pytest.approx((2 / 3 + 0) / 2)  # classes 2-5 have no videos
    assert m["n_videos"] == 4


def test_average_and_weighted_fusion():
    s = make_scores(["v1", "v2"], [0, 1], [[0.8, 0.2], [0.6, 0.4]])
    t = make_scores(["v1", "v2"], [0, 1], [[0.4, 0.6], [0.2, 0.8]])
    np.testing.assert_allclose(ev.average_fusion(s, t).scores, [[0.6, 0.4], [0.4, 0.6]])
    np.testing.assert_allclose(ev.weighted_fusion(s, t, 0.25).scores, [[0.5, 0.5], [0.3, 0.7]])
    assert ev.average_fusion(s, t).metrics()["top1"] == 1.0
    assert s.metrics()["top1"] == 0.5 and t.metrics()["top1"] == 0.5
    with pytest.raises(ValueError, match="weight"):
        ev.weighted_fusion(s, t, 1.5)


def test_product_fusion_needs_both_streams():
    # spatial: sure of the colour (classes 0/1), unsure which; temporal: sure of class 1 vs 2
    s = make_scores(["v"], [1], [[0.5, 0.4, 0.1]], classes=("a", "b", "c"))
    t = make_scores(["v"], [1], [[0.1, 0.45, 0.45]], classes=("a", "b", "c"))
    assert ev.average_fusion(s, t).predicted[0] == 1
    product = ev.product_fusion(s, t)
    np.testing.assert_allclose(product.scores[0], np.array([0.05, 0.18, 0.045]) / 0.275, rtol=1e-5)
    assert product.meta["fusion"] == "product"


def test_fusion_refuses_misaligned_scores():
    s = make_scores(["v1", "v2"], [0, 1], [[0.8, 0.2], [0.6, 0.4]])
    with pytest.raises(ValueError, match="different order"):
        ev.average_fusion(s, make_scores(["v2", "v1"], [1, 0], [[0.5, 0.5]] * 2))
    with pytest.raises(ValueError, match="only in the second: \\['v3'\\]"):
        ev.average_fusion(s, make_scores(["v1", "v3"], [0, 1], [[0.5, 0.5]] * 2))
    with pytest.raises(ValueError, match="labels"):
        ev.average_fusion(s, make_scores(["v1", "v2"], [0, 0], [[0.5, 0.5]] * 2))
    with pytest.raises(ValueError, match="class"):
        ev.average_fusion(s, make_scores(["v1", "v2"], [0, 1], [[0.5, 0.5]] * 2, classes=("a", "c")))


def validation_where_best_weight_is_0_7():
    """Four class-0 videos: fused correct iff w > 0.6, w > 0.675, w < 0.725, w < 0.8."""
    spatial_margin = [0.4, 0.325, -0.275, -0.2]
    temporal_margin = [-0.6, -0.675, 0.725, 0.8]
    videos = ["v1", "v2", "v3", "v4"]
    return (make_scores(videos, [0] * 4, binary_from_margins(spatial_margin)),
            make_scores(videos, [0] * 4, binary_from_margins(temporal_margin)))


def test_fusion_weight_chosen_on_validation():
    spatial_val, temporal_val = validation_where_best_weight_is_0_7()
    weight, table = ev.choose_fusion_weight(spatial_val, temporal_val)
    assert weight == pytest.approx(0.7)
    assert table.loc[table.weight.round(2) == 0.7, "top1"].item() == 1.0
    assert (table.loc[table.weight.round(2) != 0.7, "top1"] < 1.0).all()
    # ties on accuracy go to the lower negative log-likelihood
    weight, _ = ev.choose_fusion_weight(make_scores(["v"], [0], [[0.9, 0.1]]),
                                        make_scores(["v"], [0], [[0.6, 0.4]]))
    assert weight == 1.0


def test_fusion_results_take_weight_from_validation_not_test(tiny):
    cfg, _ = tiny
    spatial_val, temporal_val = validation_where_best_weight_is_0_7()
    ev.save_scores(ev.scores_path(cfg, "spatial", "one_frame", "val"), spatial_val)
    ev.save_scores(ev.scores_path(cfg, "temporal", "one_frame", "val"), temporal_val)
    # on the test videos w = 0.3 would be best: the report must not pick it
    test_videos = ["t1", "t2"]
    ev.save_scores(ev.scores_path(cfg, "spatial", "one_frame"),
                   make_scores(test_videos, [0, 0], binary_from_margins([0.1, -0.9])))
    ev.save_scores(ev.scores_path(cfg, "temporal", "one_frame"),
                   make_scores(test_videos, [0, 0], binary_from_margins([-0.2, 0.5])))
    results = ev.fusion_results(cfg, "one_frame")
    assert set(results) == {"spatial", "temporal", "average", "weighted"}
    assert results["weighted"].meta["weight"] == pytest.approx(0.7)
    np.testing.assert_allclose(results["weighted"].scores,
                               binary_from_margins([0.7 * 0.1 + 0.3 * -0.2, 0.7 * -0.9 + 0.3 * 0.5]),
                               rtol=1e-5)
    assert ev.fusion_results(cfg, "whole_video") == {}


def test_score_file_round_trip_is_atomic(tmp_path):
    s = make_scores(["(HQ)_a[1]", "b"], [0, 1], [[0.7, 0.3], [0.1, 0.9]], meta={"stride": 2})
    path = ev.save_scores(tmp_path / "deep" / "spatial_one_frame.npz", s)
    assert sorted(p.name for p in path.parent.iterdir()) == ["spatial_one_frame.npz"]
    back = ev.load_scores(path)
    assert list(back.video) == ["(HQ)_a[1]", "b"] and list(back.label) == [0, 1]
    np.testing.assert_allclose(back.scores, s.scores)
    assert back.class_names == ["a", "b"] and back.meta == {"stride": 2}
    with pytest.raises(FileNotFoundError, match="temporal_one_frame.npz"):
        ev.load_scores(tmp_path / "temporal_one_frame.npz")


# ----------------------------------------------------------------------------------------
# Running a model over a tiny extracted dataset
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", ev.STREAMS)
@pytest.mark.parametrize("protocol, stride", [("one_frame", 1), ("whole_video", 1), ("whole_video", 3)])
def test_every_test_video_scored_once_and_stacks_fit(tiny, stream, protocol, stride):
    cfg, index = tiny
    loader = RecordingLoader(value_of={"clap_a": 0, "clap_b": 0, "wave_a": 1, "wave_b": 1})
    model = StubModel(2)
    result = ev.evaluate_stream(cfg, stream, protocol, model=model, index=index, stride=stride,
                                batch_size=4, loader=loader, progress=False)
    test = index[index.subset == "test"]
    assert list(result.video) == list(test.video)
    assert sorted(v for _, v, _ in loader.requests) == sorted(test.video)  # each exactly once
    for (_, video, positions), n_inputs in zip(loader.requests, result.n_inputs):
        row = test.set_index("video").loc[video]
        if protocol == "one_frame":
            assert positions == [ev.one_frame_start(row.n_flows, L)]
        elif stream == "spatial":
            assert positions == list(range(1, row.n_frames + 1, stride))
        else:
            assert positions == list(range(1, row.n_flows - L + 2, stride))
            assert max(positions) + L - 1 <= row.n_flows
        assert n_inputs == len(positions)
    assert set(model.batch_sizes) == {4}          # full batches only (the last one padded)
    assert result.metrics()["top1"] == 1.0
    np.testing.assert_allclose(result.scores.sum(axis=1), 1.0, rtol=1e-5)
    saved = ev.load_scores(ev.scores_path(cfg, stream, protocol))
    assert list(saved.video) == list(test.video) and saved.meta["stride"] == stride
    assert saved.meta["checkpoint"] == "<model given in memory>"


def test_whole_video_averages_softmax_over_inputs(tiny):
    cfg, index = tiny
    calls = {"n": 0}

    def alternating(stream, frames_path, positions, **kw):  # inputs alternate class 0 / class 1
        for p in positions:
            calls["n"] += 1
            yield np.full((1, 8, 8, 3), p % 2, dtype=np.float32)

    result = ev.evaluate_stream(cfg, "spatial", "whole_video", model=StubModel(2), index=index,
                                loader=alternating, progress=False, batch_size=5)
    row = list(result.video).index("clap_a")          # 11 frames: 6 odd, 5 even
    np.testing.assert_allclose(result.scores[row], [(5 * 0.9 + 6 * 0.1) / 11, (6 * 0.9 + 5 * 0.1) / 11],
                               rtol=1e-5)
    assert calls["n"] == int(index[index.subset == "test"].n_frames.sum())


def test_validation_subset_and_file_name(tiny):
    cfg, index = tiny
    result = ev.evaluate_stream(cfg, "temporal", "one_frame", "val", model=StubModel(2), index=index,
                                loader=RecordingLoader(), progress=False)
    assert list(result.video) == ["clap_c", "wave_c"]
    assert ev.scores_path(cfg, "temporal", "one_frame", "val").name == "temporal_one_frame_val.npz"
    assert ev.scores_path(cfg, "temporal", "one_frame", "val").is_file()


def test_missing_extraction_is_an_error_naming_the_video(tiny):
    cfg, index = tiny
    index.loc[index.video == "wave_b", ["n_frames", "n_flows"]] = 0
    with pytest.raises(FileNotFoundError, match="wave/wave_b"):
        ev.evaluate_stream(cfg, "spatial", "one_frame", model=StubModel(2), index=index,
                           loader=RecordingLoader(), progress=False)
    with pytest.warns(UserWarning, match="wave_b"):
        result = ev.evaluate_stream(cfg, "spatial", "one_frame", model=StubModel(2), index=index,
                                    loader=RecordingLoader(), progress=False, allow_missing=True)
    assert "wave_b" not in result.video and result.meta["n_missing"] == 1


def test_saved_scores_reused_and_interrupted_run_resumes(tiny, monkeypatch):
    cfg, index = tiny
    checkpoint = Path(cfg.stream_dir("spatial")) / "best.keras"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"stand-in")
    loads = []
    monkeypatch.setattr(ev, "load_stream_model", lambda path: loads.append(path) or StubModel(2))

    class Interrupting(RecordingLoader):
        def __call__(self, stream, frames_path, positions, **kw):
            if len(self.requests) == 3:
                raise KeyboardInterrupt
            return super().__call__(stream, frames_path, positions, **kw)

    with pytest.raises(KeyboardInterrupt):
        ev.evaluate_stream(cfg, "spatial", "whole_video", index=index, loader=Interrupting(),
                           save_every=2, progress=False)
    out = ev.scores_path(cfg, "spatial", "whole_video")
    assert not out.exists() and len(ev.load_scores(out.with_name(out.stem + ".partial.npz"))) == 2

    resumed = RecordingLoader()
    result = ev.evaluate_stream(cfg, "spatial", "whole_video", index=index, loader=resumed,
                                save_every=2, progress=False)
    assert [v for _, v, _ in resumed.requests] == ["wave_a", "wave_b"]   # only what was left
    assert list(result.video) == ["clap_a", "clap_b", "wave_a", "wave_b"]
    assert not out.with_name(out.stem + ".partial.npz").exists()
    assert result.meta["checkpoint"] == str(checkpoint)

    again = RecordingLoader()
    n_loads = len(loads)
    ev.evaluate_stream(cfg, "spatial", "whole_video", index=index, loader=again, progress=False)
    assert again.requests == [] and len(loads) == n_loads          # reused, model not even loaded
    ev.evaluate_stream(cfg, "spatial", "whole_video", index=index, loader=again, progress=False,
                       stride=2)
    assert len(again.requests) == 4                                  # other settings: recomputed


def test_default_loader_matches_generators_and_reads_each_jpeg_once(tiny, monkeypatch):
    from utils import generators

    _, index = tiny
    path = index.set_index("video").loc["wave_a", "frames_path"]          # 30 frames, 29 flows
    flow_reads, frame_reads = [], []
    read_flow, read_frame = generators.read_flow_uint8, generators.read_frame
    monkeypatch.setattr(generators, "read_flow_uint8",
                        lambda p, t, n=10: flow_reads.append((t, n)) or read_flow(p, t, n))
    monkeypatch.setattr(generators, "read_frame", lambda p, i: frame_reads.append(i) or read_frame(p, i))

    starts = ev.input_positions("temporal", "whole_video", 30, 29, L)      # 1 ... 20
    batches = list(ev.load_video_inputs("temporal", path, starts, image_size=8, stack_length=L,
                                        batch_size=6))
    assert [len(b) for b in batches] == [6, 6, 6, 2]
    assert sorted(flow_reads) == [(t, 1) for t in range(1, 30)]          # each flow JPEG once
    frames = list(range(1, 31, 2))
    spatial = np.concatenate(list(ev.load_video_inputs("spatial", path, frames, image_size=8,
                                                       stack_length=L, batch_size=4)))
    assert sorted(frame_reads) == frames
    monkeypatch.undo()
    expected = np.stack([generators.temporal_input(path, s, 8, L) for s in starts])
    np.testing.assert_allclose(np.concatenate(batches), expected, atol=1e-6)
    expected = np.stack([generators.spatial_input(path, f, 8) for f in frames])
    np.testing.assert_allclose(spatial, expected, atol=1e-4)


def test_tiny_keras_model_on_real_inputs(tiny):
    import keras

    cfg, index = tiny
    inputs = keras.Input((8, 8, 2 * L))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    result = ev.evaluate_stream(cfg, "temporal", "whole_video", model=model, index=index,
                                progress=False, batch_size=8)
    test = index[index.subset == "test"]
    assert result.scores.shape == (4, 2)
    assert list(result.n_inputs) == list(test.n_flows - L + 1)
    np.testing.assert_allclose(result.scores.sum(axis=1), 1.0, rtol=1e-5)


def test_model_without_softmax_is_refused(tiny):
    cfg, index = tiny
    with pytest.raises(ValueError, match="softmax"):
        ev.evaluate_stream(cfg, "spatial", "one_frame", model=lambda x: np.full((len(x), 2), 3.0),
                           index=index, loader=RecordingLoader(), progress=False)


# ----------------------------------------------------------------------------------------
# The paper's test protocol: 25 equally spaced frames / stacks x 10 crops
# ----------------------------------------------------------------------------------------
def test_ten_crops_are_the_corners_and_centre_and_their_mirrors():
    from utils import generators

    boxes = generators.eval_crop_boxes(24, 32, crops=10)          # side round(24 * 0.875) = 21
    assert [b for b, _ in boxes[:5]] == [(0, 0, 21), (0, 11, 21), (3, 0, 21), (3, 11, 21), (1, 5, 21)]
    assert [b for b, _ in boxes[5:]] == [b for b, _ in boxes[:5]]
    assert [f for _, f in boxes] == [False] * 5 + [True] * 5
    assert generators.eval_crop_boxes(24, 32, crops=1) == [((1, 5, 21), False)]
    with pytest.raises(ValueError, match="crops"):
        generators.eval_crop_boxes(24, 32, crops=5)

    rng = np.random.default_rng(0)
    flow = rng.integers(60, 200, (24, 32, 2 * L), dtype=np.uint8)
    x = generators.temporal_test_inputs(flow, 21, crops=10)       # no resize: side == input size
    assert x.shape == (10, 21, 21, 2 * L)
    for k in range(5):
        plain, mirrored = x[k], x[5 + k]
        np.testing.assert_allclose(mirrored[:, :, 0::2], -plain[:, ::-1, 0::2], atol=1e-5)   # x negated
        np.testing.assert_allclose(mirrored[:, :, 1::2], plain[:, ::-1, 1::2], atol=1e-5)    # y kept
        top, left, side = boxes[k][0]
        np.testing.assert_allclose(plain, generators.flow_stack_input(flow, (top, left, side), 21, False))
    frame = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    rgb = generators.spatial_test_inputs(frame, 21, crops=10, preprocess=lambda a: a)
    for k in range(5):
        np.testing.assert_array_equal(rgb[5 + k], rgb[k][:, ::-1])     # frames: mirrored, nothing negated


@pytest.mark.parametrize("stream", ev.STREAMS)
def test_paper_protocol_scores_every_test_video_once(tiny, stream):
    cfg, index = tiny
    loader = RecordingLoader(value_of={"clap_a": 0, "clap_b": 0, "wave_a": 1, "wave_b": 1})
    result = ev.evaluate_stream(cfg, stream, "whole_video", model=StubModel(2), index=index, segments=25,
                                crops=10, batch_size=20, loader=loader, progress=False)
    test = index[index.subset == "test"].set_index("video")
    assert sorted(v for _, v, _ in loader.requests) == sorted(test.index)
    for (_, video, positions), n_inputs in zip(loader.requests, result.n_inputs):
        n = test.loc[video, "n_frames"] if stream == "spatial" else test.loc[video, "n_flows"] - L + 1
        assert positions == ev.input_positions(stream, "whole_video", test.loc[video, "n_frames"],
                                               test.loc[video, "n_flows"], L, segments=25)
        assert len(positions) == min(25, n) and positions == sorted(set(positions))
        assert n_inputs == 10 * len(positions)
    assert result.meta["segments"] == 25 and result.meta["crops"] == 10
    assert "25 equally spaced" in ev.describe_protocol(result.meta) and "10 crops" in ev.describe_protocol(result.meta)
    assert ev.input_positions("spatial", "whole_video", 100, 99, L, segments=25)[:3] == [3, 7, 11]


def test_scores_are_recomputed_when_what_made_them_changes(tiny, monkeypatch):
    cfg, index = tiny
    checkpoint = Path(cfg.stream_dir("spatial")) / "best.keras"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"stand-in")
    monkeypatch.setattr(ev, "load_stream_model", lambda path: StubModel(2))
    settings_file = Path(cfg.frames_dir) / "extraction_settings.json"
    settings_file.write_text('{"method": "tvl1", "size": null}')

    def scored(**kw):
        loader = RecordingLoader()
        ev.evaluate_stream(kw.pop("cfg", cfg), "spatial", "one_frame", index=index, loader=loader,
                           progress=False, **kw)
        return len(loader.requests)

    assert scored() == 4 and scored() == 0                               # the second time: read back
    settings_file.write_text('{"method": "dis", "size": null}')           # flow re-extracted with DIS
    assert scored() == 4 and scored() == 0
    assert scored(cfg=cfg.override(stack_length=5)) == 4                 # the one-frame position moves
    assert scored(crops=10) == 4
    stat = checkpoint.stat()
    checkpoint.write_bytes(b"another model")                              # same name, same time
    import os
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scored(crops=10) == 4


def test_temporal_stack_length_must_match_the_config(tiny):
    import keras

    cfg, index = tiny
    inputs = keras.Input((8, 8, 2 * 5))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(ValueError, match="L = 5 flows, but stack_length = 10: pass stack_length=5"):
        ev.evaluate_stream(cfg, "temporal", "one_frame", model=model, index=index, progress=False)
    result = ev.evaluate_stream(cfg.override(stack_length=5), "temporal", "one_frame", model=model,
                                index=index, progress=False)
    assert result.meta["stack_length"] == 5
