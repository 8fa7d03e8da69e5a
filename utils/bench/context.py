"""One benchmark run: its sizes (:class:`Settings`), scratch folder, rows, and what stages share."""
from __future__ import annotations

import datetime
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from utils.bench.machine import machine_id, usable_cores
from utils.bench.rows import DERIVED, MEASURED, SKIPPED, Row, format_value, row
from utils.config import REPO_ROOT, Config

# --- what the projections are projected to -----------------------------------------------------
HMDB51_CLIPS = 6766                 # clips in the split files (each split uses 5100 of them)
HMDB51_FRAME_PAIRS = 640_000        # about: the clips have ~95 frames on average
HMDB51_TEST_CLIPS = 1530            # per split: 30 per class x 51
HMDB51_CLASSES = 51
HMDB51_TRAIN_CLIPS = round(3570 * (1 - Config().val_fraction))   # 70 per class x 51, less the validation carve-out
FLOW_SIZE = (320, 240)              # native size of most HMDB51 clips: the flow-speed input
ALL_METHODS = ("tvl1", "farneback", "dis-ultrafast", "dis-fast", "dis-medium")
# The device check's stages, in its order, and the share of its time budget by whose end each must be done.
DEVICE_STAGE_BUDGET = {"tvl1keras": 0.40, "extract-cpu": 0.46, "extract-batched": 0.54, "generators": 0.60,
                       "models": 0.88, "eval": 0.95, "tvl1keras-parity": 1.0}


def _option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Settings:
    """Sizes of one benchmark run; every field with a help text is a CLI option (``--min-time``)."""

    quick: bool = False
    device: bool = False                # the one-shot GPU check (--device)
    methods: tuple[str, ...] = _option(ALL_METHODS, "flow methods of the flow stages")
    min_time: float = _option(5.0, "seconds each timed measurement lasts at least")
    flow_pairs: int = _option(12, "frame pairs per clip of flow-speed")
    workers: tuple[int, ...] = _option((), "process / worker counts timed (default: 1, 2, 4 .. cores)")
    videos: Path = _option(REPO_ROOT / "tests" / "data" / "hmdb51_clips", "folder of <class>/<clip> videos")
    flow_gt: Path = _option(REPO_ROOT / "tests" / "data" / "flow_gt", "folder of ground-truth pairs")
    max_videos: int | None = _option(None, "clips extracted (default: all; with TV-L1 at most 4)")
    max_frames: int | None = _option(None, "frames per clip extracted (default: whole clips; with TV-L1 16)")
    presets: tuple[str, ...] = _option(("hmdb51", "demo"), "training presets of models: hmdb51 (224 px), demo")
    size: int | None = _option(None, "model input size instead of the presets' (tiny test runs)")
    streams: tuple[str, ...] = _option(("spatial", "temporal"), "streams of models and eval")
    batch_size: int | None = _option(None, "model batch instead of the preset's (at most 16 on a CPU)")
    policies: tuple[str, ...] = _option(("float32",), "Keras precision policies of models, e.g. mixed_float16")
    fit: bool = _option(True, "models: also model.fit fed by the real generators")
    generator_batch: int = _option(16, "batch of the generators stage")
    eval_size: int = _option(224, "input size of the eval stage")
    tvl1_keras_options: dict = field(default_factory=dict)     # TVL1Keras options of every configuration
    tvl1_keras_configs: tuple[dict, ...] = ()   # more TVL1Keras configurations timed on the mix
    tvl1_size: tuple[int, int] | None = _option(None, "WxH the TV-L1 frames are resized to (default 320x240)")
    mix_pairs: int = _option(8, "pairs of each 320x240 clip in the realistic mix")
    gt_pairs: int | None = _option(None, "ground-truth pairs of tvl1keras-parity (default: all on a GPU, else 1)")
    repeats: int = _option(2, "runs of each extraction measurement")
    batched_calls: int = _option(1, "full flow calls of extract-batched")
    time_budget: float | None = _option(None, "seconds for the whole run; what does not fit is 'skipped: budget'")
    stage_budget: dict = field(default_factory=dict)   # stage -> share of time_budget by whose end it must be done

    @classmethod
    def preset(cls, quick: bool = False, device: bool = False, **changes) -> "Settings":
        """``--quick``: tiny sizes, rough figures. ``--device``: the one-shot GPU check (every GPU
        figure in 380 s); with ``--quick`` the same check at tiny sizes (a test of it on a CPU)."""
        preset: dict = dict(quick=quick, device=device)
        if device:
            preset.update(min_time=2.0, presets=("hmdb51",), policies=("float32", "mixed_float16"), repeats=1,
                          batched_calls=8, tvl1_keras_configs=TVL1_DEVICE_CONFIGS,
                          time_budget=380.0, stage_budget=dict(DEVICE_STAGE_BUDGET))
        if quick:
            preset.update(methods=("farneback", "dis-ultrafast", "dis-fast", "dis-medium"), min_time=0.5, flow_pairs=4,
                          max_videos=2, max_frames=12, presets=("demo",), generator_batch=4, eval_size=64, fit=False)
        if quick and device:
            preset.update(methods=("dis-fast",), min_time=0.3, size=32, batch_size=2, generator_batch=2,
                          streams=("temporal",), policies=("mixed_float16",), fit=True, workers=(1, 2), eval_size=32,
                          batched_calls=1, tvl1_size=(64, 48), mix_pairs=2, tvl1_keras_options=QUICK_TVL1,
                          tvl1_keras_configs=({"chunk": 2},), time_budget=None, stage_budget={})
        return cls(**{**preset, **changes})


# More solver configurations the device check times on the mix: longer chunks, more slots, the fused Pallas
# inner loop (JAX only: on another backend it is refused, and its rows say so) and 16-bit storage.
TVL1_DEVICE_CONFIGS = ({"chunk": 6}, {"slots": 128, "chunk": 6}, {"storage": "float16"}, {"kernel": "pallas"},
                       {"kernel": "pallas", "storage": "float16"})
# The solver options of the device check's smoke test and of its quick mode: one level, few iterations.
QUICK_TVL1 = {"nscales": 1, "warps": 2, "outer_iterations": 2, "inner_iterations": 10}
STACK_LENGTH = 10                   # flows per stack (the presets' L)
EVAL_FRAMES = 32                    # frames per clip of the eval stage (--max-frames if smaller)


class Bench:
    """One run: settings, a scratch folder, the rows measured so far, and what stages share."""

    def __init__(self, settings: Settings, workdir: Path, log: Callable[[str], None] = print, machine: str = "",
                 save: Callable[[list[Row]], None] | None = None):
        self.s, self.workdir, self.log, self.machine, self.save = settings, workdir, log, machine, save
        self.measured_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.cores = usable_cores()
        self.rows: list[Row] = []
        self.shared: dict = {}                    # objects built once per run (compiled flow, GT flows)
        self.rawframes: dict[str, Path] = {}      # method -> extracted rawframes folder
        self.started = time.monotonic()

    def time_left(self, stage: str) -> float:
        """Seconds until ``stage`` must end under the run's time budget (infinite without one)."""
        if self.s.time_budget is None:
            return float("inf")
        return self.started + self.s.stage_budget.get(stage, 1.0) * self.s.time_budget - time.monotonic()

    def add(self, *rows: Row) -> None:
        """Stamp ``rows`` with the machine, log and keep them (and ``save`` all so far, if given)."""
        for r in rows:
            r.machine, r.machine_id, r.measured_at = self.machine, machine_id(self.machine), self.measured_at
            self.rows.append(r)
            if r.status in (MEASURED, DERIVED) and r.value is not None:
                self.log(f"  {r.stage:12s} {r.item:24s} {r.setting:38s} {r.metric:26s} "
                         f"{format_value(r.value):>10s} {r.unit}")
        if self.save is not None:
            self.save(list(self.rows))

    def writer(self, stage: str, item: str, setting: str, device: str = "CPU") -> Callable[..., None]:
        """``put(metric, value, status=..., note=...)``: adds a row of this stage, item, setting, device."""
        def put(metric: str, value, status: str = MEASURED, note: str = "") -> None:
            self.add(row(stage, item, setting, metric, value, status=status, device=device, note=note))
        return put

    def skip(self, stage: str, item: str, setting: str, metrics: Iterable[str], device: str, why: str) -> None:
        """Rows "skipped: budget" for a configuration left out for time: every configuration has a row."""
        self.log(f"  {stage}: skipped for time: {item}, {setting} ({why})")
        self.add(*(row(stage, item, setting, m, None, status=SKIPPED, device=device, note=why) for m in metrics))

    def clips(self, limit: int | None = None, size: tuple[int, int] | None = None) -> list[Path]:
        """The run's clips (those of ``size`` WxH if any), at most ``limit``."""
        from utils.extract_job import list_videos
        clips = list_videos(self.s.videos)
        if not clips:
            raise FileNotFoundError(f"no videos under {self.s.videos} (expected <class>/<video>.avi)")
        if size is not None:
            from utils.dataset import video_metadata
            clips = [c for c in clips if (video_metadata(c)["width"], video_metadata(c)["height"]) == size] or clips
        return clips[:limit] if limit else clips

    def gray(self, clip: Path, n_pairs: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """``n_pairs + 1`` consecutive grayscale frames from the middle of a clip (played forwards and back
        if it is shorter), resized to ``size`` WxH if given: uint8[T, H, W]."""
        from utils.extract_job import iter_frames
        frames = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in iter_frames(clip)]
        if len(frames) < 2:
            raise ValueError(f"{clip}: fewer than 2 decodable frames")
        while len(frames) < n_pairs + 1:
            frames += frames[::-1][1:]
        start = len(frames) // 2 - (n_pairs + 1) // 2
        frames = frames[start:start + n_pairs + 1]
        return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames] if size else frames)

    def gt_pairs(self) -> list[Path]:
        pairs = sorted(p.parent for p in Path(self.s.flow_gt).glob("*/gt.flo"))
        if not pairs:
            raise FileNotFoundError(f"no ground-truth pairs <pair>/frame1.png, frame2.png, gt.flo in {self.s.flow_gt}")
        return pairs

    def rawframes_index(self, min_flows: int):
        """An index (the columns ``utils.dataset`` gives) of the run's extracted clips with at least
        ``min_flows`` flows; a few clips are extracted with a fast method first if there are none."""
        import pandas as pd
        from utils.extract import extract_dataset
        from utils.rawframes import count_frames
        counts = {f: count_frames(f) for out in self.rawframes.values() for f in video_folders(out)}
        if not any(n >= min_flows for _, n in counts.values()):
            method = self.extractable(["dis-fast", "farneback", *self.s.methods])[0]
            clips = self.clips(self.s.max_videos)
            out = self.rawframes["inputs"] = self.workdir / "rawframes-inputs"
            self.log(f"  extracting {len(clips)} clip(s) with {method} as generator input")
            extract_dataset(link_clips(clips, self.workdir / "videos-inputs"), out, method, min(self.cores, len(clips)),
                            max_frames=max(min(EVAL_FRAMES, self.s.max_frames or EVAL_FRAMES), min_flows + 1),
                            progress=False)
            counts = {f: count_frames(f) for f in video_folders(out)}
        folders = [f for f, (_, n) in counts.items() if n >= min_flows]
        classes = sorted({f.parent.name for f in folders})
        return pd.DataFrame([{"video": f.name, "class_name": f.parent.name, "frames_path": f, "subset": "train",
                              "label": classes.index(f.parent.name), "n_frames": counts[f][0], "n_flows": counts[f][1]}
                             for f in folders]).drop_duplicates("video")

    def extractable(self, methods: Iterable[str]) -> list[str]:
        """The methods of ``methods`` that ``utils.flow`` has and can run here (the others are logged)."""
        from utils.flow import check_flow_method
        available = []
        for method in dict.fromkeys(methods):
            try:
                check_flow_method(method)
                available.append(method)
            except Exception as error:  # noqa: BLE001 - report, skip the method, go on
                self.log(f"  skipping flow method {method!r}: {error}")
        return available


# --- helpers shared by the stages ---------------------------------------------------------------
def read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def link_clips(clips: Sequence[Path], videos_dir: Path, copies: int = 1) -> Path:
    """``videos_dir/<class>/<clip>`` linked to ``clips`` (``copies`` > 1: each under more names)."""
    shutil.rmtree(videos_dir, ignore_errors=True)
    for k in range(copies):
        for clip in clips:
            target = videos_dir / clip.parent.name / (clip.name if copies == 1 else f"{clip.stem}_{k}{clip.suffix}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(clip.resolve())
    return videos_dir


def video_folders(rawframes: Path) -> list[Path]:
    return sorted(p for c in rawframes.iterdir() if c.is_dir() and not c.name.startswith(".")
                  for p in c.iterdir() if p.is_dir() and not p.name.startswith("."))
