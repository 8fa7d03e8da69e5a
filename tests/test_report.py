"""The results report: table, csv and figures from hand-made score files and histories."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from utils import config as config_module
from utils import evaluation as ev
from utils import report
from utils.config import Config

CLASSES = ["clap", "jump", "wave"]


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    return Config(dataset="demo")


def one_hot_scores(videos, labels, predicted, confidence=0.8):
    probs = np.full((len(videos), len(CLASSES)), (1 - confidence) / (len(CLASSES) - 1))
    probs[np.arange(len(videos)), predicted] = confidence
    return ev.Scores(np.array(videos), np.array(labels), probs, CLASSES, meta={"stride": 1})


def write_scores(cfg, protocol, with_val=True):
    """Spatial right on 4 of 6 test videos, temporal on 3 of 6, their average on 5 of 6."""
    videos = [f"v{i}" for i in range(6)]
    labels = [0, 0, 1, 1, 2, 2]
    spatial = one_hot_scores(videos, labels, [0, 0, 1, 1, 0, 0], 0.6)
    temporal = one_hot_scores(videos, labels, [1, 1, 2, 1, 2, 2], 0.5)
    spatial.scores[[0, 1]] = [0.5, 0.3, 0.2]     # spatial right on v0, v1, class 1 second
    temporal.scores[[0, 1]] = [0.45, 0.5, 0.05]  # temporal almost right on v0, v1
    spatial.scores[4] = [0.4, 0.25, 0.35]        # spatial hesitates on v4: fusion gets it right
    ev.save_scores(ev.scores_path(cfg, "spatial", protocol), spatial)
    ev.save_scores(ev.scores_path(cfg, "temporal", protocol), temporal)
    if with_val:
        val = ["w0", "w1"]
        ev.save_scores(ev.scores_path(cfg, "spatial", protocol, "val"), one_hot_scores(val, [0, 1], [0, 1]))
        ev.save_scores(ev.scores_path(cfg, "temporal", protocol, "val"), one_hot_scores(val, [0, 1], [1, 0]))


def write_history(cfg, stream, epochs=4):
    folder = cfg.stream_dir(stream)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": range(epochs), "accuracy": np.linspace(0.3, 0.9, epochs),
                  "loss": np.linspace(2, 0.5, epochs), "val_accuracy": np.linspace(0.3, 0.6, epochs),
                  "val_loss": np.linspace(2, 1, epochs)}).to_csv(folder / "history.csv", index=False)


def course_table_cells(markdown: str) -> dict[str, list[str]]:
    """Rows of the first markdown table: network -> [one frame, whole video]."""
    rows = {}
    for line in markdown.split("## ")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in report.NETWORKS.values():
            rows[cells[0]] = cells[1:]
    return rows


def test_results_table_values(run):
    write_scores(run, "one_frame")
    table = report.results_table(report.collect_results(run)).set_index("network")
    assert table.loc["Spatial ResNet-50", "top1"] == pytest.approx(100 * 4 / 6, abs=0.01)
    assert table.loc["Temporal", "top1"] == pytest.approx(50.0)
    assert table.loc["Fusion (average)", "top1"] == pytest.approx(100 * 5 / 6, abs=0.01)
    assert table.loc["Fusion (average)", "fusion_weight"] == 0.5
    assert table.loc["Spatial ResNet-50", "mean_class"] == pytest.approx(100 * (1 + 1 + 0) / 3, abs=0.01)
    assert (table.top5 == 100).all()                       # 3 classes: every class is in the top 5
    assert set(table.protocol) == {"one_frame"}
    # spatial right on both validation videos, temporal wrong: w > 0.5 all tie, w = 1 has the lowest NLL
    assert table.loc["Fusion (weighted, w from validation)", "fusion_weight"] == 1.0


def test_write_report_full_run(run):
    for protocol in ev.PROTOCOLS:
        write_scores(run, protocol)
    for stream in ev.STREAMS:
        write_history(run, stream)
    md_path = report.write_report(run, settings={"spatial_epochs": 4})
    text = md_path.read_text()
    cells = course_table_cells(text)
    assert list(cells) == list(report.NETWORKS.values())
    for row in cells.values():
        assert all(re.fullmatch(r"\d+\.\d", c) for c in row), row
    assert cells["Fusion (average)"] == ["83.3", "83.3"]
    assert "Reference figures (not this run)" in text and "54.6" in text and "Simonyan" in text
    assert "spatial_epochs" in text and "4 epochs trained" in text
    figures = sorted(p.name for p in (run.report_dir / "figures").iterdir())
    assert figures == ["confusion_fusion_one_frame.png", "confusion_fusion_whole_video.png",
                       "fusion_weight_one_frame.png", "fusion_weight_whole_video.png",
                       "per_class_accuracy_one_frame.png", "per_class_accuracy_whole_video.png",
                       "training_curves.png"]
    assert all((run.report_dir / "figures" / f).read_bytes()[:4] == b"\x89PNG" for f in figures)
    assert "](figures/confusion_fusion_whole_video.png)" in text
    csv = pd.read_csv(run.report_dir / "results.csv")
    assert len(csv) == 8 and set(csv.dataset) == {"demo"}
    # published copies; figure links point into the run folder
    top = config_module.REPORT_DIR
    assert (top / "results.csv").read_text() == (run.report_dir / "results.csv").read_text()
    assert f"]({run.run_name}/figures/confusion_fusion_whole_video.png)" in (top / "results.md").read_text()


def test_report_with_one_protocol_only(run):
    write_scores(run, "one_frame", with_val=False)
    text = report.write_report(run, publish=False).read_text()
    cells = course_table_cells(text)
    assert cells["Temporal"] == ["50.0", "NA"]
    assert cells["Fusion (weighted, w from validation)"] == ["NA", "NA"]
    assert not (config_module.REPORT_DIR / "results.md").exists()


def test_figures_are_figures():
    scores = one_hot_scores(["a", "b", "c"], [0, 1, 2], [0, 2, 2])
    fig = report.confusion_matrix_figure(scores, "title")
    assert fig.axes[0].get_title() == "title"
    fig = report.per_class_accuracy_figure({"spatial": scores, "temporal": scores})
    assert len(fig.axes[0].patches) == 2 * len(CLASSES)
    fig = report.protocol_figure(n_frames=20, stack_length=10, stride=2)
    lines = fig.axes[0].lines                                   # one bar per temporal stack
    assert len(lines) == 1 + len(range(1, 20 - 10 + 1, 2))
    assert max(max(line.get_xdata()) for line in lines) <= 19   # never past the last flow
    fig = report.training_curves_figure({"spatial": None, "temporal": None})
    assert fig.texts and "no training history" in fig.texts[0].get_text()


def write_state(folder, train_clips, val_clips=None, epochs=4, refit_epochs=None):
    """A training folder's state.json as utils.training writes it (the parts the report reads)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    run_info = {"refit": {"epochs": refit_epochs}} if refit_epochs else {}
    settings = {"train_data": {"type": "FlowStacks", "videos": train_clips},
                "val_data": {"type": "FlowStacks", "videos": val_clips} if val_clips else None,
                "run_info": run_info}
    (folder / "state.json").write_text(json.dumps({"epochs_done": epochs, "settings": settings}))


def test_the_report_says_which_model_was_tested_on_how_many_training_clips(run):
    write_scores(run, "whole_video")
    for stream, checkpoint in (("spatial", "best.keras"), ("temporal", "refit/last.keras")):
        path = ev.scores_path(run, stream, "whole_video")
        scores = ev.load_scores(path)
        scores.meta["checkpoint"] = str(run.stream_dir(stream) / checkpoint)
        scores.meta["checkpoint_sha256"] = "0" * 64         # the checkpoint is not on disk: counts as current
        ev.save_scores(path, scores)
        write_history(run, stream)                              # val_accuracy rises: the 4th epoch is the best
        write_state(run.stream_dir(stream), 2980, 590)
    write_state(run.stream_dir("temporal") / "refit", 3570, epochs=3, refit_epochs=3)
    text = report.write_report(run, publish=False, figures=False).read_text()
    assert ("spatial/best.keras`, epoch 4 of 4 (the best on validation), trained on 2980 training clips, "
            "590 validation clips held out") in text
    assert ("temporal/refit/last.keras`, the final fit on all 3570 training clips (train + validation) for "
            "3 epochs") in text
    # The temporal comparison: HMDB51 alone (Table 2) beside the multi-task net (Table 4).
    reference = text.split("## Reference figures")[1]
    assert "46.6" in reference and "HMDB51 alone" in reference and "Table 2" in reference
    assert "54.6" in reference and "multi-task" in reference and "58.0" in reference
