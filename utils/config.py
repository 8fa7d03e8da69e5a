"""One small config for the whole repository: paths from the repo root, dataset choice, hyper-parameters.

Every module may import this file; nothing else is shared implicitly. Notebooks build a
:class:`Config` from their parameters cell, e.g. ``cfg = Config(dataset="demo", split=1)``.

Paths never depend on the working directory: they are resolved from the location of this
file, so notebooks opened from ``notebooks/``, papermill runs, pytest and plain scripts all
see the same ``data/``, ``models/`` and ``report/``.
"""
from __future__ import annotations

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
    extra: dict = field(default_factory=dict)  # free-form notebook parameters worth recording

    def __post_init__(self):
        if self.split not in (1, 2, 3):
            raise ValueError(f"split must be 1, 2 or 3, got {self.split!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        self.dataset = str(self.dataset)

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
        """Extracted rawframes (mmaction2 layout): ``<class>/<video>/img_00001.jpg``, ``flow_x_...``."""
        return self.data_root / "rawframes"

    @property
    def run_name(self) -> str:
        return f"{self.dataset_name}_split{self.split}"

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
