"""One command for the whole pipeline: execute notebooks 00-05 in order, headless, with papermill.

    python -m utils.run                                # default dataset: hmdb51 if on disk, else demo
    python -m utils.run --dataset demo --quick         # the CI preset (QUICK below)
    python -m utils.run --dataset hmdb51 -p split=2 -p finetune_epochs=12
    python -m utils.run --from 03                      # 03, 04, 05
    python -m utils.run --only 04,05 -p test_crops=1

Every notebook starts with a parameters cell (tagged ``parameters``); papermill injects the
values given here after it, as a new cell. Each notebook gets the values of the names its own
parameters cell defines (``-p workers=4`` reaches every notebook that has ``workers``); a name
that no notebook defines is reported as a likely typo.
``-p`` values are Python literals (``3``, ``0.5``, ``None``, ``"a b"``, ``[1, 2]``); anything that
is not a literal is taken as a string.

Executed copies (with outputs) go to ``report/<run>/notebooks/``. The run stops at the first
notebook that fails, names it and the cell, and exits with status 1.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

from utils import config as config_module
from utils import pretrained
from utils.config import Config, default_dataset, dataset_root, BUILTIN_DATASETS

NOTEBOOKS_DIR = config_module.REPO_ROOT / "notebooks"
COURSE_LAST = "05"    # notebooks 00-05 are the course, run by default; later ones (06: SG3I, ...) are experiments
KERNEL_NAME = "python3"
NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_.+\.ipynb$")

QUICK: dict[str, object] = {
    "max_videos": 40,          # 00: clips opened to measure lengths
    "flow_method": "dis",      # 01: DIS flow, ~20x faster to extract than TV-L1
    "weights": None,           # 02: ResNet-50 from scratch (CI machines cannot download ImageNet weights)
    "frames_per_video": 4,     # 02: frames per training video and epoch
    "finetune_epochs": 2,      # 02: epochs of the spatial stream
    "temporal_epochs": 8,      # 03: epochs of the temporal stream (a few seconds each)
    "whole_video_segments": 5, # 05, 06: 5 equally spaced frames / stacks / SG3Is per clip in the whole-video protocol
    "sg3i_epochs": 1,          # 06: one short epoch of the SG3I stream: the notebook runs end to end, but
    "sg3i_per_video": 2,       #     learning the demo's motion takes the preset's 10 epochs x 8 SG3Is per video
}
"""The ``--quick`` preset (CI): small settings that exercise every notebook end to end fast.

``-p`` overrides win over it. Every name here is defined in some notebook's parameters cell
(``tests/test_run.py`` checks it).
"""


# ----------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------
def parse_value(text: str):
    """A ``-p`` value: a Python literal if it parses as one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_overrides(pairs: Iterable[str]) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; names must be Python identifiers."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ValueError(f"parameter override {pair!r} must look like name=value")
        out[name] = parse_value(value.strip())
    return out


def find_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks ``NN_name.ipynb`` of a folder, in order."""
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise FileNotFoundError(f"no notebooks folder {notebooks_dir}")
    found = sorted(p for p in notebooks_dir.iterdir() if NOTEBOOK_PATTERN.match(p.name))
    if not found:
        raise FileNotFoundError(f"no NN_name.ipynb notebooks in {notebooks_dir}")
    return found


def _number(token: str) -> str:
    token = token.strip()
    return f"{int(token):02d}" if token.isdigit() else token


def select_notebooks(notebooks: Sequence[Path], only: str | None = None,
                     start: str | None = None) -> list[Path]:
    """Notebooks named by ``only`` (``"02,03"``, numbers or names) or from ``start`` on (``"03"``); by
    default (and from a ``start`` in the course) the course, notebooks up to :data:`COURSE_LAST`."""
    def matches(path: Path, token: str) -> bool:
        token = _number(token)
        return path.name.startswith(token + "_") or path.stem == token or path.name == token

    if only:
        tokens = [t for t in only.split(",") if t.strip()]
        chosen = []
        for token in tokens:
            hits = [p for p in notebooks if matches(p, token)]
            if not hits:
                raise ValueError(f"--only {token!r} matches no notebook; have "
                                 f"{[p.name for p in notebooks]}")
            chosen += [p for p in hits if p not in chosen]
        return sorted(chosen)
    if start:
        positions = [i for i, p in enumerate(notebooks) if matches(p, start)]
        if not positions:
            raise ValueError(f"--from {start!r} matches no notebook; have {[p.name for p in notebooks]}")
        chosen = list(notebooks[positions[0]:])
        return chosen if chosen[0].name[:2] > COURSE_LAST else [p for p in chosen if p.name[:2] <= COURSE_LAST]
    return [p for p in notebooks if p.name[:2] <= COURSE_LAST]


def notebook_parameters(notebooks: Iterable[Path]) -> dict[str, set[str]]:
    """``{parameter name: {notebooks defining it}}`` from the notebooks' parameters cells."""
    import papermill

    defined: dict[str, set[str]] = {}
    for path in notebooks:
        for name in papermill.inspect_notebook(str(path)):
            defined.setdefault(name, set()).add(path.name)
    return defined


def unknown_parameters(parameters: dict, notebooks: Iterable[Path]) -> list[str]:
    """Names in ``parameters`` that no notebook's parameters cell defines."""
    defined = notebook_parameters(notebooks)
    return sorted(name for name in parameters if name not in defined)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.run",
        description="Run the notebooks 00-05 in order, headless (papermill), and print the results table.",
        epilog="Executed notebooks go to report/<run>/notebooks/; the table to report/results.md.")
    parser.add_argument("--dataset", default=None,
                        help="demo | hmdb51 | PATH to a folder in the HMDB51 layout (default: hmdb51 "
                             "when it is in data/hmdb51, else demo)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a notebook parameter (repeatable); VALUE is a Python literal "
                             "or else a string, e.g. -p split=2 -p weights=None")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", metavar="LIST", help="run only these notebooks, e.g. 02,03")
    which.add_argument("--from", dest="start", metavar="NN", help="run from this notebook on, e.g. 03")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI preset (small settings): {QUICK}")
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR,
                        help="folder of the NN_name.ipynb notebooks (default: notebooks/)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where executed notebooks go (default: report/<run>/notebooks)")
    parser.add_argument("--kernel", default=KERNEL_NAME, help="Jupyter kernel name (default: python3)")
    parser.add_argument("--log-output", action="store_true",
                        help="stream the notebooks' outputs to this terminal")
    parser.add_argument("--list", action="store_true",
                        help="list the notebooks and their parameters, run nothing")
    return parser


def resolve_parameters(args: argparse.Namespace) -> dict:
    """The parameters injected into every notebook: quick preset < -p overrides, plus dataset."""
    parameters = dict(QUICK) if args.quick else {}
    parameters.update(parse_overrides(args.param))
    dataset = args.dataset if args.dataset is not None else parameters.get("dataset", default_dataset())
    dataset = str(dataset)
    if dataset not in BUILTIN_DATASETS:   # notebooks run in notebooks/: pass an absolute path
        root = dataset_root(dataset)
        if not root.is_dir():
            raise FileNotFoundError(f"--dataset {dataset}: no such folder {root}")
        dataset = str(root)
    parameters["dataset"] = dataset
    split = parameters.setdefault("split", 1)
    if type(split) is not int or split not in (1, 2, 3):   # not True, not 2.0
        raise ValueError(f"-p split={split!r}: the split must be 1, 2 or 3")
    if parameters.get("classes") is not None:   # a file is read here (notebooks run in notebooks/): pass the names
        parameters["classes"] = list(config_module.resolve_classes(parameters["classes"]))
    return parameters


def run_config(parameters: dict) -> Config:
    """The run's Config (its name and report folder): dataset, split, class subset and fps of ``parameters``."""
    return Config(dataset=parameters["dataset"], split=int(parameters["split"]),
                  classes=parameters.get("classes"), fps=parameters.get("fps"))


def uses_imagenet_weights(notebooks: Sequence[Path], parameters: dict) -> bool:
    """Whether the run builds a ResNet-50 from ``weights``: notebooks 02 and 06 (SG3I), or 03 with the
    ResNet temporal stream."""
    names = {path.name[:2] for path in notebooks}
    return bool(names & {"02", "06"}) or ("03" in names and parameters.get("temporal_arch") == "resnet50")


# ----------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------
class NotebookFailed(RuntimeError):
    """A notebook raised; the message names it, the cell and the error."""

    def __init__(self, notebook: Path, output: Path, detail: str):
        self.notebook, self.output = notebook, output
        super().__init__(f"notebook {notebook.name} failed: {detail}\n"
                         f"executed copy with the traceback: {output}")


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    """Fail early, with the fix, when the Jupyter kernel is missing; warn if it runs another Python."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise RuntimeError(f"no Jupyter kernel named {kernel_name!r}; install one with "
                           f"`{sys.executable} -m pip install ipykernel && {sys.executable} -m "
                           f"ipykernel install --user --name {kernel_name}`") from None
    executable = Path(spec.argv[0]) if spec.argv else None
    if executable is not None and executable.is_absolute() and executable.exists() \
            and executable.resolve() != Path(sys.executable).resolve():
        warnings.warn(f"kernel {kernel_name!r} runs {executable}, not this Python ({sys.executable}); "
                      "the notebooks will use that interpreter's packages", stacklevel=2)


def run_notebook(notebook: Path, output: Path, parameters: dict, kernel_name: str = KERNEL_NAME,
                 log_output: bool = False) -> float:
    """Execute one notebook with papermill into ``output``; returns seconds, raises NotebookFailed."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters,
                                   kernel_name=kernel_name, cwd=str(notebook.parent),
                                   progress_bar=False, log_output=log_output,
                                   stdout_file=sys.stdout if log_output else None,
                                   stderr_file=sys.stderr if log_output else None,
                                   # no "Kernel is running over TCP without encryption" per notebook
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except PapermillExecutionError as error:
        source = (error.source or "").strip().splitlines()
        first_line = source[0] if source else ""
        raise NotebookFailed(notebook, output,
                             f"cell {error.cell_index} (execution count {error.exec_count}, starts "
                             f"{first_line!r}): {error.ename}: {error.evalue}") from None
    except Exception as error:  # kernel died, timeout, unreadable notebook, ...
        raise NotebookFailed(notebook, output, f"{type(error).__name__}: {error}") from error
    return time.perf_counter() - started


def run_all(notebooks: Sequence[Path], parameters: dict, output_dir: Path,
            kernel_name: str = KERNEL_NAME, log_output: bool = False,
            log: Callable[[str], None] = print,
            defined: dict[str, set[str]] | None = None) -> list[tuple[str, float]]:
    """Run ``notebooks`` in order; stop at the first failure (NotebookFailed). Returns (name, s) pairs.

    Each notebook receives the parameters its parameters cell defines (papermill would inject the
    others too, as unused variables, with a warning each).
    """
    times = []
    defined = notebook_parameters(notebooks) if defined is None else defined
    for i, notebook in enumerate(notebooks, start=1):
        log(f"[{i}/{len(notebooks)}] {notebook.name} ...")
        own = {k: v for k, v in parameters.items() if notebook.name in defined.get(k, ())}
        seconds = run_notebook(notebook, Path(output_dir) / notebook.name, own, kernel_name,
                               log_output)
        times.append((notebook.name, seconds))
        log(f"[{i}/{len(notebooks)}] {notebook.name} done in {_duration(seconds)}")
    return times


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)} min {seconds:04.1f} s" if minutes else f"{seconds:.1f} s"


def _course_table(results_md: Path) -> str:
    """The first markdown table of a results.md (the course's table)."""
    table = []
    for line in results_md.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        all_notebooks = find_notebooks(args.notebooks_dir)
        parameters = resolve_parameters(args)
        notebooks = select_notebooks(all_notebooks, args.only, args.start)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    defined = notebook_parameters(all_notebooks)
    if args.list:
        for notebook in all_notebooks:
            names = sorted(n for n, where in defined.items() if notebook.name in where)
            print(f"{notebook.name}: {', '.join(names)}")
        return 0

    unknown = sorted(name for name in parameters if name not in defined)
    if unknown:
        print(f"warning: no notebook's parameters cell defines {unknown}; check the spelling "
              f"(`python -m utils.run --list` shows them)", file=sys.stderr)
    try:
        cfg = run_config(parameters)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if uses_imagenet_weights(notebooks, parameters):
        try:   # before any notebook starts: the demo falls back to a from-scratch backbone, HMDB51 stops
            parameters["weights"] = pretrained.resolve_spatial_weights(
                parameters.get("weights", "imagenet"), cfg.dataset_name, log=lambda text: print(text + "\n"))
        except (pretrained.ImageNetWeightsUnavailable, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    output_dir = args.output_dir or Path(cfg.report_dir) / "notebooks"
    print(f"dataset {cfg.dataset_name} ({cfg.data_root}), split {cfg.split}; "
          f"{len(notebooks)} notebook(s) -> {output_dir}")
    shown = {k: v for k, v in parameters.items() if k not in ("dataset", "split")}
    if shown:
        print(f"parameters: {shown}")
    try:
        check_kernel(args.kernel)
        started, started_wall = time.perf_counter(), time.time()
        times = run_all(notebooks, parameters, output_dir, args.kernel, args.log_output, defined=defined)
    except NotebookFailed as error:
        print(f"\nFAILED: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print("\ntime per notebook:")
    for name, seconds in times:
        print(f"  {name:<40} {_duration(seconds)}")
    print(f"  {'total':<40} {_duration(time.perf_counter() - started)}")
    results_md = Path(cfg.report_dir) / "results.md"
    if results_md.is_file() and results_md.stat().st_mtime >= started_wall:
        print(f"\n{_course_table(results_md)}\n\nresults table: {results_md}"
              f" (copied to {Path(config_module.REPORT_DIR) / 'results.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
