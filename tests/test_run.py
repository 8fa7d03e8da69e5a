"""The one-command runner: argument parsing, overrides, notebook selection and failure reporting."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from utils import run
from utils.config import REPO_ROOT


def write_notebook(path: Path, parameters: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


def test_help_works():
    done = subprocess.run([sys.executable, "-m", "utils.run", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("--dataset", "--only", "--from", "--quick", "-p NAME=VALUE"):
        assert option in done.stdout


@pytest.mark.parametrize("text, value", [
    ("3", 3), ("0.5", 0.5), ("None", None), ("True", True), ("[1, 2]", [1, 2]), ("'a b'", "a b"),
    ("tvl1", "tvl1"), ("/data/my set", "/data/my set"), ("1e-3", 1e-3), ("", ""),
])
def test_parse_value_literal_or_string(text, value):
    assert run.parse_value(text) == value


def test_parse_overrides():
    assert run.parse_overrides(["a=1", "b = x", "c=k=v", "d="]) == {"a": 1, "b": "x", "c": "k=v", "d": ""}
    for bad in ("noequals", "1a=2", "=3", "a-b=1"):
        with pytest.raises(ValueError, match="name=value"):
            run.parse_overrides([bad])


def test_parameters_quick_preset_then_overrides(tmp_path):
    parser = run.build_parser()
    params = run.resolve_parameters(parser.parse_args(["--dataset", "demo", "--quick"]))
    assert params == {**run.QUICK, "dataset": "demo", "split": 1}
    first = next(iter(run.QUICK))
    params = run.resolve_parameters(parser.parse_args(["--quick", "-p", f"{first}=None", "-p", "split=2",
                                                       "--dataset", "hmdb51"]))
    assert params[first] is None and params["split"] == 2 and params["dataset"] == "hmdb51"
    # a dataset path becomes absolute (the notebooks run in notebooks/); a missing one is an error
    (tmp_path / "myset").mkdir()
    params = run.resolve_parameters(parser.parse_args(["--dataset", str(tmp_path / "myset")]))
    assert params["dataset"] == str((tmp_path / "myset").resolve()) and "max_videos" not in params
    with pytest.raises(FileNotFoundError, match="nope"):
        run.resolve_parameters(parser.parse_args(["--dataset", str(tmp_path / "nope")]))
    params = run.resolve_parameters(parser.parse_args([]))
    assert params["dataset"] in ("demo", "hmdb51")


def test_only_and_from_select_notebooks(tmp_path):
    names = ["00_a.ipynb", "01_b.ipynb", "02_c.ipynb", "03_d.ipynb", "notes.ipynb"]
    for name in names:
        write_notebook(tmp_path / name, "x = 1")
    found = run.find_notebooks(tmp_path)
    assert [p.name for p in found] == names[:4]
    assert [p.name for p in run.select_notebooks(found, only="03,1")] == ["01_b.ipynb", "03_d.ipynb"]
    assert [p.name for p in run.select_notebooks(found, only="02_c")] == ["02_c.ipynb"]
    assert [p.name for p in run.select_notebooks(found, start="02")] == ["02_c.ipynb", "03_d.ipynb"]
    assert run.select_notebooks(found) == found
    with pytest.raises(ValueError, match="07"):
        run.select_notebooks(found, only="07")
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["--only", "01", "--from", "02"])


def test_unknown_parameter_names(tmp_path):
    write_notebook(tmp_path / "00_a.ipynb", "dataset = 'demo'\nsplit = 1\nepochs = 3  # help")
    write_notebook(tmp_path / "01_b.ipynb", "dataset = 'demo'\nstride = 2")
    nbs = run.find_notebooks(tmp_path)
    assert run.unknown_parameters({"dataset": 1, "epochs": 1, "stride": 1, "epohcs": 2}, nbs) == ["epohcs"]


def test_failing_notebook_is_named_and_run_stops(tmp_path, capsys, monkeypatch):
    from utils import config

    monkeypatch.setattr(config, "REPORT_DIR", tmp_path / "report")     # the run locks its report folder
    notebooks, out = tmp_path / "nbs", tmp_path / "out"
    notebooks.mkdir()
    write_notebook(notebooks / "00_ok.ipynb", "dataset = 'x'\nsplit = 1\nvalue = 1",
                   "from pathlib import Path\nPath('ran_00.txt').write_text(repr((dataset, value)))")
    write_notebook(notebooks / "01_fails.ipynb", "dataset = 'x'\nsplit = 1",
                   "x = 1", "raise ValueError('boom in cell two')")
    write_notebook(notebooks / "02_never.ipynb", "dataset = 'x'\nsplit = 1",
                   "from pathlib import Path\nPath('ran_02.txt').write_text('ran')")
    code = run.main(["--notebooks-dir", str(notebooks), "--output-dir", str(out), "--dataset", "demo",
                     "-p", "value=7"])
    captured = capsys.readouterr()
    assert code == 1
    assert "01_fails.ipynb failed" in captured.err and "ValueError: boom in cell two" in captured.err
    assert "raise ValueError" in captured.err                    # the failing cell is shown
    assert (notebooks / "ran_00.txt").read_text() == "('demo', 7)"  # parameters injected, cwd = notebooks
    assert (out / "00_ok.ipynb").is_file() and (out / "01_fails.ipynb").is_file()
    assert not (notebooks / "ran_02.txt").exists() and not (out / "02_never.ipynb").exists()
    assert "00_ok.ipynb done in" in captured.out
    injected = [c.source for c in nbformat.read(out / "00_ok.ipynb", as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "value = 7" in injected[0]


def test_quick_preset_names_are_notebook_parameters():
    """Every --quick name must be defined by some notebook (else it silently does nothing)."""
    notebooks = run.find_notebooks(run.NOTEBOOKS_DIR)
    assert [p.name[:2] for p in run.run_set(notebooks)[0]] == ["00", "01", "02", "03", "04", "05"]
    assert {p.name[:2] for p in notebooks} <= set(run.COURSE + run.EXPERIMENTS)
    assert {"06", "07", "08"} <= {p.name[:2] for p in notebooks}
    assert run.unknown_parameters(run.QUICK, notebooks) == []


def test_experiments_run_after_the_course_and_a_missing_one_is_named(tmp_path, monkeypatch, capsys):
    for name in ("00_a", "01_b", "02_c", "03_d", "04_e", "05_f", "07_g", "08_h", "09_draft"):
        write_notebook(tmp_path / f"{name}.ipynb", "dataset = 'x'\nsplit = 1")
    found = run.find_notebooks(tmp_path)
    course, absent = run.run_set(found)
    assert [p.name[:2] for p in course] == list(run.COURSE) and absent == []      # command 1: 00-05 only
    wider, absent = run.run_set(found, experiments=True)
    assert [p.name[:2] for p in wider] == [*run.COURSE, "07", "08"] and absent == ["06"]
    assert [p.name[:2] for p in run.select_notebooks(wider, start="04")] == ["04", "05", "07", "08"]
    assert [p.name[:2] for p in run.select_notebooks(found, only="07")] == ["07"]

    ran = []
    monkeypatch.setattr(run, "check_kernel", lambda kernel: None)
    monkeypatch.setattr(run, "run_all", lambda notebooks, *a, **k: ran.append([p.name[:2] for p in notebooks]) or [])
    for argv, expected in (([], list(run.COURSE)), (["--experiments"], [*run.COURSE, "07", "08"]),
                           (["--only", "07"], ["07"]), (["--from", "07"], ["07", "08"]),
                           (["--from", "04"], ["04", "05"])):
        assert run.main(["--notebooks-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"),
                         "--dataset", "demo", *argv]) == 0
        assert ran[-1] == expected, argv
        out = capsys.readouterr().out
        assert ("no notebook 06_*.ipynb" in out) == (argv == ["--experiments"]), out


def test_every_parameter_line_parses():
    """papermill drops (with a log line) a parameter it cannot parse: then -p name=... does nothing."""
    import papermill

    for path in run.find_notebooks(run.NOTEBOOKS_DIR):
        cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        assigned = {line.split("=", 1)[0].split(":")[0].strip() for line in cell.source.splitlines()
                    if re.match(r"^[A-Za-z_]\w*\s*(:\s*\w+\s*)?=", line)}
        assert set(papermill.inspect_notebook(str(path))) == assigned, path.name
