"""End to end: `python -m utils.run --dataset demo --quick` runs notebooks 00-05 and fills the table;
then `--only 06` runs the SG3I notebook on the same run.

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

import numpy as np
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
    done = subprocess.run([sys.executable, "-m", "utils.run", "--dataset", "demo", "--quick"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    for name in ("00", "01", "02", "03", "04", "05"):
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

    # notebook 06 (SG3I) on the same run: it reuses notebook 02's RGB stream and its score files
    done = subprocess.run([sys.executable, "-m", "utils.run", "--dataset", "demo", "--quick", "--only", "06"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    check_quiet_outputs(repo / "report" / "demo_split1" / "notebooks", done.stdout + done.stderr)
    check_sg3i_scores(repo / "report" / "demo_split1" / "scores", learned=False)


def test_a_full_demo_run_of_the_sg3i_notebook_learned_the_motion():
    """The demo preset (not --quick) of notebook 06 in this working tree's own report/: after
    `python -m utils.run --dataset demo` and `python -m utils.run --dataset demo --only 06` (minutes on a
    CPU, so not part of CI's fresh clone, where this test is skipped)."""
    import json

    from utils.config import MODELS_DIR, REPORT_DIR
    from utils.sg3i import sg3i_settings

    state = MODELS_DIR / "demo_split1" / "sg3i" / "state.json"
    wanted = sg3i_settings("demo", pretrained=False)["finetune_epochs"]
    done = json.loads(state.read_text()).get("epochs_done", 0) if state.is_file() else 0
    if done < wanted:
        pytest.skip(f"no full demo run of notebook 06 here ({state}: {done} of {wanted} epochs)")
    check_sg3i_scores(REPORT_DIR / "demo_split1" / "scores", learned=True)


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


def check_sg3i_scores(scores_dir: Path, learned: bool) -> None:
    """Notebook 06's own score files: the SG3I stream and its average with the RGB stream (fusion_sg3i),
    every test clip, both protocols, validation scores too. The SG3I stream sees grayscale frames, in which
    the demo's three colours are equal: it is at chance on the colour. ``learned`` (a run with the demo
    preset, 10 epochs): it knows the motion, and the fusion gets both factors right far more often than
    either stream alone, as flow + RGB does. The quick run trains one short epoch: too few steps for a
    ResNet-50 from scratch to learn the motion, so there it is not asked for."""
    from utils.demo_data import factor_accuracy
    from utils.evaluation import average_fusion, load_scores

    for protocol in ("one_frame", "whole_video"):
        scores = {name: load_scores(scores_dir / f"{name}_{protocol}.npz") for name in ("spatial", "sg3i", "fusion_sg3i")}
        val = {name: load_scores(scores_dir / f"{name}_{protocol}_val.npz") for name in ("spatial", "sg3i", "fusion_sg3i")}
        assert len(scores["sg3i"]) == 36 and len(val["sg3i"]) == 18, protocol          # whole test and val subsets
        for subset in (scores, val):
            fused = average_fusion(subset["spatial"], subset["sg3i"])
            np.testing.assert_allclose(subset["fusion_sg3i"].scores, fused.scores, atol=1e-6)   # the saved fusion
        factors = {name: factor_accuracy(s.class_names, s.label, s.predicted) for name, s in scores.items()}
        assert factors["sg3i"]["colour"] <= 0.6, (protocol, factors)          # what it cannot see
        if learned:
            assert factors["sg3i"]["motion"] >= 0.7, (protocol, factors)
            both = factors["fusion_sg3i"]
            assert both["colour"] > factors["sg3i"]["colour"] and both["motion"] > factors["spatial"]["motion"], factors
            assert both["both"] >= 0.6 and both["both"] > max(factors["spatial"]["both"], factors["sg3i"]["both"]), factors


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
