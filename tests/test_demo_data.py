"""The built-in demo dataset: HMDB51 layout, determinism, and the two-factor design."""
import dataclasses
import re
import time
import warnings

import cv2
import numpy as np
import pytest

from utils.config import Config
from utils.demo_data import (
    APPEARANCES,
    DEFAULT_OPTIONS,
    DEMO_CLASSES,
    DEMO_SETTINGS,
    MANIFEST_NAME,
    MOTIONS,
    _ycbcr_to_rgb,
    demo_class_factors,
    demo_flow_options,
    ensure_demo_dataset,
    main,
    make_demo_dataset,
    plan_clips,
    render_clip,
    render_luma_and_chroma,
    write_video,
)

# Small datasets for the quicker tests: 9 classes x 6 clips of 11-12 frames.
SMALL = dict(clips_per_class=6, test_per_split=2, unused_per_split=1, frames=(11, 12))
HMDB_NAME = re.compile(
    r"^(?P<source>[^_]+)_(?P<class_name>.+)_[fulh]_(cm|nm)_np\d+_(fr|ba|le|ri)_(bad|med|goo)_\d+\.avi$"
)
SPLIT_LINE = re.compile(r"^\S+\.avi [012] \n$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo dataset, made through ensure_demo_dataset, with its making time."""
    root = tmp_path_factory.mktemp("data") / "demo"
    started = time.perf_counter()
    made = ensure_demo_dataset(Config(dataset=str(root)))
    return made, time.perf_counter() - started


def read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def split_codes(root):
    """{(class, split): {filename: code}} parsed with a strict reading of the HMDB51 format."""
    table = {}
    for class_name in DEMO_CLASSES:
        for split in (1, 2, 3):
            path = root / "splits" / f"{class_name}_test_split{split}.txt"
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            assert lines and all(SPLIT_LINE.match(line) for line in lines), path
            table[class_name, split] = {line.split()[0]: int(line.split()[1]) for line in lines}
    return table


def test_made_in_a_few_seconds_and_ensure_is_a_no_op_afterwards(demo):
    root, seconds = demo
    assert seconds < 30, f"making the demo dataset took {seconds:.1f} s"
    assert root == Config(dataset=str(root)).data_root
    before = (root / MANIFEST_NAME).stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ensure_demo_dataset(Config(dataset=str(root))) == root
    assert (root / MANIFEST_NAME).stat().st_mtime_ns == before
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_layout_is_hmdb51(demo):
    root, _ = demo
    classes = sorted(DEMO_CLASSES)
    assert sorted(p.name for p in (root / "videos").iterdir()) == classes
    assert len(list((root / "splits").iterdir())) == 3 * len(classes)
    codes = split_codes(root)
    n_clips = DEFAULT_OPTIONS["clips_per_class"]
    for class_name in classes:
        on_disk = sorted(p.name for p in (root / "videos" / class_name).iterdir())
        assert len(on_disk) == n_clips
        for split in (1, 2, 3):
            listed = codes[class_name, split]
            assert sorted(listed) == on_disk  # every clip listed once per split, every listed clip exists
            counts = np.bincount(list(listed.values()), minlength=3)
            assert counts[2] == DEFAULT_OPTIONS["test_per_split"]
            assert counts[0] == DEFAULT_OPTIONS["unused_per_split"]
            assert counts[1] == n_clips - counts[0] - counts[2]
        assert len({tuple(sorted(codes[class_name, s].items())) for s in (1, 2, 3)}) == 3  # splits differ
        for name in on_disk:
            match = HMDB_NAME.match(name)
            assert match and match["class_name"] == class_name, name


def test_every_video_decodes_with_enough_frames(demo):
    root, _ = demo
    width, height = DEFAULT_OPTIONS["frame_size"]
    low, high = DEFAULT_OPTIONS["frames"]
    assert low >= DEMO_SETTINGS["stack_length"] + 1
    lengths = []
    for path in sorted((root / "videos").glob("*/*.avi")):
        frames = read_video(path)
        assert frames.shape[1:] == (height, width, 3), path
        assert low <= len(frames) <= high, path
        lengths.append(len(frames))
    assert len(lengths) == len(DEMO_CLASSES) * DEFAULT_OPTIONS["clips_per_class"]
    assert len(set(lengths)) > 1  # clip length is a nuisance that varies


def test_every_source_holds_one_clip_of_every_class_and_stays_on_one_side(demo):
    root, _ = demo
    codes = split_codes(root)
    classes_of = {}
    for class_name in DEMO_CLASSES:
        for name in codes[class_name, 1]:
            classes_of.setdefault(HMDB_NAME.match(name)["source"], []).append(class_name)
    assert len(classes_of) == DEFAULT_OPTIONS["clips_per_class"]
    for classes in classes_of.values():
        assert sorted(classes) == sorted(DEMO_CLASSES)  # the background says nothing about the class
    for split in (1, 2, 3):
        roles = {}
        for class_name in DEMO_CLASSES:
            for name, code in codes[class_name, split].items():
                roles.setdefault(HMDB_NAME.match(name)["source"], set()).add(code)
        assert all(len(role) == 1 for role in roles.values())  # whole sources per role, across classes


def test_backgrounds_are_grey():
    spec = plan_clips(0)[3]
    _, chroma = render_luma_and_chroma(spec)
    saturation = np.hypot(chroma[..., 0], chroma[..., 1])
    assert (saturation < 1e-3).mean() > 0.6       # most of the frame: background, no colour at all
    assert (saturation > 20).any()                 # the square


def test_clips_of_a_source_share_their_background():
    specs = plan_clips(0)
    by_source = {}
    for spec in specs:
        by_source.setdefault(spec.source, []).append(spec)
    pairs = [group[:2] for group in by_source.values() if len(group) >= 2]
    assert len(pairs) >= 9
    for first, second in pairs[:5]:
        luma_a, _ = render_luma_and_chroma(first)
        luma_b, _ = render_luma_and_chroma(second)
        same = np.isclose(luma_a[0], luma_b[0], atol=1e-3)  # equal except under the two squares
        assert same.mean() > 0.75, first.source
    other = next(g[0] for g in by_source.values() if g[0].source != pairs[0][0].source)
    assert np.isclose(render_luma_and_chroma(other)[0][0], render_luma_and_chroma(pairs[0][0])[0][0]).mean() < 0.1


def test_a_stream_has_nothing_to_learn_about_the_factor_it_cannot_see():
    """In a source, the three colours of a motion are one clip in grayscale (the temporal stream's
    input), and "down" is "up" played backwards (the same frames for the spatial stream)."""
    import cv2

    specs = {(s.source, s.class_name): s for s in plan_clips(0)}
    static = sorted({s.source for s in specs.values() if s.camera_velocity == (0.0, 0.0)})
    assert len(static) >= 5
    for source in static[:3]:
        gray = {name: np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in render_clip(specs[source, name])])
                for name in ("red_up", "green_up", "blue_up", "red_down", "red_sideways")}
        for other in ("green_up", "blue_up"):
            assert np.abs(gray[other].astype(int) - gray["red_up"]).max() <= 2, (source, other)
        assert np.abs(gray["red_down"][::-1].astype(int) - gray["red_up"]).max() <= 2, source
        assert np.abs(gray["red_sideways"].astype(int) - gray["red_up"]).max() > 20      # it does move otherwise


def test_index_from_utils_dataset(demo):
    dataset = pytest.importorskip("utils.dataset")
    root, _ = demo
    index = dataset.build_index(Config(dataset=str(root)), strict=True)
    assert len(index) == len(DEMO_CLASSES) * DEFAULT_OPTIONS["clips_per_class"]
    assert index["has_video"].all()
    assert sorted(index["class_name"].unique()) == sorted(DEMO_CLASSES)
    assert set(index["subset"]) == {"train", "val", "test", "unused"}
    assert index["source"].str.fullmatch(r"demosrc\d+").all()
    train_sources = set(index.loc[index["subset"] == "train", "source"])
    assert not train_sources & set(index.loc[index["subset"] == "val", "source"])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = make_demo_dataset(tmp_path / "a", seed=3, **SMALL)
    make_demo_dataset(tmp_path / "b", seed=3, **SMALL)
    make_demo_dataset(tmp_path / "c", seed=4, **SMALL)
    assert first["created"] and first["videos"] == 9 * SMALL["clips_per_class"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    some_video = next(p for p in files if p.suffix == ".avi")
    np.testing.assert_array_equal(read_video(tmp_path / "a" / some_video), read_video(tmp_path / "b" / some_video))
    assert split_codes(tmp_path / "a") != split_codes(tmp_path / "c")
    names_c = sorted(p.name for p in (tmp_path / "c").rglob("*.avi"))
    assert names_c != sorted(p.name for p in files if p.suffix == ".avi")


def test_refuses_to_overwrite_a_different_dataset(tmp_path):
    root = tmp_path / "demo"
    make_demo_dataset(root, seed=1, **SMALL)
    again = make_demo_dataset(root, seed=1, **SMALL)
    assert not again["created"]
    with pytest.raises(FileExistsError, match="overwrite"):
        make_demo_dataset(root, seed=2, **SMALL)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other files"):
        make_demo_dataset(tmp_path / "other", **SMALL)
    replaced = make_demo_dataset(root, seed=2, overwrite=True, **SMALL)
    assert replaced["created"] and '"seed": 2' in (root / MANIFEST_NAME).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "other"]  # no temporary folders left


def test_bad_options_are_errors(tmp_path):
    with pytest.raises(TypeError, match="unknown"):
        make_demo_dataset(tmp_path / "x", clip_count=3)
    with pytest.raises(ValueError, match="frames"):
        make_demo_dataset(tmp_path / "x", frames=(9, 5))
    assert not (tmp_path / "x").exists()


def test_cli_reports_an_existing_dataset(demo, capsys):
    root, _ = demo
    summary = main(["--root", str(root), "--seed", "0"])
    assert not summary["created"] and "already there" in capsys.readouterr().out


def test_ensure_warns_about_a_demo_dataset_from_other_settings(tmp_path):
    root = tmp_path / "demo"
    make_demo_dataset(root, seed=0, **SMALL)
    with pytest.warns(UserWarning, match="--overwrite"):
        assert ensure_demo_dataset(Config(dataset=str(root))) == root


def test_ensure_replaces_a_demo_dataset_of_an_older_generator(tmp_path, capsys):
    import json

    root = tmp_path / "demo"
    make_demo_dataset(root, seed=0, **SMALL)
    (root / "rawframes" / "old").mkdir(parents=True)
    manifest = json.loads((root / "demo_dataset.json").read_text())
    (root / "demo_dataset.json").write_text(json.dumps({**manifest, "version": manifest["version"] - 1}))
    assert ensure_demo_dataset(Config(dataset=str(root))) == root
    assert "making version" in capsys.readouterr().out
    assert json.loads((root / "demo_dataset.json").read_text())["options"]["clips_per_class"] == \
        DEFAULT_OPTIONS["clips_per_class"]
    assert not (root / "rawframes").exists()


def test_ensure_refuses_to_fake_hmdb51(monkeypatch, tmp_path):
    monkeypatch.setattr("utils.config.DATA_DIR", tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="HMDB51"):
        ensure_demo_dataset(Config(dataset="hmdb51"))
    assert not (tmp_path / "data" / "hmdb51").exists()


# --------------------------------------------------------------------------------------
# The design: colour x motion, each stream sees only one factor
# --------------------------------------------------------------------------------------
def test_classes_are_colour_times_motion():
    assert len(DEMO_CLASSES) == len(APPEARANCES) * len(MOTIONS)
    assert {demo_class_factors(name) for name in DEMO_CLASSES} == {(a, m) for a in APPEARANCES for m in MOTIONS}
    assert demo_class_factors("red_up") == ("red", "up")
    with pytest.raises(KeyError, match="not a demo class"):
        demo_class_factors("brush_hair")


def test_motions_survive_a_horizontal_flip():
    # The temporal stream's augmentation mirrors flow (x -> -x): each motion's set of directions
    # must map onto itself, so a flipped clip keeps its label.
    for directions in MOTIONS.values():
        flipped = {(180.0 - d) % 360 for d in directions}
        assert flipped == {d % 360 for d in directions}


def test_recommended_crops_always_show_part_of_the_square():
    # A square crop of side c in a frame of side F can miss a square of side >= F - c + 1 only if
    # it fits in the strip left over, which it cannot (also when the square wraps around an edge).
    width, height = DEFAULT_OPTIONS["frame_size"]
    smallest_square = min(s.side for s in plan_clips(0))
    for scale in (*DEMO_SETTINGS["crop_scales"], 0.875):  # training crops and the evaluation crop
        crop = round(min(width, height) * scale)
        assert smallest_square > max(width, height) - crop
    assert round(min(width, height) * 0.875) == DEMO_SETTINGS["image_size"]


def test_colour_table_has_equal_luma():
    weights = np.array([0.299, 0.587, 0.114])
    for hue in APPEARANCES.values():
        for radius in (28.0, 38.0):
            angle = np.deg2rad(hue)
            rgb = _ycbcr_to_rgb(np.float64(120.0), radius * np.cos(angle), radius * np.sin(angle))
            assert abs(rgb @ weights - 120.0) < 0.01
            assert np.ptp(rgb) > 40  # and clearly coloured


def test_colours_vanish_in_grayscale(tmp_path):
    spec = plan_clips(0)[7]
    decoded = {}
    for name, hue in APPEARANCES.items():
        rgb = render_clip(dataclasses.replace(spec, hue=hue))
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]).astype(int)
        write_video(tmp_path / f"{name}.avi", rgb, quality=spec.jpeg_quality)
        decoded[name] = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in read_video(tmp_path / f"{name}.avi")])
        decoded[name] = decoded[name].astype(int), gray
    (red, red_raw), (green, green_raw), (blue, blue_raw) = decoded.values()
    assert np.abs(red_raw - green_raw).max() <= 1 and np.abs(red_raw - blue_raw).max() <= 1
    for other in (green, blue):  # after MJPG: only JPEG rounding noise is left
        assert np.abs(red - other).mean() < 0.5
        assert np.mean(np.abs(red - other) > 2) < 0.02


def test_nuisances_do_not_depend_on_the_class():
    specs = plan_clips(0)
    width, height = DEFAULT_OPTIONS["frame_size"]
    by_colour = {a: [s for s in specs if demo_class_factors(s.class_name)[0] == a] for a in APPEARANCES}
    by_motion = {m: [s for s in specs if demo_class_factors(s.class_name)[1] == m] for m in MOTIONS}
    for groups in (by_colour, by_motion):
        for field in ("side", "luma_mean", "n_frames"):
            means = [np.mean([getattr(s, field) for s in group]) for group in groups.values()]
            spread = np.std([getattr(s, field) for s in specs])
            assert np.ptp(means) < spread, field  # group means agree within one overall std
    for s in specs:
        half = (s.n_frames - 1) / 2                   # the square is in the frame at the clip's middle
        assert 0 <= s.start[0] + s.velocity[0] * half < width and 0 <= s.start[1] + s.velocity[1] * half < height
        vx, vy = s.velocity
        motion = demo_class_factors(s.class_name)[1]
        assert {"up": vy < -abs(vx), "down": vy > abs(vx), "sideways": abs(vx) > abs(vy)}[motion]
    sideways = [s.velocity[0] > 0 for s in by_motion["sideways"]]
    assert 0 < sum(sideways) < len(sideways)  # both left and right


def test_colour_from_one_frame_and_motion_from_grayscale_flow(tmp_path):
    """Each factor is recoverable from what its stream sees (so the two-stream fusion can solve it)."""
    make_demo_dataset(tmp_path / "demo", seed=0, **SMALL)
    hues = {name: np.deg2rad(h) for name, h in APPEARANCES.items()}
    for path in sorted((tmp_path / "demo" / "videos").glob("*/*.avi")):
        appearance, motion = demo_class_factors(path.parent.name)
        frames = read_video(path)
        # Colour: hue of the most saturated pixels of one frame.
        chroma = cv2.cvtColor(frames[len(frames) // 2], cv2.COLOR_BGR2YCrCb)[..., 1:].reshape(-1, 2) - 128.0
        cr, cb = chroma[np.argsort(np.hypot(*chroma.T))[-60:]].mean(axis=0)
        nearest = min(hues, key=lambda n: abs(np.angle(np.exp(1j * (np.arctan2(cr, cb) - hues[n])))))
        assert nearest == appearance, path.name
        # Motion: mean Farneback flow of the grayscale clip, relative to the background's.
        gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
        moving = []
        for a, b in zip(gray[:-1], gray[1:]):
            flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            relative = flow.reshape(-1, 2) - np.median(flow.reshape(-1, 2), axis=0)
            speed = np.hypot(*relative.T)
            moving.append(relative[speed >= min(0.5, speed.max())].mean(axis=0))
        fx, fy = np.mean(moving, axis=0)
        guessed = "sideways" if abs(fx) > abs(fy) else ("up" if fy < 0 else "down")
        assert guessed == motion, path.name


def test_the_demos_lighter_tvl1_gives_the_flow_of_the_defaults(tmp_path):
    """DEMO_SETTINGS["tvl1_options"] (3 levels, 3 warps; half the time) stays within 0.1 px of OpenCV's
    defaults on the pixels that move, on every demo motion."""
    from utils import flow as flow_lib
    assert demo_flow_options("tvl1") == DEMO_SETTINGS["tvl1_options"] and demo_flow_options("dis") == {}
    make_demo_dataset(tmp_path / "demo", seed=0, **SMALL)
    for motion in MOTIONS:
        path = sorted((tmp_path / "demo" / "videos" / f"red_{motion}").glob("*.avi"))[0]
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in read_video(path)[:6]])
        default = flow_lib.video_flow(gray, "tvl1")
        light = flow_lib.video_flow(gray, "tvl1", **demo_flow_options("tvl1"))
        moving = np.hypot(default[..., 0], default[..., 1]) > 0.5
        assert moving.sum() > 100, path.name
        error = np.hypot(*(light - default)[moving].T)
        assert error.mean() < 0.1, (path.name, error.mean())


def test_clip_spec_speed_and_edges():
    from dataclasses import replace

    from utils.demo_data import clip_spec, crosses_edge, plan_clips, speed_range_px

    specs = plan_clips(0)
    low, high = speed_range_px()
    speeds = [float(np.hypot(*s.velocity)) for s in specs]
    assert low <= min(speeds) and max(speeds) <= high and high < 2.0
    assert clip_spec(specs[5].filename) == specs[5] == clip_spec(specs[5].filename[:-4])
    with pytest.raises(KeyError, match="not a clip of the demo dataset"):
        clip_spec("nothing_here")
    still = replace(specs[0], start=(10.0, 10.0), velocity=(0.0, 0.0))
    assert not crosses_edge(still)
    assert crosses_edge(replace(still, velocity=(3.0, 0.0)))          # 10 + 3t + side passes 48 px
    assert crosses_edge(replace(still, start=(40.0, 10.0)))          # the square sticks out on the right
