"""End to end: `python -m utils.run --dataset demo --quick --experiments` runs notebooks 00-05, then the
experiments (06 when it exists, 07, 08), and fills both tables.

Runs in a copy of the repository (utils/ and notebooks/ only) under a temporary folder, so the
demo data, checkpoints and report it makes never touch the working tree's data/, models/, report/.
Select it with `pytest -m notebooks`; skip it with `-m "not notebooks"`. The executed notebooks are
then read as a student would: the sentences the code wrote about the run are checked against the
score files, one line per training epoch, progress that reads "finished" once saved, the animation.
The checks on the notebooks as committed (summary and exercises, code quoted from utils/) need no run.
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

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"

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


@pytest.mark.notebooks
@pytest.mark.slow
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
    for name in ("00", "01", "02", "03", "04", "05", "06", "07", "08"):
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
    executed = {path.name[:2]: json.loads(path.read_text())
                for path in (repo / "report" / "demo_split1" / "notebooks").glob("*.ipynb")}
    check_readings(executed, repo / "report" / "demo_split1" / "scores")
    check_epoch_lines(executed, repo / "models" / "demo_split1")
    check_saved_outputs(executed)
    check_experiments(repo, results_md.read_text(), done.stdout)
    check_sg3i_scores(repo / "report" / "demo_split1" / "scores", learned=False)   # notebook 06 on the same run


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
    assert "no notebook 06_" not in stdout
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


# ----------------------------------------------------------------------------------------
# The executed notebooks, read back
# ----------------------------------------------------------------------------------------
def outputs(notebook: dict, kind: str = "text"):
    """Every output text of a notebook (``kind="markdown"``: only the Markdown ones, e.g. the readings)."""
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if kind == "markdown":
                if "text/markdown" in output.get("data", {}):
                    yield "".join(output["data"]["text/markdown"])
            else:
                yield output_text(output)


def reading(notebook: dict, start: str) -> str:
    found = [text for text in outputs(notebook, "markdown") if text.startswith(start)]
    assert len(found) == 1, f"{len(found)} readings start with {start!r}"
    return found[0]


def check_readings(executed: dict, scores_dir: Path) -> None:
    """The sentences the notebooks generated say what the score files say (recomputed here with NumPy)."""
    import numpy as np

    from utils.demo_data import demo_class_factors, factor_accuracy
    from utils.evaluation import load_scores

    for notebook, protocol in (("04", "one_frame"), ("05", "whole_video")):
        spatial, temporal = (load_scores(scores_dir / f"{s}_{protocol}.npz") for s in ("spatial", "temporal"))
        fused = (spatial.scores + temporal.scores) / 2
        rows = np.arange(len(fused))
        true = fused[rows, spatial.label]
        other = np.where(np.eye(fused.shape[1], dtype=bool)[spatial.label], -1, fused).max(axis=1)
        margin = true - other
        text = reading(executed[notebook], "In this run: fusion (average) gets")
        right, n = map(int, re.search(r"gets (\d+) of (\d+) test videos right", text).groups())
        assert (right, n) == (int((margin > 0).sum()), len(margin)), text
        if right:
            assert f"at least {margin[margin > 0].min():.3f}" in text, (text, margin)
            close = int(((margin > 0) & (margin < 0.03)).sum())
            assert re.search(rf"and {close} of them (is|are) won by less than 0.03", text), (text, close)
    # 04: each stream's factors, and the temporal stream's colour for each motion
    spatial, temporal = (load_scores(scores_dir / f"{s}_one_frame.npz") for s in ("spatial", "temporal"))
    text = reading(executed["04"], "On the demo: spatial: colour")
    for name, scores in (("spatial", spatial), ("temporal", temporal)):
        f = factor_accuracy(scores.class_names, scores.label, scores.predicted)
        assert f"{name}: colour {100 * f['colour']:.1f} %, motion {100 * f['motion']:.1f} %" in text, (text, f)
    text = reading(executed["04"], "On the demo: the temporal stream's colour")
    picked = [demo_class_factors(temporal.class_names[int(p)]) for p in temporal.predicted]
    for motion, colour, count, total in re.findall(r"(\w+): (\w+) on (\d+) of (\d+) \(mean shares", text):
        assert int(total) == sum(m == motion for _, m in picked), (text, motion)
        assert int(count) == sum(p == (colour, motion) for p in picked), (text, motion)
        assert int(count) == max(sum(p == (c, motion) for p in picked) for c in ("red", "green", "blue"))
    # 05: what "whole video" was, and each network's videos right under both protocols
    whole = {s: load_scores(scores_dir / f"{s}_whole_video.npz") for s in ("spatial", "temporal")}
    text = reading(executed["05"], "In this run, \"whole video\" is")
    for stream, unit in (("spatial", "frames"), ("temporal", "stacks")):
        n = whole[stream].n_inputs
        assert f"{stream} {n.min()}-{n.max()} {unit} per clip ({n.sum()} inputs over {len(n)} clips)" in text, text
    text = reading(executed["05"], "In this run, videos right with one frame -> the whole video")
    for stream in ("spatial", "temporal"):
        one = load_scores(scores_dir / f"{stream}_one_frame.npz")
        a, b = int((one.predicted == one.label).sum()), int((whole[stream].predicted == whole[stream].label).sum())
        assert f"{stream} {a} -> {b} of {len(one)} ({b - a:+d})" in text, text


def check_epoch_lines(executed: dict, models_dir: Path) -> None:
    """02 and 03 print exactly one short line per epoch, and no Keras header or progress bar."""
    import pandas as pd

    line = re.compile(r"epoch +(\d+)/(\d+)  lr \S+  loss \S+  acc \S+  val_loss \S+  val_acc \S+  \d+\.\d s")
    for notebook, stream in (("02", "spatial"), ("03", "temporal")):
        text = "\n".join(outputs(executed[notebook]))
        epochs = [int(m.group(1)) for m in map(line.fullmatch, text.splitlines()) if m]
        assert epochs == list(range(1, len(pd.read_csv(models_dir / stream / "history.csv")) + 1)), (notebook, epochs)
        assert "Epoch 1/" not in text and "/step" not in text, notebook


def check_saved_outputs(executed: dict) -> None:
    """No progress widget is saved (it would read 0 % for ever); 01's extraction says it finished; 01 animates."""
    for name, notebook in executed.items():
        for cell in notebook["cells"]:
            for output in cell.get("outputs", []):
                assert WIDGET not in output.get("data", {}), f"{name}: a widget is saved in {cell['source'][:1]}"
    text = "\n".join(outputs(executed["01"]))
    assert re.search(r"\d+ done, \d+ skipped \(already there\), 0 failed", text) and " 0%" not in text
    gifs = [html for c in executed["01"]["cells"] for o in c.get("outputs", [])
            for html in ["".join(o.get("data", {}).get("text/html", ""))] if "data:image/gif;base64," in html]
    assert len(gifs) == 1 and 10_000 < len(gifs[0]) < 300_000, [len(g) for g in gifs]


# ----------------------------------------------------------------------------------------
# The notebooks as committed (no run needed)
# ----------------------------------------------------------------------------------------
def markdown(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_each_notebook_is_valid_and_committed_without_outputs(path):
    """nbformat's own validation (cell ids included: a missing one is a warning on every run today and an
    error in later nbformat versions), and no outputs or execution counts in the committed copy."""
    import nbformat

    raw = json.loads(path.read_text())
    if (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5):
        assert all("id" in cell for cell in raw["cells"]), f"{path.name}: a cell without an id"
    notebook = nbformat.from_dict(raw)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_each_notebook_ends_with_a_summary_and_numbered_exercises(path):
    last = markdown(path)[-1]
    assert json.loads(path.read_text())["cells"][-1]["cell_type"] == "markdown", path.name
    assert last.startswith("## Summary") and "\n## Exercises" in last, path.name
    exercises = last.split("## Exercises", 1)[1]
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", exercises, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 4, (path.name, numbers)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_code_quoted_in_the_notebooks_is_the_code_of_utils(path):
    """Every line of a ```python block in a notebook's text is a line of utils/ (the code shown is the code run)."""
    source = {line.strip() for module in (REPO_ROOT / "utils").rglob("*.py") for line in module.read_text().splitlines()}
    for text in markdown(path):
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            for line in filter(None, (line.strip() for line in block.splitlines())):
                assert line in source, f"{path.name}: {line!r} is not in utils/"
