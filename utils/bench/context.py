"""One benchmark run: its sizes (:class:`Settings`), scratch folder, rows, and what stages share."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from utils.bench.machine import usable_cores
from utils.bench.rows import DERIVED, MEASURED, Row, format_value
from utils.config import REPO_ROOT, Config

# --- what the projections are projected to -----------------------------------------------------
HMDB51_CLIPS = 6766                 # clips in the split files (each split uses 5100 of them)
HMDB51_FRAME_PAIRS = 640_000        # about: the clips have ~95 frames on average
HMDB51_TRAIN_CLIPS = 3570           # per split: 70 per class x 51 (before the validation carve-out)
HMDB51_TEST_CLIPS = 1530            # per split: 30 per class x 51
HMDB51_CLASSES = 51
MEAN_PAIRS_PER_CLIP = HMDB51_FRAME_PAIRS / HMDB51_CLIPS
HMDB51_TRAIN_CLIPS_NO_VAL = round(HMDB51_TRAIN_CLIPS * (1 - Config().val_fraction))   # after the val carve-out
FLOW_SIZE = (320, 240)              # native size of most HMDB51 clips: the flow-speed input

TEST_DATA = REPO_ROOT / "tests" / "data"
DEFAULT_VIDEOS = TEST_DATA / "hmdb51_clips"
DEFAULT_FLOW_GT = TEST_DATA / "flow_gt"
ALL_METHODS = ("tvl1", "farneback", "dis-ultrafast", "dis-fast", "dis-medium")
# The device check's stages and the share of its time budget by whose end each must be done.
DEVICE_STAGE_BUDGET = {"tvl1keras": 0.25, "extract-cpu": 0.30, "extract-batched": 0.36, "generators": 0.45,
                       "fit": 0.90, "eval": 1.0}


@dataclass
class Settings:
    """Sizes of one benchmark run (``--quick`` shrinks them all; every one has a CLI option)."""

    quick: bool = False
    device: bool = False                # the one-shot GPU check (--device): parity on every GT pair
    methods: tuple[str, ...] = ALL_METHODS
    default_method: str = Config().flow_method       # what extraction uses unless told otherwise
    min_time: float = 5.0               # seconds each timed measurement lasts at least
    flow_pairs: int = 12                # consecutive 320x240 pairs per clip for flow-speed
    tvl1_keras_pairs: int | None = None     # pairs per call of the Keras TV-L1 (default: 4 on CPU, 64 on GPU)
    tvl1_keras_gt_pairs: int | None = None  # GT pairs for its parity (default: all on GPU, 1 on CPU)
    workers: tuple[int, ...] = ()       # worker counts for flow-speed (default 1, 2, 4 .. cores)
    videos: Path = DEFAULT_VIDEOS
    flow_gt: Path = DEFAULT_FLOW_GT
    max_videos: int | None = None       # clips used (extract, generators, eval)
    max_frames: int | None = None       # frames per clip for extraction (None: whole clips)
    slow_max_videos: int = 4            # TV-L1 extraction: fewer clips ...
    slow_max_frames: int = 16           # ... and frames (about 1 s per pair per core)
    extract_methods: tuple[str, ...] = ()   # default: the default method and dis-medium
    presets: tuple[str, ...] = ("hmdb51", "demo")   # training presets of utils.training (224 / 56 px)
    size: int | None = None             # override the presets' input size (tiny test runs)
    streams: tuple[str, ...] = ("spatial", "temporal")
    batch_size: int | None = None       # override the presets' batch (on a CPU they are capped at 16)
    policies: tuple[str, ...] = ("float32",)   # Keras precision policies the models are timed with
    generator_batch: int = 16
    fit_workers: int | None = None      # worker threads of the generators feeding fit (default: one per core)
    generator_workers: tuple[int, ...] = ()    # worker counts of the generators stage (default 1, 2, 4 .. cores)
    stack_length: int = 10
    eval_size: int = 224
    eval_max_frames: int = 32           # frames per clip for the whole-video evaluation
    eval_videos: int = 4
    demo_method: str | None = None      # default: DEMO_SETTINGS["flow_method"]
    tvl1_keras_options: dict = field(default_factory=dict)     # TVL1Keras options of every configuration
    tvl1_keras_configs: tuple[dict, ...] = ()   # more TVL1Keras configurations timed after the defaults
    tvl1_size: tuple[int, int] | None = None    # (width, height) the TV-L1 frames are resized to (tiny runs)
    repeats: int = 2                    # runs of each CPU-side measurement (the best counts)
    batched_calls: int = 1              # full flow calls of the extract-batched stage
    time_budget: float | None = None    # seconds for the whole run (None: no limit); see stage_budget
    stage_budget: dict = field(default_factory=dict)   # stage -> share of time_budget it may end by

    @classmethod
    def device_preset(cls, quick: bool = False, **changes) -> "Settings":
        """The one-shot GPU check (``--device``): every GPU figure within ``time_budget`` (7.5 min);
        ``quick``: tiny sizes, to test the check itself on a CPU (CI)."""
        preset = dict(device=True, min_time=2.0, presets=("hmdb51",), policies=("float32", "mixed_float16"), repeats=1,
                      batched_calls=8, max_videos=None,
                      tvl1_keras_configs=({"chunk": 6}, {"slots": 128, "chunk": 6}),
                      time_budget=450.0, stage_budget=dict(DEVICE_STAGE_BUDGET))
        if quick:
            preset.update(quick=True, methods=("dis-fast",), min_time=0.3, size=32, batch_size=2, generator_batch=2,
                          presets=("demo",), streams=("temporal",),
                          generator_workers=(1, 2), fit_workers=2, max_videos=2, max_frames=12, eval_size=32,
                          eval_max_frames=12, eval_videos=1, batched_calls=1, tvl1_size=(40, 30),
                          tvl1_keras_options={"nscales": 1, "warps": 1, "outer_iterations": 2, "inner_iterations": 5},
                          tvl1_keras_configs=(), time_budget=None, stage_budget={})
        preset.update(changes)
        return cls(**preset)

    @classmethod
    def quick_preset(cls, **changes) -> "Settings":
        preset = dict(quick=True, methods=("farneback", "dis-ultrafast", "dis-fast", "dis-medium"),
                      min_time=0.5, flow_pairs=4, tvl1_keras_pairs=2, max_videos=2, max_frames=12, slow_max_videos=1,
                      slow_max_frames=4, presets=("demo",), generator_batch=4,
                      eval_size=64, eval_max_frames=12, eval_videos=1)
        preset.update(changes)
        return cls(**preset)


class Bench:
    """One run: settings, a scratch folder, the rows measured so far, and what stages share."""

    def __init__(self, settings: Settings, workdir: Path, log: Callable[[str], None] = print):
        self.s = settings
        self.workdir = workdir
        self.log = log
        self.cores = usable_cores()
        self.rows: list[Row] = []
        self.flows: dict[tuple[str, str], tuple[np.ndarray, float]] = {}   # (GT pair, method) -> (flow, ms)
        self.rawframes: dict[str, Path] = {}                   # method -> extracted rawframes folder
        self.recommended: dict | None = None
        self.shared: dict = {}                                  # objects built once per run (compiled flow)
        self.started = time.monotonic()

    def time_left(self, stage: str) -> float:
        """Seconds until ``stage`` must end under the run's time budget (infinite without one)."""
        if self.s.time_budget is None:
            return float("inf")
        share = self.s.stage_budget.get(stage, 1.0)
        return self.started + share * self.s.time_budget - time.monotonic()

    def add(self, *rows: Row) -> None:
        for r in rows:
            self.rows.append(r)
            if r.status in (MEASURED, DERIVED) and r.value is not None:
                self.log(f"  {r.stage:12s} {r.item:24s} {r.setting:38s} {r.metric:26s} "
                         f"{format_value(r.value):>10s} {r.unit}")

    def clips(self, limit: int | None = None, native_size: tuple[int, int] | None = None) -> list[Path]:
        from utils.extract_job import list_videos
        clips = list_videos(self.s.videos)
        if not clips:
            raise FileNotFoundError(f"no videos under {self.s.videos} (expected <class>/<video>.avi)")
        if native_size is not None:
            clips = [c for c in clips if video_size(c) == native_size] or clips
        return clips[:limit] if limit else clips

    def gray_pairs_clip(self, clip: Path, n_pairs: int) -> np.ndarray:
        """``n_pairs + 1`` consecutive grayscale frames from the middle of a clip, uint8[T, H, W]."""
        from utils.extract_job import iter_frames
        frames = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in iter_frames(clip)]
        if len(frames) < 2:
            raise ValueError(f"{clip}: fewer than 2 decodable frames")
        n = min(n_pairs + 1, len(frames))
        start = max(0, len(frames) // 2 - n // 2)
        return np.stack(frames[start:start + n])

    def methods_available(self, methods: Iterable[str]) -> list[str]:
        from utils.flow import make_video_flow
        out = []
        for method in methods:
            try:
                make_video_flow(method)
                out.append(method)
            except Exception as error:  # noqa: BLE001 - report, skip the method, go on
                self.log(f"  skipping flow method {method!r}: {error}")
        return out

    def extractable(self, methods: Iterable[str]) -> list[str]:
        """The methods ``utils.extract`` can run (registered in ``utils.flow``, available here)."""
        from utils.flow import FLOW_METHODS
        registered = [m for m in dict.fromkeys(methods) if m in FLOW_METHODS]
        for method in set(methods) - set(registered):
            self.log(f"  {method!r} is not registered in utils.flow, so utils.extract cannot use it; skipped")
        return self.methods_available(registered)

    def gt_pairs(self) -> list[Path]:
        root = self.s.flow_gt
        pairs = sorted(p for p in root.iterdir() if (p / "gt.flo").is_file()) if root.is_dir() else []
        if not pairs:
            raise FileNotFoundError(f"no ground-truth pairs under {root} (expected <pair>/frame1.png, frame2.png, gt.flo)")
        return pairs

    def rawframes_index(self, min_flows: int):
        """An index DataFrame over extracted fixture clips (extracting a few with a fast method if needed)."""
        import pandas as pd
        from utils.rawframes import count_frames
        from utils.extract import extract_dataset
        source = None
        for folder in self.rawframes.values():
            counts = [count_frames(p) for p in video_folders(folder)]
            if counts and min(n for _, n in counts) >= min_flows:
                source = folder
                break
        if source is None:
            method = self.extractable(["dis-fast", "farneback", *self.s.methods])[0]
            clips = self.clips(self.s.eval_videos if self.s.quick else self.s.max_videos)
            videos_dir = self.workdir / "videos-inputs"
            link_clips(clips, videos_dir)
            source = self.workdir / "rawframes-inputs"
            if not source.exists():
                frames = max(self.s.eval_max_frames, min_flows + 1)
                self.log(f"  extracting {len(clips)} clip(s) ({frames} frames, {method}) as generator input")
                extract_dataset(videos_dir, source, method, min(self.cores, len(clips)), max_frames=frames,
                                progress=False)
            self.rawframes.setdefault("inputs", source)
        folders = video_folders(source)
        classes = sorted({f.parent.name for f in folders})
        rows = []
        for folder in folders:
            n_frames, n_flows = count_frames(folder)
            if n_flows >= min_flows:
                rows.append({"video": folder.name, "class_name": folder.parent.name, "frames_path": folder,
                             "label": classes.index(folder.parent.name), "n_frames": n_frames, "n_flows": n_flows,
                             "subset": "train"})
        if not rows:
            raise RuntimeError(f"no extracted clip in {source} has {min_flows} flows")
        return pd.DataFrame(rows)


# --- helpers shared by the stages ---------------------------------------------------------------
def video_size(path: Path) -> tuple[int, int]:
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()


def read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def link_clips(clips: Sequence[Path], videos_dir: Path) -> None:
    """``videos_dir/<class>/<clip>`` pointing at ``clips`` (symlinks, copies where links fail)."""
    shutil.rmtree(videos_dir, ignore_errors=True)
    for clip in clips:
        target = videos_dir / clip.parent.name / clip.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(clip.resolve())
        except OSError:
            shutil.copy2(clip, target)


def video_folders(rawframes: Path) -> list[Path]:
    return sorted(p for c in rawframes.iterdir() if c.is_dir() and not c.name.startswith(".")
                  for p in c.iterdir() if p.is_dir() and not p.name.startswith("."))


def per_clip_inputs(stream: str, stack_length: int) -> float:
    """Network inputs of the whole-video protocol for a mean HMDB51 clip."""
    return MEAN_PAIRS_PER_CLIP + 1 if stream == "spatial" else MEAN_PAIRS_PER_CLIP - stack_length + 1

