"""End to end: `python -m utils.run --dataset demo --quick --experiments` runs notebooks 00-05, then the
experiments (06 when it exists, 07, 08), and fills both tables.

Runs in a copy of the repository (utils/ and notebooks/ only) under a temporary folder, so the
demo data, checkpoints and report it makes never touch the working tree's data/, models/, report/.
Select it with `pytest -m notebooks`; skip it with `-m "not notebooks"`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils.config import REPO_ROOT

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

CELLS = ("Spatial ResNet-50", "Temporal", "Fusion (average)", "Fusion (weighted, w from validation)")
TENSORFLOW_NOISE = ("cuInit", "absl::InitializeLog", "cudart_stub", "cpu_feature_guard")
"""Parts of TensorFlow's C++ start-up log lines, which must not reach the notebooks or the terminal."""


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The course's table (the first table of results.md): network -> [one frame, whole video]."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 3:
                rows[cells[0]] = cells[1:]
        elif rows:
            break
    return rows


def test_quick_run_of_all_notebooks_fills_the_table(tmp_path):
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for folder in ("utils", "notebooks"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=ignore)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)   # as in a user's shell: utils/ must quiet TensorFlow itself
    done = subprocess.run([sys.executable, "-m", "utils.run", "--dataset", "demo", "--quick", "--experiments"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    for name in ("00", "01", "02", "03", "04", "05", "07", "08"):
        assert list((repo / "report" / "demo_split1" / "notebooks").glob(f"{name}_*.ipynb")), name

    results_md = repo / "report" / "demo_split1" / "results.md"
    rows = table_rows(results_md.read_text())
    for network in CELLS:
        assert network in rows, f"{network} missing from {results_md}"
        for value in rows[network]:
            assert re.fullmatch(r"\d+(\.\d)?", value), f"{network}: {rows[network]}"
            assert 0 <= float(value) <= 100
    assert (repo / "report" / "results.md").read_text().startswith("# Two-stream results: demo")
    assert (repo / "report" / "results.csv").is_file()
    assert "results table:" in done.stdout and "05_fusion_whole_video.ipynb" in done.stdout
    check_quiet_outputs(repo / "report" / "demo_split1" / "notebooks", done.stdout + done.stderr)
    check_each_stream_learned_its_factor(repo / "report" / "demo_split1" / "scores")
    check_experiments(repo, results_md.read_text(), done.stdout)


def check_experiments(repo: Path, results_md: str, stdout: str) -> None:
    """The experiments' table is printed and filled from this run's own score files: the 3D CNN on RGB clips
    over the whole test split, seeing the colour (which the temporal stream cannot); the learned fusion fitted
    on exactly the validation videos, none of them a test video. Rows of experiments not run say so."""
    from utils.demo_data import factor_accuracy
    from utils.evaluation import load_scores
    from utils.fusion import videos_fingerprint
    from utils.report import EXPERIMENTS_HEADING, NOT_RUN

    scores_dir = repo / "report" / "demo_split1" / "scores"
    section = results_md.split(EXPERIMENTS_HEADING, 1)[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Experiment")}
    assert EXPERIMENTS_HEADING in stdout and "| 3D CNN on RGB clips" in stdout
    for name in ("3D CNN on RGB clips (C3D-style, from scratch)", "Fusion (learned on validation scores)"):
        assert all(re.fullmatch(r"\d+(\.\d)?", v) for v in rows[name][:2]) and rows[name][2] == "36", rows[name]
    assert rows["3D CNN on flow volumes (C3D-style, from scratch)"][:2] == [NOT_RUN, NOT_RUN]   # not asked for
    if not list((repo / "notebooks").glob("06_*.ipynb")):
        assert "no notebook 06_" in stdout
        assert all(cells[:2] == [NOT_RUN, NOT_RUN] for name, cells in rows.items() if "SG3I" in name), rows
    for protocol in ("one_frame", "whole_video"):
        spatial = load_scores(scores_dir / f"spatial_{protocol}.npz")
        c3d = load_scores(scores_dir / f"c3d_rgb_{protocol}.npz")
        assert list(c3d.video) == list(spatial.video)                            # the same 36 test clips
        # 4 quick epochs give the colour; the motion comes later (epoch 16 of the demo preset, notebook 07)
        assert factor_accuracy(c3d.class_names, c3d.label, c3d.predicted)["colour"] >= 0.8, protocol
        learned, val = load_scores(scores_dir / f"fusion_learned_{protocol}.npz"), load_scores(
            scores_dir / f"spatial_{protocol}_val.npz")
        assert list(learned.video) == list(spatial.video) and learned.meta["fusion"] == "learned"
        assert learned.meta["n_val"] == len(val) and learned.meta["fitted_on"] == videos_fingerprint(val.video)
        assert not set(val.video) & set(spatial.video)                           # never fitted on a test video


def check_each_stream_learned_its_factor(scores_dir: Path) -> None:
    """More than numbers in a table: the spatial stream must know the colour, the temporal stream the
    motion (chance: 1/3), each at chance on the other factor, under both protocols. A flow stack in the
    wrong order, axes swapped at test time or a vertical "horizontal" flip break the motion; fusion
    must use both."""
    from utils.demo_data import factor_accuracy
    from utils.evaluation import average_fusion, load_scores

    for protocol in ("one_frame", "whole_video"):
        scores = {stream: load_scores(scores_dir / f"{stream}_{protocol}.npz") for stream in ("spatial", "temporal")}
        factors = {name: factor_accuracy(s.class_names, s.label, s.predicted) for name, s in scores.items()}
        assert len(scores["spatial"]) == 36, protocol                     # the whole test split
        assert factors["temporal"]["motion"] >= 0.8, (protocol, factors)
        assert factors["spatial"]["colour"] >= 0.6, (protocol, factors)
        for name, factor in (("spatial", "motion"), ("temporal", "colour")):
            assert factors[name][factor] <= 0.6, (protocol, name, factors)   # what it cannot see
        fused = average_fusion(scores["spatial"], scores["temporal"])
        both = factor_accuracy(fused.class_names, fused.label, fused.predicted)
        assert both["colour"] > factors["temporal"]["colour"] and both["motion"] > factors["spatial"]["motion"], both


def output_text(output: dict) -> str:
    if output["output_type"] == "stream":
        return "".join(output["text"])
    if output["output_type"] == "error":
        return "\n".join(output["traceback"])
    return "".join("".join(v) if isinstance(v, list) else str(v)
                   for k, v in output.get("data", {}).items() if k.startswith("text/"))


def check_quiet_outputs(executed: Path, terminal: str) -> None:
    """No TensorFlow C++ log anywhere, one progress output for the extraction, no table repeating the epoch log."""
    for part in TENSORFLOW_NOISE:
        assert part not in terminal, f"{part!r} in the output of utils.run"
    for path in sorted(executed.glob("*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        for cell in cells:
            for output in cell["outputs"]:
                text = output_text(output)
                noise = [part for part in TENSORFLOW_NOISE if part in text]
                assert not noise, f"{path.name}: TensorFlow log {noise} in the outputs of {cell['source'][:1]}"
        stderr = [o for c in cells for o in c["outputs"] if o.get("name") == "stderr"]
        if path.name.startswith("01_"):   # the extraction's progress bar: one output, not one per update
            assert len(stderr) <= 2, f"{path.name}: {len(stderr)} stderr outputs"
        if path.name.startswith(("02_", "03_")):   # the epoch log is printed once: no table of the same numbers
            for cell in cells:
                logged = any("Epoch 1/" in output_text(o) for o in cell["outputs"])
                tables = [o for o in cell["outputs"] if "text/html" in o.get("data", {})]
                assert not (logged and tables), f"{path.name}: a table repeats the epoch log"
