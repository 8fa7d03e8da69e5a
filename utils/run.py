"""One command for the whole pipeline: execute notebooks 00-05 in order, headless, with papermill.

    python -m utils.run                                # default dataset: hmdb51 if on disk, else demo
    python -m utils.run --dataset demo --quick         # the CI preset (QUICK below), on any dataset
    python -m utils.run --dataset demo --experiments   # 00-05, then the experiments 06-08, the wider table
    python -m utils.run --dataset hmdb51 -p split=2 -p finetune_epochs=12
    python -m utils.run --from 03                      # 03, 04, 05
    python -m utils.run --only 04,05 -p test_crops=1

Every notebook starts with a parameters cell (tagged ``parameters``); papermill injects the
values given here after it, as a new cell. Each notebook gets the values of the names its own
parameters cell defines (``-p workers=4`` reaches every notebook that has ``workers``); a name
that no notebook defines is an error (a typo would silently change nothing), and so is a value of
another type than the parameters cell gives it (its annotation, ``image_size: int = None``, or its
default's type; None is always accepted), both before any notebook starts.
``-p`` values are Python literals (``3``, ``0.5``, ``None``, ``"a b"``, ``[1, 2]``); anything that
is not a literal is taken as a string.

Executed copies (with outputs) go to ``report/<run>/notebooks/``, each written under a temporary
name and renamed when complete (a full disk never leaves an empty one). The run stops at the first
notebook that fails, names it and the cell, and exits with status 1; Ctrl-C stops it with one line
(status 130), and the same command resumes. One run per report folder at a time: a second one is
refused (:mod:`utils.writers`).
"""
from __future__ import annotations

import argparse
import ast
import difflib
import errno
import logging
import os
import re
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

from utils import config as config_module
from utils import pretrained, writers
from utils.config import Config, default_dataset, dataset_root, BUILTIN_DATASETS

NOTEBOOKS_DIR = config_module.REPO_ROOT / "notebooks"
KERNEL_NAME = "python3"
NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_.+\.ipynb$")
COURSE = ("00", "01", "02", "03", "04", "05")   # the two-stream pipeline: what a plain run executes
EXPERIMENTS = ("06", "07", "08")                 # after it with --experiments: SG3I, the 3D CNN, learned fusion

QUICK: dict[str, object] = {
    "max_videos": 40,          # 00: clips opened to measure lengths
    "flow_method": "dis",      # 01: DIS flow, ~20x faster to extract than TV-L1
    "weights": None,           # 02: ResNet-50 from scratch (CI machines cannot download ImageNet weights)
    "image_size": 42,          # 02, 03: network input side (the demo's; 224 is the GPU preset)
    "spatial_batch_size": 16,  # 02: frames per step
    "frames_per_video": 4,     # 02: frames per training video and epoch
    "warmup_epochs": 0,        # 02: no head-only phase (nothing pretrained to protect)
    "finetune_epochs": 2,      # 02: epochs of the spatial stream
    "head_learning_rate": 0.01, "finetune_learning_rate": 0.001, "unfreeze_from": "conv1",
    "spatial_dropout": 0.5, "spatial_optimizer": "adamw", "label_smoothing": 0.2,   # 02: the demo's from scratch
    "temporal_width": 0.25,    # 03: CNN-M-2048 at 1/4 of its channels (1.0: 117.8 M parameters)
    "temporal_batch_size": 16, # 03: stacks per step (the GPU preset: 256)
    "stacks_per_video": 4,     # 03: stacks per training video and epoch (the GPU preset: 86)
    "temporal_epochs": 8,      # 03: epochs of the temporal stream (a few seconds each)
    "temporal_dropout": 0.5, "temporal_learning_rate": 0.01, "temporal_optimizer": "sgd",   # 03: the demo's
    "whole_video_segments": 5, # 05-08: 5 equally spaced frames / stacks / SG3Is / clips per video (whole-video protocol)
    "test_crops": 1,           # 05: the centre crop only (the GPU preset: 10)
    "refit": False,            # 02, 03: no final fit on all training clips (the demo's single run)
    "c3d_epochs": 4,           # 07: epochs of the 3D CNN (5-7 s each on the demo; enough for the colour)
    "fusion_epochs": 100,      # 08: passes of the learned fusion over the validation videos
    "sg3i_epochs": 1,          # 06: one short epoch of the SG3I stream: the notebook runs end to end, but
    "sg3i_per_video": 2,       #     learning the demo's motion takes the preset's 10 epochs x 8 SG3Is per video
}
"""The ``--quick`` preset (CI, a first try on any dataset): the same small settings on every dataset,
whether ``--dataset`` is the demo, HMDB51 or a path, so that a run exercises every notebook end to
end in minutes on a CPU with well under 4 GB of memory (``tests/test_mmaction2_folder.py`` checks the
peak on a small dataset given by path). The training values are the demo's CPU presets
(``utils.training``, ResNet-50 from scratch), so a quick demo run is what it was; what still grows
with the dataset is the extraction (every video) and the number of steps (every clip).

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


def run_set(notebooks: Sequence[Path], experiments: bool = False) -> tuple[list[Path], list[str]]:
    """The notebooks a run goes through: the course (00-05), then, with ``experiments``, those of 06-08
    that exist. Returns ``(notebooks, numbers of experiments not found)``."""
    wanted = COURSE + (EXPERIMENTS if experiments else ())
    chosen = [p for p in notebooks if p.name[:2] in wanted]
    present = {p.name[:2] for p in chosen}
    return chosen, [n for n in EXPERIMENTS if experiments and n not in present]


def _number(token: str) -> str:
    token = token.strip()
    return f"{int(token):02d}" if token.isdigit() else token


def select_notebooks(notebooks: Sequence[Path], only: str | None = None,
                     start: str | None = None) -> list[Path]:
    """Notebooks named by ``only`` (``"02,03"``, numbers or names) or from ``start`` on (``"03"``)."""
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
        return list(notebooks[positions[0]:])
    return list(notebooks)


def notebook_parameters(notebooks: Iterable[Path]) -> dict[str, set[str]]:
    """``{parameter name: {notebooks defining it}}`` from the notebooks' parameters cells."""
    return {name: set(spec["notebooks"]) for name, spec in parameter_specs(notebooks).items()}


def parameter_specs(notebooks: Iterable[Path]) -> dict[str, dict]:
    """``{name: {"notebooks": [...], "types": {notebook: type}, "defaults": {notebook: text}}}`` from the
    parameters cells (papermill's reading of them).

    A parameter's type is its annotation (``image_size: int = None``) or the type of its default
    value (``split = 1``: int); a parameter whose default is None and that has no annotation has none.
    """
    import papermill

    specs: dict[str, dict] = {}
    for path in notebooks:
        for name, info in papermill.inspect_notebook(str(path)).items():
            spec = specs.setdefault(name, {"notebooks": [], "types": {}, "defaults": {}})
            spec["notebooks"].append(path.name)
            spec["defaults"][path.name] = info.get("default")
            annotated = info.get("inferred_type_name")
            if annotated and annotated != "None":
                spec["types"][path.name] = annotated
                continue
            try:
                default = ast.literal_eval(str(info.get("default")))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue          # not a literal: no type to check against
            if default is not None:
                spec["types"][path.name] = type(default).__name__
    return specs


_ACCEPTS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
            "list": (list, tuple), "tuple": (list, tuple), "dict": (dict,)}


def wrong_types(parameters: dict, specs: dict[str, dict]) -> list[str]:
    """One line per ``-p`` value whose type is not the one its notebooks' parameters cells declare.

    None is always accepted (it means "the preset" in these notebooks); an int is a float; True
    and False are not numbers here.
    """
    problems = []
    for name, value in parameters.items():
        if value is None or name not in specs:
            continue
        for notebook, declared in specs[name]["types"].items():
            accepted = _ACCEPTS.get(declared)
            if accepted is None:
                continue
            ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)
            if not ok:
                article = "an" if declared[0] in "aeiou" else "a"
                problems.append(f"-p {name}={value!r}: {notebook} expects {article} {declared} for {name} (its "
                                f"parameters cell; None also works), got {type(value).__name__}; give {article} "
                                f"{declared}" + (" (text needs no quotes: -p name=text)" if declared == "str" else ""))
                break
    return problems


def unknown_parameters(parameters: dict, notebooks: Iterable[Path]) -> list[str]:
    """Names in ``parameters`` that no notebook's parameters cell defines."""
    defined = notebook_parameters(notebooks)
    return sorted(name for name in parameters if name not in defined)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.run",
        description="Run the notebooks 00-05 in order (with --experiments also 06-08), headless (papermill), "
                    "and print the results table.",
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
    parser.add_argument("--experiments", action="store_true",
                        help="after 00-05, run the experiments 06-08 (SG3I, the 3D CNN, the learned fusion; "
                             "a missing one is skipped with a note) and print the wider table")
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
    tmp = output.with_name(f".{output.stem}.tmp-{os.getpid()}.ipynb")   # renamed to ``output`` once readable
    kernel_stderr = tempfile.TemporaryFile()
    interrupted = False
    try:
        papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters,
                                   kernel_name=kernel_name, cwd=str(notebook.parent),
                                   progress_bar=False, log_output=log_output,
                                   stdout_file=sys.stdout if log_output else None,
                                   stderr_file=sys.stderr if log_output else None,
                                   # no "Kernel is running over TCP without encryption" per notebook
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"],
                                   kernel_manager_class=_kernel_manager(kernel_stderr))
    except KeyboardInterrupt:
        interrupted = True
        raise
    except PapermillExecutionError as error:
        if error.ename == "KeyboardInterrupt":      # Ctrl-C reached the kernel too
            interrupted = True
            raise KeyboardInterrupt from None
        source = (error.source or "").strip().splitlines()
        first_line = source[0] if source else ""
        raise NotebookFailed(notebook, output,
                             f"cell {error.cell_index} (execution count {error.exec_count}, starts "
                             f"{first_line!r}): {error.ename}: {error.evalue}") from None
    except OSError as error:  # the executed copy cannot be written: a full disk, a read-only folder
        raise OutputNotWritable(f"{output}: cannot be written ({error.strerror or error}); "
                                f"{_write_advice(error.errno)}, then run the same command "
                                f"again (what the notebooks finished is kept)") from None
    except Exception as error:  # kernel died, timeout, unreadable notebook, ...
        raise NotebookFailed(notebook, output, f"{type(error).__name__}: {error}") from error
    finally:
        _keep_if_readable(tmp, output)
        _pass_on(kernel_stderr, not interrupted)
    return time.perf_counter() - started


def _kernel_manager(stderr):
    """A Jupyter kernel manager whose kernel writes its own error output (C++ libraries, FFmpeg, and the
    kernel's log) to ``stderr``, a file: passed on after the notebook (:func:`_pass_on`), dropped after
    Ctrl-C, when the kernel, shut down mid-cell, logs a traceback that means nothing to the user."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            kw.setdefault("stderr", stderr)
            return await super().start_kernel(**kw)

    return KernelManager


def _pass_on(stderr, show: bool) -> None:
    """Copy what a kernel wrote to its error output to this process's, then close the file."""
    try:
        if show:
            stderr.seek(0)
            text = stderr.read().decode("utf-8", "replace")
            if text.strip():
                sys.stderr.write(text if text.endswith("\n") else text + "\n")
                sys.stderr.flush()
    finally:
        stderr.close()


class OutputNotWritable(RuntimeError):
    """An executed notebook or the report cannot be written (full disk, read-only folder); the message names it."""


def _write_advice(code: int | None, option: str | None = None) -> str:
    """What to do about an error ``code`` when writing into a folder (``option``: how to give another one)."""
    elsewhere = f" or give {option} another folder" if option else ""
    return {errno.ENOSPC: "free some space on that disk", errno.EDQUOT: "free some space (disk quota)",
            errno.EACCES: f"it is not writable for you: fix its permissions{elsewhere}",
            errno.EPERM: f"it is not writable for you: fix its permissions{elsewhere}",
            errno.EROFS: f"it is on a read-only file system{': give ' + option + ' another folder' if option else ''}",
            }.get(code, f"check that folder{elsewhere}")


def _keep_if_readable(tmp: Path, output: Path) -> None:
    """Rename a complete executed notebook into place; delete it when it is empty or cut short (a full
    disk), so ``output`` is never a file that the next run's messages point at and cannot be opened."""
    import nbformat

    if not tmp.exists():
        return
    try:
        nbformat.read(tmp, as_version=4)
        os.replace(tmp, output)
    except Exception:  # noqa: BLE001 - any unreadable file is removed
        tmp.unlink(missing_ok=True)


def check_output_folder(folder: Path, option: str | None = None) -> None:
    """``OutputNotWritable`` naming ``folder`` unless it is, or can be, a writable folder (``option``: the
    command-line option that gives another one, if there is one)."""
    try:
        writers.check_writable(folder)
    except writers.FolderNotWritable as error:
        if error.errno == errno.ENOTDIR:
            advice = f"give {option} a folder" if option else "remove it or move it away"
        else:
            advice = _write_advice(error.errno, option)
        raise OutputNotWritable(f"{error}; {advice}") from None


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


def _course_table(results_md: Path, heading: str | None = None) -> str:
    """The first markdown table of a results.md (the course's table) and the list of score files left
    out of it when there is one (:data:`utils.report.LEFT_OUT`); or the first table after ``heading``."""
    from utils.report import LEFT_OUT

    lines = results_md.read_text(encoding="utf-8").splitlines()
    if heading is not None:
        lines = lines[next((i for i, line in enumerate(lines) if line.strip() == heading), len(lines)):]
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    shown = lines[start:end]
    rest = [line for line in lines[end:end + 2] if line.strip()]
    if heading is None and rest and rest[0] == LEFT_OUT:
        notes = lines[lines.index(LEFT_OUT, end):]
        shown += ["", *notes[:next((k for k, line in enumerate(notes) if not line.strip()), len(notes))]]
    return "\n".join(shown)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; exit status 0 done, 1 a notebook failed, 2 bad usage or an unusable folder,
    130 interrupted (Ctrl-C: one line, no traceback; the next run resumes)."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)


def _interrupted(signum, frame):
    """Ctrl-C: from now on the shutting-down kernel client logs nothing ("Kernel died ...", asyncio's
    "Task exception was never retrieved"): the one line printed by :func:`main` says what happened."""
    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        all_notebooks = find_notebooks(args.notebooks_dir)
        parameters = resolve_parameters(args)
        # --from 06 (or later) starts among the experiments: it runs them without --experiments
        after_course = bool(args.start) and _number(args.start) > COURSE[-1]
        pool, absent = run_set(all_notebooks, args.experiments or after_course)
        notebooks = select_notebooks(all_notebooks if args.only else pool, args.only, args.start)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    specs = parameter_specs(all_notebooks)
    defined = {name: set(spec["notebooks"]) for name, spec in specs.items()}
    unknown = sorted(name for name in parameters if name not in defined)
    if unknown:
        close = {name: difflib.get_close_matches(name, defined, n=1) for name in unknown}
        hints = "; ".join(f"{name}: did you mean {match[0]}?" for name, match in close.items() if match)
        print(f"error: no notebook's parameters cell defines {', '.join(unknown)}"
              + (f" ({hints})" if hints else "") + f"; the parameters are: {', '.join(sorted(defined))} "
              f"(`python -m utils.run --list` shows them per notebook)", file=sys.stderr)
        return 2
    problems = wrong_types(parameters, specs)
    if problems:
        print("error: " + "\nerror: ".join(problems), file=sys.stderr)
        return 2
    if args.list:
        for notebook in all_notebooks:
            names = sorted(n for n, where in defined.items() if notebook.name in where)
            print(f"{notebook.name}: {', '.join(names)}")
        return 0

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
    for number in absent if args.experiments else ():
        print(f"note: --experiments: there is no notebook {number}_*.ipynb in {args.notebooks_dir} yet; "
              f"skipping it (its rows of the table read \"not run\")")
    locks = []
    try:
        check_output_folder(output_dir, "--output-dir")
        check_output_folder(Path(cfg.report_dir))
        # one run per report folder: a second one is refused until this one ends (or is killed)
        for folder in dict.fromkeys([Path(cfg.report_dir), output_dir]):
            locks.append(writers.hold(folder, "run of the notebooks"))
    except (OutputNotWritable, writers.FolderBusy) as error:
        for lock in locks:
            lock.release()
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        return _run_and_report(args, cfg, notebooks, parameters, output_dir, defined)
    finally:
        for lock in locks:
            lock.release()


def _run_and_report(args, cfg: Config, notebooks: Sequence[Path], parameters: dict, output_dir: Path,
                    defined: dict[str, set[str]]) -> int:
    """Run the notebooks and print the table: what :func:`main` does once the folders are its own."""
    print(f"dataset {cfg.dataset_name} ({cfg.data_root}), split {cfg.split}; "
          f"{len(notebooks)} notebook(s) -> {output_dir}")
    shown = {k: v for k, v in parameters.items() if k not in ("dataset", "split")}
    if shown:
        print(f"parameters: {shown}")
    writers.remove_dead_temporaries(output_dir)      # executed copies of a killed run
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
        print(f"\n{_course_table(results_md)}")
        if args.experiments:
            from utils.report import EXPERIMENTS_HEADING

            print(f"\n{EXPERIMENTS_HEADING}\n\n{_course_table(results_md, EXPERIMENTS_HEADING)}")
        print(f"\nresults table: {results_md} (copied to {Path(config_module.REPORT_DIR) / 'results.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
