"""One small config for the whole repository: paths from the repo root, dataset choice, hyper-parameters.

Every module may import this file; nothing else is shared implicitly. Notebooks build a
:class:`Config` from their parameters cell, e.g. ``cfg = Config(dataset="demo", split=1)``.

Paths never depend on the working directory: they are resolved from the location of this
file, so notebooks opened from ``notebooks/``, papermill runs, pytest and plain scripts all
see the same ``data/``, ``models/`` and ``report/``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"
MODELS_DIR = REPO_ROOT / "models"
REPORT_DIR = REPO_ROOT / "report"

BUILTIN_DATASETS = ("demo", "hmdb51", "ucf101")


def dataset_root(dataset: str | os.PathLike) -> Path:
    """Folder of a dataset: ``videos/<class>/<clip>`` and ``splits/`` (HMDB51's or UCF101's official
    split files, or mmaction2 list files).

    ``"demo"``, ``"hmdb51"`` and ``"ucf101"`` live in ``data/<name>/``; anything else is taken as a
    path (relative paths from the current directory).
    """
    if str(dataset) in BUILTIN_DATASETS:
        return DATA_DIR / str(dataset)
    return Path(dataset).expanduser().resolve()


CLASS_SUBSETS: dict[str, tuple[str, ...]] = {
    # The 12 HMDB51 classes that have a Stanford 40 Actions counterpart (Yao et al., "Human action
    # recognition by learning bases of action attributes and parts", ICCV 2011; its 40 class names at
    # http://vision.stanford.edu/Datasets/40actions.html), in the pairing of a public course assignment
    # (transfer from Stanford 40 images to HMDB51 videos), whose skeleton code lists them as
    # keep_hmdb51 / keep_stanford40: clap <- applauding, climb <- climbing, drink <- drinking, jump <-
    # jumping, pour <- pouring_liquid, ride_bike <- riding_a_bike, ride_horse <- riding_a_horse, run <-
    # running, shoot_bow <- shooting_an_arrow, smoke <- smoking, throw <- throwing_frisby, wave <-
    # waving_hands. The list is found verbatim in many public student repositories; no single
    # upstream repository of the assignment was found to cite.
    "stanford40": ("clap", "climb", "drink", "jump", "pour", "ride_bike", "ride_horse", "run",
                   "shoot_bow", "smoke", "throw", "wave"),
}
"""Named class subsets for ``Config(classes=...)`` (``-p classes=stanford40``)."""


def resolve_classes(classes) -> tuple[str, ...] | None:
    """The class names of a ``classes`` setting, as a tuple (``None``: every class of the dataset).

    ``classes`` is a list of names, a name of :data:`CLASS_SUBSETS` (``"stanford40"``), the path of a
    text file with one class name per line (blank lines and ``#`` comments skipped), or names
    separated by commas (``"clap,wave"``, also ``"[clap, wave]"`` as ``-p`` passes an unquoted list).
    Whether the names exist in the dataset is checked by :func:`utils.dataset.build_index`.
    """
    if classes is None:
        return None
    if isinstance(classes, str):
        text = classes.strip()
        if text in CLASS_SUBSETS:
            return CLASS_SUBSETS[text]
        path = Path(text).expanduser()
        if path.is_file():
            names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
            names = [name for name in names if name]
            if not names:
                raise ValueError(f"classes file {path.resolve()} names no class (one class name per line)")
            return _unique_names(names, f"classes file {path.resolve()}")
        if len(text) > 1 and text[0] == "[" and text[-1] == "]":
            text = text[1:-1]
        names = [name.strip().strip("'\"") for name in text.split(",")]
        if not any(names) or (len(names) == 1 and ("/" in text or text.endswith(".txt"))):
            raise ValueError(f"classes={classes!r} is neither a file (not found: {path.resolve()}), a subset "
                             f"name ({', '.join(CLASS_SUBSETS)}) nor a list of class names")
        return _unique_names([name for name in names if name], f"classes={classes!r}")
    try:
        names = [str(name).strip() for name in classes]
    except TypeError:
        raise ValueError(f"classes must be a list of class names, a subset name or a file, got {classes!r}") from None
    if not names or not all(names):
        raise ValueError(f"classes must name at least one class, got {classes!r}")
    return _unique_names(names, f"classes={classes!r}")


def _unique_names(names: list[str], where: str) -> tuple[str, ...]:
    seen = set()
    twice = sorted({name for name in names if name in seen or seen.add(name)})
    if twice:
        raise ValueError(f"{where}: class(es) named twice: {', '.join(twice)}")
    return tuple(names)


def classes_tag(classes) -> str:
    """``"12cls-1a2b3c"``: the number of classes and a short hash of their (sorted) names."""
    names = sorted(resolve_classes(classes))
    digest = hashlib.sha1("\n".join(names).encode("utf-8")).hexdigest()[:6]
    return f"{len(names)}cls-{digest}"


def hmdb51_available() -> bool:
    """True when the real HMDB51 split files and at least one video are on disk."""
    root = DATA_DIR / "hmdb51"
    return any((root / "splits").glob("*_test_split1.txt")) and any((root / "videos").glob("*/*.avi"))


def default_dataset() -> str:
    """``"hmdb51"`` when it is on disk, else the built-in ``"demo"`` dataset."""
    return "hmdb51" if hmdb51_available() else "demo"


@dataclass
class Config:
    """Settings shared by the notebooks and the command-line tools.

    Stream-specific training settings (epochs, learning rates, ...) are arguments of the
    training functions; this object holds what several stages must agree on.
    """

    dataset: str = "demo"          # "demo", "hmdb51", "ucf101", or a path (HMDB51/UCF101 layout, mmaction2 lists)
    split: int = 1                 # official split 1, 2 or 3
    val_fraction: float = 0.15     # share of each class's training clips held out for validation
    flow_method: str = "tvl1"      # optical flow used at extraction: tvl1 | farneback | dis
    image_size: int = 224          # network input side (crop size) for both streams
    stack_length: int = 10         # L flow pairs per temporal-stream input (2L channels)
    seed: int = 0
    classes: tuple[str, ...] | None = None   # a class subset (see resolve_classes); None: every class
    fps: int | None = None         # frames resampled to this rate at extraction (None: every frame)
    extra: dict = field(default_factory=dict)  # free-form notebook parameters worth recording

    def __post_init__(self):
        if self.split not in (1, 2, 3):
            raise ValueError(f"split must be 1, 2 or 3, got {self.split!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.fps is not None and (type(self.fps) is not int or self.fps < 1):
            raise ValueError(f"fps must be a whole number of frames per second (e.g. 6) or None, got {self.fps!r}")
        self.dataset = str(self.dataset)
        self.classes = resolve_classes(self.classes)

    # --- where things are -------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        return self.dataset if self.dataset in BUILTIN_DATASETS else self.data_root.name

    @property
    def data_root(self) -> Path:
        return dataset_root(self.dataset)

    @property
    def videos_dir(self) -> Path:
        return self.data_root / "videos"

    @property
    def splits_dir(self) -> Path:
        return self.data_root / "splits"

    @property
    def frames_dir(self) -> Path:
        """Extracted rawframes (mmaction2 layout): ``<class>/<video>/img_00001.jpg``, ``flow_x_...``;
        frames resampled to ``fps`` go to their own folder, ``rawframes_<fps>fps``."""
        return self.data_root / ("rawframes" if self.fps is None else f"rawframes_{self.fps}fps")

    @property
    def variant(self) -> str:
        """What sets this run's data apart from the whole dataset at its native frame rate:
        ``""``, ``"_6fps"``, ``"_12cls-1a2b3c"`` (:func:`classes_tag`) or both."""
        return ("" if self.fps is None else f"_{self.fps}fps") + (
            "" if self.classes is None else f"_{classes_tag(self.classes)}")

    @property
    def run_name(self) -> str:
        """``<dataset>_split<k>`` and the :attr:`variant`, e.g. ``hmdb51_split1_12cls-1a2b3c``."""
        return f"{self.dataset_name}_split{self.split}{self.variant}"

    @property
    def models_dir(self) -> Path:
        """Checkpoints and training logs: ``models/<run>/<stream>/``."""
        return MODELS_DIR / self.run_name

    @property
    def report_dir(self) -> Path:
        """Per-run report material: ``report/<run>/`` (scores, figures, tables)."""
        return REPORT_DIR / self.run_name

    @property
    def scores_dir(self) -> Path:
        return self.report_dir / "scores"

    def stream_dir(self, stream: str) -> Path:
        return self.models_dir / stream

    def override(self, **changes) -> "Config":
        """A copy with some fields changed; unknown names are an error (nanoGPT-style overrides)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise KeyError(f"unknown config field(s) {unknown}; known: {sorted(known)}")
        return replace(self, **changes)
