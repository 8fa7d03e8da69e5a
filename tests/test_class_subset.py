"""A class subset (``Config(classes=...)``, ``-p classes=...``): its own run, labels 0 .. k-1 everywhere."""
from __future__ import annotations

import ast
import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils import config as config_module
from utils import dataset
from utils import evaluation as ev
from utils import generators, mmaction_lists, run, sg3i, split_formats
from utils.config import CLASS_SUBSETS, Config, resolve_classes

SPLITS_FIXTURE = Path(__file__).parent / "data" / "hmdb51_splits"
STANFORD40 = sorted(CLASS_SUBSETS["stanford40"])


def quiet_index(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # no videos on disk: only the split files matter
        return dataset.build_index(cfg)


def test_the_stanford40_subset_of_hmdb51_is_relabelled_in_hmdb51s_order(tmp_path):
    shutil.copytree(SPLITS_FIXTURE, tmp_path / "hmdb51" / "splits")
    root = str(tmp_path / "hmdb51")
    full, subset = quiet_index(Config(dataset=root)), quiet_index(Config(dataset=root, classes="stanford40"))
    assert set(STANFORD40) <= set(dataset.HMDB51_CLASSES) and len(STANFORD40) == 12
    assert dataset.class_names(Config(dataset=root, classes="stanford40")) == STANFORD40
    assert ev.index_class_names(subset) == STANFORD40                       # labels 0 .. 11, sorted as HMDB51's
    assert dict(zip(subset.class_name, subset.label)) == {c: i for i, c in enumerate(STANFORD40)}
    counts = subset.groupby("class_name")["split1"].value_counts().unstack()
    assert (counts["train"] == 70).all() and (counts["test"] == 30).all()
    # the same videos keep the same roles: the validation carve-out is the full dataset's
    same = full.set_index("video").loc[subset.video, "subset"]
    assert list(same) == list(subset.subset)
    assert (subset.subset == "val").any()
    names = Config(dataset=root, classes="stanford40").run_name
    assert names.startswith("hmdb51_split1_12cls-") and names == Config(dataset=root, classes=STANFORD40[::-1]).run_name
    assert Config(dataset=root, classes=STANFORD40[:11]).run_name != names != Config(dataset=root).run_name
    with pytest.raises(ValueError, match=r"\['dance'\] are not classes of"):
        quiet_index(Config(dataset=root, classes=["clap", "dance"]))


def test_classes_from_a_file_a_name_or_a_list(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("# my course\nwave\n\nclap   # two classes\n")
    assert resolve_classes(str(names)) == ("wave", "clap")
    assert resolve_classes("clap,wave") == resolve_classes("[clap, wave]") == resolve_classes(["clap", "wave"])
    assert resolve_classes("stanford40") == CLASS_SUBSETS["stanford40"]
    with pytest.raises(ValueError, match="named twice: clap"):
        resolve_classes(["clap", "wave", "clap"])
    with pytest.raises(ValueError, match="not found"):
        resolve_classes(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no class"):
        resolve_classes(str(empty))


def write_rawframes(folder: Path, n_frames: int, value: int, size: int = 8) -> None:
    """An extracted video whose frames and flows are flat ``value`` images (so a stub model can tell it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n_frames + 1):
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), np.full((size, size, 3), value, np.uint8))
        if i < n_frames:
            for axis in "xy":
                cv2.imwrite(str(folder / f"flow_{axis}_{i:05d}.jpg"), np.full((size, size), 128, np.uint8))


@pytest.fixture
def three_classes(tmp_path, monkeypatch):
    """Classes a, b, c (4 training sources, 1 test source each) with extracted frames and flows."""
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    root = tmp_path / "abc"
    (root / "splits").mkdir(parents=True)
    for k, name in enumerate("abc"):
        lines = [(f"s{s}_{name}_f_nm_np1_fr_goo_0.avi", 2 if s == 4 else 1) for s in range(5)]
        for split in (1, 2, 3):
            (root / "splits" / f"{name}_test_split{split}.txt").write_text("".join(f"{v} {c} \n" for v, c in lines))
        for video, _ in lines:
            write_rawframes(root / "rawframes" / name / Path(video).stem, 5, value=40 * (k + 1))
    return root


def test_labels_agree_across_streams_evaluation_and_lists(three_classes):
    cfg = Config(dataset=str(three_classes), classes=["c", "b"], stack_length=2, image_size=8)
    index = quiet_index(cfg)
    label = {"b": 0, "c": 1}                                   # the dataset's order, not the order given
    assert dict(zip(index.class_name, index.label)) == label and dataset.class_names(cfg) == ["b", "c"]

    rows = index[index.subset != "test"]
    for data in (generators.SpatialFrames(rows, training=False, image_size=8, batch_size=64),
                 generators.FlowStacks(rows, training=False, image_size=8, stack_length=2, batch_size=64),
                 sg3i.SG3IFrames(rows, training=False, image_size=8, span=2, batch_size=64)):
        _, y = data[0]
        assert list(y) == [label[c] for c in rows.class_name], type(data).__name__

    def model(x):          # "b" frames are grey 80, "c" frames 120 (ImageNet mean subtracted: -35 / +5)
        value = np.asarray(x).reshape(len(x), -1).mean(axis=1)
        p_c = np.where(np.abs(value) < 1e-3, 0.5, np.where(value > -15, 0.9, 0.1))   # flat flow: no idea
        return np.stack([1 - p_c, p_c], axis=1)

    scores = {stream: ev.evaluate_stream(cfg, stream, "one_frame", model=model, index=index, progress=False)
              for stream in ev.ALL_STREAMS}
    for stream, s in scores.items():
        assert s.class_names == ["b", "c"] and list(s.label) == [label[v.split("_")[1]] for v in s.video], stream
    ev.check_aligned(scores["spatial"], scores["sg3i"])
    assert ev.average_fusion(scores["spatial"], scores["temporal"]).metrics()["top1"] == 1.0

    written = mmaction_lists.write_lists(cfg, index)
    folder = three_classes / f"lists{cfg.variant}"
    assert {p.parent for p in written["files"]} == {folder} and cfg.variant.startswith("_2cls-")
    lists = split_formats.find_lists(folder)
    for (subset, split), path in lists.items():
        for class_name, video, n_frames, list_label, _ in split_formats.read_list(path):
            assert list_label == label[class_name] and n_frames == 5, path
    full = mmaction_lists.write_lists(Config(dataset=str(three_classes)))     # the full lists: another place
    assert {p.parent for p in full["files"]} == {three_classes}
    assert {c: l for c, _, _, l, _ in split_formats.read_list(full["files"][0])} == {"a": 0, "b": 1, "c": 2}


def parameter_names(notebook: Path) -> set[str]:
    """The names its cell tagged ``parameters`` assigns (what papermill injects into)."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, notebook.name
    tree = ast.parse("".join(cells[0]["source"]))
    return {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets}


def test_every_notebook_takes_classes_and_fps_and_the_run_is_named_after_them(tmp_path, monkeypatch):
    for notebook in run.find_notebooks():
        assert {"classes", "fps"} <= parameter_names(notebook), notebook.name
    (tmp_path / "mine.txt").write_text("red_up\nblue_up\n")
    monkeypatch.chdir(tmp_path)                                 # a file relative to where utils.run starts
    args = run.build_parser().parse_args(["--dataset", "demo", "-p", "classes=mine.txt", "-p", "fps=6"])
    parameters = run.resolve_parameters(args)
    assert parameters["classes"] == ["red_up", "blue_up"]      # the notebooks (run in notebooks/) get the names
    assert run.run_config(parameters).run_name == Config(classes=["blue_up", "red_up"], fps=6).run_name
    assert run.run_config(parameters).run_name.startswith("demo_split1_6fps_2cls-")
