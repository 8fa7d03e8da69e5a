"""End to end: `python -m utils.run --dataset demo --quick` runs notebooks 00-05 and fills the table.

Runs in a copy of the repository (utils/ and notebooks/ only) under a temporary folder, so the
demo data, checkpoints and report it makes never touch the working tree's data/, models/, report/.
Select it with `pytest -m notebooks`; skip it with `-m "not notebooks"`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from utils.config import REPO_ROOT

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

CELLS = ("Spatial ResNet-50", "Temporal", "Fusion (average)", "Fusion (weighted, w from validation)")


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
