"""The experiments' rows of the results table (notebooks 06-08): read from score files by name, "not run"
where a file is absent, in both protocols, with the number of test clips and the published figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils import config as config_module
from utils import evaluation as ev
from utils import report
from utils.config import Config

CLASSES = ["clap", "jump", "wave"]


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(config_module, "REPORT_DIR", tmp_path / "report")
    return Config(dataset="demo")


def save(cfg, name, protocol, right: int, n: int = 6):
    """Scores of ``n`` test videos of which the first ``right`` are classified right."""
    labels = np.arange(n) % 3
    predicted = np.where(np.arange(n) < right, labels, (labels + 1) % 3)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), predicted] = 0.8
    ev.save_scores(ev.scores_path(cfg, name, protocol), ev.Scores([f"v{i}" for i in range(n)], labels, probs, CLASSES))


def experiment_cells(markdown: str) -> dict[str, list[str]]:
    section = markdown.split(report.EXPERIMENTS_HEADING, 1)[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("Experiment", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_every_experiment_has_a_row_that_says_not_run_without_its_score_files(cfg):
    save(cfg, "spatial", "one_frame", 4)
    save(cfg, "temporal", "one_frame", 3)
    cells = experiment_cells(report.write_report(cfg, figures=False).read_text())
    assert list(cells) == list(report.EXPERIMENTS.experiment)
    for experiment, (one_frame, whole_video, clips, published, source) in cells.items():
        assert one_frame == whole_video == report.NOT_RUN and clips == "-", experiment
    assert cells["3D CNN on RGB clips (C3D-style, from scratch)"][3] == "24.3"
    assert "Tran et al. 2015" in cells["3D CNN on RGB clips (C3D-style, from scratch)"][4]
    assert cells["Fusion (learned on validation scores)"][3] == "59.4"


def test_experiment_rows_read_their_score_files_by_name_in_both_protocols(cfg):
    save(cfg, "c3d_rgb", "one_frame", 5)                     # 5 of 6 right; whole video not run
    save(cfg, "fusion_learned", "one_frame", 6)
    save(cfg, "fusion_learned", "whole_video", 3, n=5)
    save(cfg, "sg3i", "whole_video", 2)                      # the name notebook 06 (issue 24a) saves under
    path = report.write_report(cfg, figures=False)
    cells = experiment_cells(path.read_text())
    assert cells["3D CNN on RGB clips (C3D-style, from scratch)"][:3] == ["83.3", report.NOT_RUN, "6"]
    assert cells["Fusion (learned on validation scores)"][:3] == ["100.0", "60.0", "6 (one frame), 5 (whole video)"]
    sg3i = next(name for name in cells if name.startswith("SG3I"))
    assert cells[sg3i][:3] == [report.NOT_RUN, "33.3", "6"]
    assert cells["3D CNN on flow volumes (C3D-style, from scratch)"][:2] == [report.NOT_RUN, report.NOT_RUN]
    csv = pd.read_csv(path.with_suffix(".csv"))
    rows = csv[csv.network.str.startswith("3D CNN on RGB")]
    assert rows.protocol.tolist() == ["one_frame"] and rows.top1.tolist() == [83.33] and rows.n_videos.tolist() == [6]
    assert experiment_cells((config_module.REPORT_DIR / "results.md").read_text()) == cells   # the published copy
