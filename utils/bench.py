"""Benchmarks: how fast and how good every stage is, measured on this machine.

``python -m utils.bench`` runs the stages below on the real HMDB51 clips and ground-truth flow
pairs shipped in ``tests/data`` and writes ``report/benchmarks.md`` (tables, recommendations,
"how long will this take"), ``report/benchmarks.csv`` (one row per figure) and
``report/benchmarks_readme_table.md`` (the short table for the README).

Stages (``--stages``, comma separated; ``all`` by default):

* ``flow-speed``   frame pairs per second of every flow method at native 320x240: one process with
                   one OpenCV thread, one process with OpenCV's own threads, N processes x 1 thread.
                   The best configuration of the default method becomes the recommended
                   ``python -m utils.extract --workers N --opencv-threads T``.
* ``flow-quality`` average end-point error (EPE) on the ground-truth pairs (``tests/data/flow_gt``),
                   next to the reference figures of the data set README.
* ``flow-storage`` the error added by storing flow as uint8 JPEG (quantise, JPEG q95, dequantise).
* ``flow``         the three above.
* ``tvl1keras``    TV-L1 written in Keras ops (``utils/tvl1_keras.py``) vs OpenCV: speed and parity.
* ``extract``      ``utils.extract.extract_dataset`` end to end, projected to the full HMDB51.
* ``generators``   samples per second of ``SpatialFrames`` / ``FlowStacks``, one worker and N.
* ``models``       training and inference samples per second of both streams, built, compiled and
                   batched as the ``hmdb51`` (224 px) and ``demo`` presets of ``utils.training``, on
                   the Keras backend in use (a GPU if Keras sees one; TensorFlow is not required);
                   GPU rows are "not measured" on a machine without one.
* ``eval``         whole-video evaluation (``utils.evaluation.score_videos``), videos per second.
* ``demo``         the built-in demo data set: making it and extracting it, timed.

Every figure is a throughput or a ratio measured within one run, after a short warm-up, over at
least ``--min-time`` seconds. Figures from another machine (e.g. a GPU box) are merged in::

    python -m utils.bench --stages generators,models,eval,tvl1keras --csv-only gpu.csv   # on the GPU box
    python -m utils.bench --merge gpu.csv                                               # here

Each run updates ``benchmarks.csv``: rows of the stages it ran on this machine are replaced,
everything else (other stages, other machines) is kept; ``--fresh`` starts from an empty table.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import hashlib
import importlib.util
import math
import multiprocessing
import os
import platform
import queue as _queue
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from utils.config import REPO_ROOT, REPORT_DIR, Config

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
STAGES = ("flow-speed", "flow-quality", "flow-storage", "tvl1keras", "extract", "generators",
          "models", "eval", "demo")
STAGE_ALIASES = {"flow": ("flow-speed", "flow-quality", "flow-storage"), "all": STAGES,
                 "none": (), "quick": tuple(s for s in STAGES if s != "tvl1keras"), "speed": ("flow-speed",), "quality": ("flow-quality",),
                 "storage": ("flow-storage",), "evaluation": ("eval",)}

# EPE (px) / ms per pair measured with OpenCV 5.0 defaults, grayscale, one thread; from the README
# of the ground-truth pairs (copied here: the project never reads that folder at run time).
REFERENCE = {
    "mb_RubberWhale": {"tvl1": (0.157, 4282), "farneback": (0.361, 56), "dis-fast": (0.440, 6), "dis-medium": (0.225, 30)},
    "mb_Hydrangea": {"tvl1": (0.193, 5735), "farneback": (0.591, 57), "dis-fast": (0.421, 6), "dis-medium": (0.253, 29)},
    "sintel_final_alley_1_f0002": {"tvl1": (0.547, 12181), "farneback": (1.150, 159), "dis-fast": (0.513, 18), "dis-medium": (0.322, 88)},
    "chairs_0000001": {"tvl1": (1.174, 10182), "farneback": (2.751, 64), "dis-fast": (1.946, 8), "dis-medium": (1.591, 34)},
}
REFERENCE_STORAGE_NOTE = "reference: storing TV-L1 flow this way added +0.01 to +0.02 px EPE"

CSV_COLUMNS = ("machine_id", "stage", "item", "setting", "metric", "value", "unit", "device",
               "status", "note", "measured_at", "machine")
MEASURED, DERIVED, NOT_MEASURED, REFERENCE_STATUS = "measured", "derived", "not measured", "reference"

METRICS = {   # metric -> (column title in the markdown tables, unit)
    "pairs_per_s": ("pairs/s", "pairs/s"),
    "speedup": ("speed-up vs 1 process x 1 thread", "x"),
    "relative_to_tvl1": ("speed vs TV-L1", "x"),
    "epe_px": ("EPE", "px"),
    "ref_epe_px": ("reference EPE", "px"),
    "ms_per_pair": ("ms per pair", "ms"),
    "ref_ms_per_pair": ("reference ms per pair", "ms"),
    "epe_float_vs_gt_px": ("EPE float flow vs GT", "px"),
    "epe_uint8_vs_float_px": ("uint8 vs float", "px"),
    "epe_jpeg_vs_float_px": ("uint8+JPEG vs float", "px"),
    "epe_jpeg_vs_gt_px": ("uint8+JPEG vs GT", "px"),
    "epe_added_px": ("EPE added by storage", "px"),
    "clipped_fraction": ("share of pixels beyond +-20 px", "fraction"),
    "videos_per_s": ("videos/s", "videos/s"),
    "seconds": ("time", "s"),
    "startup_seconds": ("start-up", "s"),
    "pairs_per_s_end_to_end": ("pairs/s incl. start-up", "pairs/s"),
    "frame_pairs": ("frame pairs", "pairs"),
    "kb_per_pair": ("disk per frame pair (RGB + flow x,y)", "KB"),
    "hours_full_hmdb51": ("full HMDB51, this machine", "h"),
    "core_hours_full_hmdb51": ("full HMDB51, per core", "core-h"),
    "disk_gb_full_hmdb51": ("full HMDB51 on disk", "GB"),
    "samples_per_s": ("samples/s", "samples/s"),
    "train_samples_per_s": ("training samples/s", "samples/s"),
    "infer_samples_per_s": ("inference samples/s", "samples/s"),
    "inputs_per_s": ("network inputs/s", "inputs/s"),
    "videos_per_s_hmdb51_clip": ("videos/s (mean HMDB51 clip)", "videos/s"),
    "hours_test_split": ("test split (1530 clips)", "h"),
    "epe_vs_opencv_px": ("EPE vs OpenCV TV-L1", "px"),
    "speed_vs_opencv": ("speed vs OpenCV", "x"),
    "compile_seconds": ("first call (compiles)", "s"),
    "epoch_minutes": ("one epoch", "min"),
    "schedule_hours": ("whole training schedule", "h"),
}


# ================================================================================================
# Rows, machine description, timing
# ================================================================================================
@dataclass
class Row:
    """One figure of the benchmark table (one CSV row)."""

    stage: str
    item: str                 # what was measured: a method, a stream, a generator, a GT pair
    setting: str              # how: processes x threads, image size and batch, ...
    metric: str               # a key of METRICS
    value: float | None
    unit: str = ""
    device: str = "CPU"
    status: str = MEASURED    # measured | derived | reference | not measured
    note: str = ""
    measured_at: str = ""
    machine: str = ""
    machine_id: str = ""

    def key(self) -> tuple:
        return (self.machine_id, self.stage, self.item, self.setting, self.metric, self.device)


def _row(stage, item, setting, metric, value, *, status=MEASURED, device="CPU", note="") -> Row:
    unit = METRICS.get(metric, ("", ""))[1]
    value = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)
    return Row(stage, str(item), str(setting), metric, value, unit, device, status, note)


def usable_cores() -> int:
    """CPU cores this process may use: affinity mask and cgroup quota (containers) both count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    for candidate in (name, f"{name}-cpu", f"{name}-gpu"):
        try:
            return version(candidate)
        except PackageNotFoundError:
            continue
    return "?"


def _nvidia_gpus() -> list[str]:
    """``"name, memory"`` of each NVIDIA GPU that nvidia-smi lists (empty without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [", ".join(part.strip() for part in line.split(",")) for line in out.splitlines() if line.strip()]


def gpu_names() -> list[str]:
    """Names of the GPUs Keras will use (empty list: none, the models run on the CPU)."""
    import keras
    try:
        devices = keras.distribution.list_devices("gpu")
    except Exception:  # noqa: BLE001 - a backend without GPU support says so by raising
        devices = []
    if not devices:
        return []
    names = _nvidia_gpus()
    if not names:
        try:
            if keras.backend.backend() == "torch":
                import torch
                names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            elif keras.backend.backend() == "jax":
                import jax
                names = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        except Exception:  # noqa: BLE001
            names = []
    return names[:len(devices)] or [str(d) for d in devices]


def keras_backend_name() -> str:
    """The Keras backend, without importing Keras (and TensorFlow) when it is not loaded yet."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        import json
        return json.loads(config.read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def machine_info() -> dict:
    """What the figures were measured on (one description per machine in the report)."""
    backend = keras_backend_name()
    gpus = _nvidia_gpus()
    ram = _ram_gib()
    return {
        "cpu": _cpu_model(),
        "cores": f"{usable_cores()} usable ({os.cpu_count()} logical)",
        "ram": f"{ram:.1f} GiB" if ram else "?",
        "gpu": "; ".join(gpus) if gpus else "none found by nvidia-smi",
        "os": platform.platform(),
        "python": platform.python_version(),
        "keras": f"{_package_version('keras')}, backend {backend} {_package_version(backend)}",
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def describe_machine(info: dict) -> str:
    return (f"CPU {info['cpu']}, {info['cores']} cores, RAM {info['ram']}, GPU {info['gpu']}; "
            f"{info['os']}; Python {info['python']}; Keras {info['keras']}; OpenCV {info['opencv']}; "
            f"NumPy {info['numpy']}")


def machine_id(description: str) -> str:
    return hashlib.sha1(description.encode()).hexdigest()[:8]


def time_until(step: Callable[[], int | None], min_time: float, min_reps: int = 1,
               warmup: int = 1) -> tuple[int, float]:
    """Call ``step`` ``warmup`` times untimed, then until ``min_time`` s and ``min_reps`` calls passed.

    ``step`` returns how many items it handled (``None`` counts as 1). Returns ``(items, seconds)``.
    """
    for _ in range(warmup):
        step()
    items, reps, started = 0, 0, time.perf_counter()
    while True:
        done = step()
        items += 1 if done is None else int(done)
        reps += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_time and reps >= min_reps:
            return items, elapsed


def _worker_grid(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    grid, k = [], 1
    while k < cores:
        grid.append(k)
        k *= 2
    return sorted(set(grid + [cores]))


# ================================================================================================
# Settings
# ================================================================================================
@dataclass
class Settings:
    """Sizes of one benchmark run (``--quick`` shrinks them all; every one has a CLI option)."""

    quick: bool = False
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
    mixed_precision: bool = False
    generator_batch: int = 16
    stack_length: int = 10
    eval_size: int = 224
    eval_max_frames: int = 32           # frames per clip for the whole-video evaluation
    eval_videos: int = 4
    demo_method: str | None = None      # default: DEMO_SETTINGS["flow_method"]

    @classmethod
    def quick_preset(cls, **changes) -> "Settings":
        preset = dict(quick=True, methods=("farneback", "dis-ultrafast", "dis-fast", "dis-medium"),
                      min_time=0.5, flow_pairs=4, tvl1_keras_pairs=2, max_videos=2, max_frames=12, slow_max_videos=1,
                      slow_max_frames=4, presets=("demo",), generator_batch=4,
                      eval_size=64, eval_max_frames=12, eval_videos=1)
        preset.update(changes)
        return cls(**preset)


# ================================================================================================
# The benchmark run
# ================================================================================================
class Bench:
    """One run: settings, a scratch folder, and what earlier stages left for later ones."""

    def __init__(self, settings: Settings, workdir: Path, log: Callable[[str], None] = print):
        self.s = settings
        self.workdir = workdir
        self.log = log
        self.cores = usable_cores()
        self.rows: list[Row] = []
        self.flows: dict[tuple[str, str], tuple[np.ndarray, float]] = {}   # (GT pair, method) -> (flow, ms)
        self.rawframes: dict[str, Path] = {}                   # method -> extracted rawframes folder
        self.recommended: dict | None = None

    # --- helpers --------------------------------------------------------------------------------
    def add(self, *rows: Row) -> None:
        for row in rows:
            self.rows.append(row)
            if row.status in (MEASURED, DERIVED) and row.value is not None:
                self.log(f"  {row.stage:12s} {row.item:24s} {row.setting:38s} {row.metric:26s} "
                         f"{format_value(row.value):>10s} {row.unit}")

    def clips(self, limit: int | None = None, native_size: tuple[int, int] | None = None) -> list[Path]:
        from utils.extract import list_videos
        clips = list_videos(self.s.videos)
        if not clips:
            raise FileNotFoundError(f"no videos under {self.s.videos} (expected <class>/<video>.avi)")
        if native_size is not None:
            clips = [c for c in clips if _video_size(c) == native_size] or clips
        return clips[:limit] if limit else clips

    def gray_pairs_clip(self, clip: Path, n_pairs: int) -> np.ndarray:
        """``n_pairs + 1`` consecutive grayscale frames from the middle of a clip, uint8[T, H, W]."""
        from utils.extract import iter_frames
        frames = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in iter_frames(clip)]
        if len(frames) < 2:
            raise ValueError(f"{clip}: fewer than 2 decodable frames")
        n = min(n_pairs + 1, len(frames))
        start = max(0, len(frames) // 2 - n // 2)
        return np.stack(frames[start:start + n])

    def methods_available(self, methods: Iterable[str]) -> list[str]:
        out = []
        for method in methods:
            try:
                _flow_callable(method)
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

    # ============================================================================================
    # flow-speed
    # ============================================================================================
    def stage_flow_speed(self) -> None:
        methods = self.methods_available(self.s.methods)
        clips = self.clips(native_size=FLOW_SIZE)[:max(self.cores, 1)]
        frames = [self.gray_pairs_clip(c, self.s.flow_pairs) for c in clips]
        h, w = frames[0].shape[1:]
        self.log(f"flow-speed: {len(methods)} method(s) on {len(frames)} clip(s) at {w}x{h}, "
                 f"{len(frames[0]) - 1} pairs each")
        grid = list(self.s.workers) or _worker_grid(self.cores)
        rates: dict[str, dict[str, float]] = {m: {} for m in methods}
        size = f"{w}x{h}"
        min_pairs = 2 if not self.s.quick else 1

        previous = cv2.getNumThreads()
        try:
            for method in methods:
                fn = _flow_callable(method)
                for threads in sorted({1, self.cores}):
                    cv2.setNumThreads(threads)
                    pairs, seconds = time_until(_pair_stepper(fn, frames[0]), self.s.min_time, min_pairs)
                    setting = f"1 process x {threads} OpenCV thread{'s' if threads > 1 else ''}"
                    rates[method][setting] = pairs / seconds
                    self.add(_row("flow-speed", method, setting, "pairs_per_s", pairs / seconds, note=size))
        finally:
            cv2.setNumThreads(previous)

        for workers in grid:
            if workers == 1:
                continue
            results = _parallel_flow_rates(methods, frames, workers, self.s.min_time, min_pairs)
            for method, rate in results.items():
                setting = f"{workers} processes x 1 OpenCV thread"
                rates[method][setting] = rate
                self.add(_row("flow-speed", method, setting, "pairs_per_s", rate, note=size))

        base_setting = "1 process x 1 OpenCV thread"
        for method, by_setting in rates.items():
            base = by_setting.get(base_setting)
            for setting, rate in by_setting.items():
                if base and setting != base_setting:
                    self.add(_row("flow-speed", method, setting, "speedup", rate / base, status=DERIVED, note=size))
            tvl1 = rates.get("tvl1", {}).get(base_setting)
            if tvl1 and base and method != "tvl1":
                self.add(_row("flow-speed", method, base_setting, "relative_to_tvl1", base / tvl1,
                              status=DERIVED, note=size))
        self.recommended = recommend(self.rows, self.s.default_method)
        if self.recommended:
            self.log(f"  -> {self.recommended['text']}")

    # ============================================================================================
    # flow-quality and flow-storage
    # ============================================================================================
    def _gt_flow(self, pair: Path, method: str) -> tuple[np.ndarray, float]:
        """Flow of a GT pair with ``method`` (one OpenCV thread) and the ms it took (cached)."""
        key = (pair.name, method)
        if key not in self.flows:
            prev, nxt = (_read_gray(pair / name) for name in ("frame1.png", "frame2.png"))
            fn = _flow_callable(method)
            previous = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                started = time.perf_counter()
                flow = fn(np.stack([prev, nxt]))[0]
                ms = (time.perf_counter() - started) * 1000
                if ms < 200 and not method.startswith("tvl1"):   # fast methods: time a few more
                    pair = np.stack([prev, nxt])
                    reps, seconds = time_until(lambda: len(fn(pair)), min(self.s.min_time, 1.0), 3, warmup=0)
                    ms = seconds / reps * 1000
            finally:
                cv2.setNumThreads(previous)
            self.flows[key] = (flow, ms)
        return self.flows[key]

    def stage_flow_quality(self) -> None:
        from utils.flow import endpoint_error, read_flo
        methods = self.methods_available(self.s.methods)
        pairs = self.gt_pairs()
        self.log(f"flow-quality: {len(methods)} method(s) on {len(pairs)} ground-truth pair(s), one OpenCV thread")
        for pair in pairs:
            gt = read_flo(pair / "gt.flo")
            size = f"{gt.shape[1]}x{gt.shape[0]}"
            for method in methods:
                flow, ms = self._gt_flow(pair, method)
                self.add(_row("flow-quality", method, pair.name, "epe_px", endpoint_error(flow, gt), note=size),
                         _row("flow-quality", method, pair.name, "ms_per_pair", ms, note=size))
                ref = REFERENCE.get(pair.name, {}).get("dis-medium" if method == "dis" else method)
                if ref:
                    self.add(_row("flow-quality", method, pair.name, "ref_epe_px", ref[0], status=REFERENCE, note=size),
                             _row("flow-quality", method, pair.name, "ref_ms_per_pair", ref[1], status=REFERENCE, note=size))

    def stage_flow_storage(self) -> None:
        from utils.flow import FLOW_BOUND, dequantize_flow, endpoint_error, quantize_flow, read_flo
        methods = self.methods_available(self.s.methods)
        pairs = self.gt_pairs()
        self.log(f"flow-storage: uint8 + JPEG q95 round trip, {len(methods)} method(s), {len(pairs)} pair(s)")
        for pair in pairs:
            gt = read_flo(pair / "gt.flo")
            for method in methods:
                flow, _ = self._gt_flow(pair, method)
                quantized = quantize_flow(flow)
                uint8_only = dequantize_flow(quantized)
                jpeg = dequantize_flow(np.stack([_jpeg_round_trip(quantized[..., c], 95) for c in range(2)], -1))
                float_gt = endpoint_error(flow, gt)
                jpeg_gt = endpoint_error(jpeg, gt)
                self.add(
                    _row("flow-storage", method, pair.name, "epe_float_vs_gt_px", float_gt),
                    _row("flow-storage", method, pair.name, "epe_uint8_vs_float_px", endpoint_error(uint8_only, flow)),
                    _row("flow-storage", method, pair.name, "epe_jpeg_vs_float_px", endpoint_error(jpeg, flow)),
                    _row("flow-storage", method, pair.name, "epe_jpeg_vs_gt_px", jpeg_gt),
                    _row("flow-storage", method, pair.name, "epe_added_px", jpeg_gt - float_gt, status=DERIVED),
                    _row("flow-storage", method, pair.name, "clipped_fraction",
                         float(np.mean(np.any(np.abs(flow) > FLOW_BOUND, axis=-1)))),
                )

    # ============================================================================================
    # TV-L1 in Keras
    # ============================================================================================
    def stage_tvl1keras(self) -> None:
        if importlib.util.find_spec("utils.tvl1_keras") is None:
            self.log("tvl1keras: utils/tvl1_keras.py does not exist; stage skipped")
            self.add(_row("tvl1keras", "tvl1-keras", "-", "pairs_per_s", None, status=NOT_MEASURED,
                          note="utils/tvl1_keras.py not present"))
            return
        try:
            keras_fn = _flow_callable("tvl1-keras")
        except Exception as error:  # noqa: BLE001
            self.log(f"tvl1keras: cannot build the 'tvl1-keras' method: {error}")
            self.add(_row("tvl1keras", "tvl1-keras", "-", "pairs_per_s", None, status=NOT_MEASURED, note=str(error)[:200]))
            return
        device = _device_label(getattr(keras_fn, "device", _keras_device()))
        clip = self.clips(native_size=FLOW_SIZE)[0]
        n_pairs = self.s.tvl1_keras_pairs or (64 if device.startswith("GPU") else 4)
        frames = self.gray_pairs_clip(clip, max(2, n_pairs))
        size = f"{frames.shape[2]}x{frames.shape[1]}"
        n = len(frames) - 1
        self.log(f"tvl1keras: {n} pairs at {size} per call on {getattr(keras_fn, 'device', device)} "
                 "(the first call compiles)")
        started = time.perf_counter()
        keras_flows = keras_fn(frames)                      # compiles
        compile_s = time.perf_counter() - started
        pairs, seconds = time_until(lambda: len(keras_fn(frames)), self.s.min_time, 1, warmup=0)
        keras_rate = pairs / seconds
        setting = f"{n} pairs per call, {size}"
        self.add(_row("tvl1keras", "tvl1-keras", setting, "pairs_per_s", keras_rate, device=device),
                 _row("tvl1keras", "tvl1-keras", setting, "compile_seconds", compile_s, device=device,
                      note="first call: compilation + one run"))
        if not self.methods_available(["tvl1"]):
            return
        opencv = _flow_callable("tvl1")
        previous = cv2.getNumThreads()
        try:
            for threads in sorted({1, self.cores}):
                cv2.setNumThreads(threads)
                p, s = time_until(_pair_stepper(opencv, frames), self.s.min_time, 1)
                opencv_setting = f"1 process x {threads} OpenCV thread{'s' if threads > 1 else ''}, {size}"
                self.add(_row("tvl1keras", "tvl1 (OpenCV)", opencv_setting, "pairs_per_s", p / s))
                self.add(_row("tvl1keras", "tvl1-keras", f"{setting} vs OpenCV {threads} thread(s)", "speed_vs_opencv",
                              keras_rate / (p / s), status=DERIVED, device=device))
        finally:
            cv2.setNumThreads(previous)
        k = min(n, 2 if self.s.quick else 4)
        opencv_flows = opencv(frames[:k + 1])
        self.add(_row("tvl1keras", "tvl1-keras", f"{clip.parent.name} clip, {k} pairs, {size}", "epe_vs_opencv_px",
                      float(np.mean([np.linalg.norm(a - b, axis=-1).mean()
                                     for a, b in zip(keras_flows[:k], opencv_flows)])), device=device))
        # Parity on the ground-truth pairs: every pair size compiles a new program (a minute or more
        # on a CPU), so a CPU run checks the smallest pair only unless --tvl1keras-gt-pairs says otherwise.
        gt_pairs = sorted(self.gt_pairs(), key=lambda p: _read_gray(p / "frame1.png").size)
        limit = self.s.tvl1_keras_gt_pairs
        if limit is None:
            limit = len(gt_pairs) if device.startswith("GPU") else (0 if self.s.quick else 1)
        from utils.flow import endpoint_error, read_flo
        for pair in gt_pairs[:limit]:
            gt = read_flo(pair / "gt.flo")
            prev, nxt = (_read_gray(pair / name) for name in ("frame1.png", "frame2.png"))
            ours = keras_fn.pairs(prev[None], nxt[None])[0] if hasattr(keras_fn, "pairs") else \
                keras_fn(np.stack([prev, nxt]))[0]
            reference, _ = self._gt_flow(pair, "tvl1")
            self.add(_row("tvl1keras", "tvl1-keras", pair.name, "epe_px", endpoint_error(ours, gt), device=device),
                     _row("tvl1keras", "tvl1 (OpenCV)", pair.name, "epe_px", endpoint_error(reference, gt)),
                     _row("tvl1keras", "tvl1-keras", pair.name, "epe_vs_opencv_px",
                          float(np.linalg.norm(ours - reference, axis=-1).mean()), device=device))

    # ============================================================================================
    # extract
    # ============================================================================================
    def extract_methods(self) -> list[str]:
        if self.s.extract_methods:
            return self.extractable(self.s.extract_methods)
        if self.s.quick:
            return self.extractable(self.s.methods)[:1]
        return self.extractable([self.s.default_method, "dis-medium"])

    def recommended_workers(self, method: str) -> tuple[int, int]:
        """(workers, OpenCV threads per worker) from flow-speed, else one worker per core."""
        rec = recommend(self.rows, method)
        if rec:
            return rec["workers"], rec["threads"]
        return self.cores, 1

    def stage_extract(self) -> None:
        from utils.extract import extract_dataset
        for method in self.extract_methods():
            slow = method.startswith("tvl1")
            max_videos = self.s.slow_max_videos if slow else self.s.max_videos
            max_frames = self.s.slow_max_frames if slow else self.s.max_frames
            clips = self.clips(max_videos)
            workers, threads = self.recommended_workers(method)
            workers = min(workers, len(clips))
            videos_dir = self.workdir / f"videos-{method}"
            _link_clips(clips, videos_dir)
            out_dir = self.workdir / f"rawframes-{method}"
            shutil.rmtree(out_dir, ignore_errors=True)
            self.log(f"extract: {method}, {len(clips)} clip(s), "
                     f"{'whole clips' if not max_frames else f'first {max_frames} frames'}, "
                     f"{workers} worker(s) x {threads} OpenCV thread(s)")
            started = time.perf_counter()
            summary = extract_dataset(videos_dir, out_dir, method, workers, max_frames=max_frames,
                                      opencv_threads=threads, progress=False)
            seconds = time.perf_counter() - started
            if summary.failed or not summary.frame_pairs:
                raise RuntimeError(f"extraction benchmark failed for {method}: {summary.failures[:3]}")
            self.rawframes[method] = out_dir
            pairs = summary.frame_pairs
            # The fixed cost of a run (spawning workers, imports, building the flow method): the same
            # call on the first 2 frames of each clip. Paid once per run, so left out of the projection.
            tiny_dir = self.workdir / f"rawframes-{method}-startup"
            started = time.perf_counter()
            tiny = extract_dataset(videos_dir, tiny_dir, method, workers, max_frames=2, opencv_threads=threads,
                                   progress=False)
            startup = max(0.0, time.perf_counter() - started - tiny.frame_pairs / (pairs / seconds))
            shutil.rmtree(tiny_dir, ignore_errors=True)
            steady = seconds - startup if seconds - startup > 0.25 * seconds else seconds
            rate = pairs / steady
            setting = (f"{workers} worker(s) x {threads} thread(s), {summary.done} clips, "
                       f"{'whole' if not max_frames else f'{max_frames} frames each'}")
            size_bytes = sum(f.stat().st_size for f in out_dir.rglob("*.jpg"))
            kb_per_pair = size_bytes / 1024 / pairs
            self.add(
                _row("extract", method, setting, "videos_per_s", summary.done / seconds,
                     note=f"{pairs / summary.done:.0f} pairs per clip"),
                _row("extract", method, setting, "pairs_per_s_end_to_end", pairs / seconds,
                     note="start-up included"),
                _row("extract", method, setting, "pairs_per_s", rate, note="start-up excluded"),
                _row("extract", method, setting, "seconds", seconds),
                _row("extract", method, setting, "startup_seconds", startup),
                _row("extract", method, setting, "frame_pairs", pairs),
                _row("extract", method, setting, "kb_per_pair", kb_per_pair),
                _row("extract", method, setting, "hours_full_hmdb51", HMDB51_FRAME_PAIRS / rate / 3600,
                     status=DERIVED, note=f"{HMDB51_FRAME_PAIRS:,} pairs / measured pairs/s"),
                _row("extract", method, setting, "core_hours_full_hmdb51",
                     HMDB51_FRAME_PAIRS / rate / 3600 * workers * threads, status=DERIVED,
                     note="hours x cores used"),
                _row("extract", method, setting, "disk_gb_full_hmdb51",
                     kb_per_pair * 1024 * HMDB51_FRAME_PAIRS / 1e9, status=DERIVED, note="JPEG q95, native size"),
            )

    # ============================================================================================
    # generators
    # ============================================================================================
    def rawframes_index(self, min_flows: int):
        """An index DataFrame over extracted fixture clips (extracting a few with a fast method if needed)."""
        import pandas as pd
        from utils.dataset import count_frames
        from utils.extract import extract_dataset
        source = None
        for method, folder in self.rawframes.items():
            counts = [count_frames(p) for p in _video_folders(folder)]
            if counts and min(n for _, n in counts) >= min_flows:
                source = folder
                break
        if source is None:
            method = self.extractable(["dis-fast", "farneback", *self.s.methods])[0]
            clips = self.clips(self.s.eval_videos if self.s.quick else self.s.max_videos)
            videos_dir = self.workdir / "videos-inputs"
            _link_clips(clips, videos_dir)
            source = self.workdir / "rawframes-inputs"
            if not source.exists():
                frames = max(self.s.eval_max_frames, min_flows + 1)
                self.log(f"  extracting {len(clips)} clip(s) ({frames} frames, {method}) as generator input")
                extract_dataset(videos_dir, source, method, min(self.cores, len(clips)), max_frames=frames,
                                progress=False)
            self.rawframes.setdefault("inputs", source)
        folders = _video_folders(source)
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

    def stage_generators(self) -> None:
        from concurrent.futures import ThreadPoolExecutor
        from utils.generators import FlowStacks, SpatialFrames
        index = self.rawframes_index(self.s.stack_length)
        size, batch = 224, self.s.generator_batch
        per_clip = math.ceil(2 * batch / len(index))      # at least two full batches per epoch
        self.log(f"generators: {len(index)} clip(s) x {per_clip} inputs, {size}x{size}, batch {batch}")
        datasets = {
            "SpatialFrames": SpatialFrames(index, training=True, image_size=size, batch_size=batch,
                                           frames_per_video=per_clip),
            f"FlowStacks (L={self.s.stack_length})": FlowStacks(index, training=True, image_size=size, batch_size=batch,
                                                                stack_length=self.s.stack_length,
                                                                stacks_per_video=per_clip),
        }
        for name, data in datasets.items():
            counter = iter(range(10**9))

            def one_batch():
                return len(data[next(counter) % len(data)][1])

            items, seconds = time_until(one_batch, self.s.min_time, 2)
            single = items / seconds
            setting = f"1 worker, {size}x{size}, batch {batch}"
            self.add(_row("generators", name, setting, "samples_per_s", single))
            for workers in [w for w in _worker_grid(2 * self.cores) if w > 1]:
                n_batches = max(2 * workers, math.ceil(single * workers * self.s.min_time / batch))
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda b: data[b % len(data)], range(workers)))      # warm-up
                    started = time.perf_counter()
                    items = sum(pool.map(lambda b: len(data[b % len(data)][1]), range(n_batches)))
                    seconds = time.perf_counter() - started
                self.add(_row("generators", name, f"{workers} worker threads, {size}x{size}, batch {batch}",
                              "samples_per_s", items / seconds,
                              note="threads, as PyDataset(workers=N) uses by default"))

    # ============================================================================================
    # models
    # ============================================================================================
    def missing_module(self, stage: str, module: str, item: str) -> bool:
        """True (and a "not measured" row) when ``module`` does not exist yet."""
        if importlib.util.find_spec(module) is not None:
            return False
        self.log(f"{stage}: {module} does not exist; stage skipped")
        self.add(_row(stage, item, "-", "samples_per_s", None, status=NOT_MEASURED, note=f"{module} not present"))
        return True

    def stage_models(self) -> None:
        if self.missing_module("models", "utils.models", "-"):
            return
        import keras
        if self.s.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        gpus = gpu_names()
        device = f"GPU ({gpus[0]})" if gpus else "CPU"
        self.log(f"models: Keras {keras.__version__}, backend {keras.backend.backend()}, on {device}, "
                 f"policy {keras.mixed_precision.global_policy().name}")
        try:
            for preset in self.s.presets:
                for stream in self.s.streams:
                    self._time_model(preset, stream, device, bool(gpus))
        finally:
            keras.mixed_precision.set_global_policy("float32")

    def _time_model(self, preset: str, stream: str, device: str, on_gpu: bool) -> None:
        import keras
        cfg = training_preset(stream, preset)
        size = self.s.size or cfg["image_size"]
        # The presets' batches (32 / 64) are for a GPU; on a CPU, 16 gives the same samples/s.
        batch = self.s.batch_size or (cfg["batch_size"] if on_gpu else min(cfg["batch_size"], 16))
        classes = preset_classes(preset)
        model = build_model(stream, size, cfg, classes, self.s.stack_length)
        channels = 3 if stream == "spatial" else 2 * self.s.stack_length
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, size, size, channels), dtype=np.float32)
        y = rng.integers(0, classes, batch).astype("int32")

        def train_step():
            model.train_on_batch(x, y)
            return batch

        def infer_step():
            model.predict_on_batch(x)
            return batch

        started = time.perf_counter()
        train_step()                                        # traces / compiles the training step
        first_train = time.perf_counter() - started
        train, train_s = time_until(train_step, self.s.min_time, 2, warmup=0)
        started = time.perf_counter()
        infer_step()
        first_infer = time.perf_counter() - started
        infer, infer_s = time_until(infer_step, self.s.min_time, 2, warmup=0)
        policy = keras.mixed_precision.global_policy().name
        setting = f"{preset} preset: {size}x{size}, batch {batch}" + ("" if policy == "float32" else f", {policy}")
        what = ("ResNet-50, whole backbone trainable but BatchNorm frozen (fine-tuning phase)" if stream == "spatial"
                else f"{cfg.get('arch', 'cnn_m_2048')} width {cfg.get('width', 1.0):g}, from scratch")
        note = f"{what}; {model.count_params() / 1e6:.1f} M parameters, {classes} classes"
        train_rate = train / train_s
        self.add(_row("models", stream, setting, "train_samples_per_s", train_rate, device=device, note=note),
                 _row("models", stream, setting, "infer_samples_per_s", infer / infer_s, device=device, note=note),
                 _row("models", stream, setting, "compile_seconds", first_train + first_infer, device=device,
                      note="first training step + first inference (tracing/compilation)"))
        if preset == "hmdb51":
            per_clip = cfg.get("frames_per_video") or cfg.get("stacks_per_video") or 1
            epochs = cfg.get("epochs") or cfg.get("warmup_epochs", 0) + cfg.get("finetune_epochs", 0)
            samples = HMDB51_TRAIN_CLIPS_NO_VAL * per_clip
            self.add(_row("models", stream, setting, "epoch_minutes", samples / train_rate / 60, status=DERIVED,
                          device=device, note=f"{samples} samples ({HMDB51_TRAIN_CLIPS_NO_VAL} clips x {per_clip}); "
                                              "model time only, no validation"),
                     _row("models", stream, setting, "schedule_hours", epochs * samples / train_rate / 3600,
                          status=DERIVED, device=device, note=f"{epochs} epochs of the preset"))
        del model
        keras.backend.clear_session()
        gc.collect()
        if not on_gpu:
            gpu_batch = self.s.batch_size or cfg["batch_size"]
            gpu_setting = f"{preset} preset: {size}x{size}, batch {gpu_batch}"
            for metric in ("train_samples_per_s", "infer_samples_per_s") + (
                    ("epoch_minutes", "schedule_hours") if preset == "hmdb51" else ()):
                self.add(_row("models", stream, gpu_setting, metric, None, device="GPU", status=NOT_MEASURED,
                              note="no GPU visible to Keras in this run"))

    # ============================================================================================
    # eval
    # ============================================================================================
    def stage_eval(self) -> None:
        if self.missing_module("eval", "utils.models", "-"):
            return
        import keras
        from utils.evaluation import score_videos
        index = self.rawframes_index(self.s.stack_length).head(self.s.eval_videos)
        cap = self.s.eval_max_frames
        index = index.assign(n_frames=index.n_frames.clip(upper=cap), n_flows=index.n_flows.clip(upper=cap - 1))
        gpus = gpu_names()
        device = f"GPU ({gpus[0]})" if gpus else "CPU"
        size, batch = self.s.eval_size, self.s.batch_size or 32
        self.log(f"eval: whole-video protocol, {len(index)} clip(s) of <= {cap} frames, {size}x{size}, {device}")
        for stream in self.s.streams:
            model = build_model(stream, size, training_preset(stream, "hmdb51"), HMDB51_CLASSES, self.s.stack_length)
            channels = 3 if stream == "spatial" else 2 * self.s.stack_length
            model.predict_on_batch(np.zeros((batch, size, size, channels), np.float32))   # warm-up (tracing)
            runs, inputs, started = 0, 0, time.perf_counter()
            while True:
                _, n_inputs = score_videos(model, index, stream, "whole_video", n_classes=HMDB51_CLASSES,
                                           image_size=size, stack_length=self.s.stack_length, batch_size=batch)
                runs += 1
                inputs += int(np.sum(n_inputs))
                seconds = time.perf_counter() - started
                if seconds >= self.s.min_time:
                    break
            inputs_rate = inputs / seconds
            per_clip = MEAN_PAIRS_PER_CLIP + 1 if stream == "spatial" else MEAN_PAIRS_PER_CLIP - self.s.stack_length + 1
            setting = f"{size}x{size}, batch {batch}, clips of {index.n_frames.mean():.0f} frames"
            self.add(
                _row("eval", stream, setting, "videos_per_s", runs * len(index) / seconds, device=device),
                _row("eval", stream, setting, "inputs_per_s", inputs_rate, device=device,
                     note="reading + preprocessing + inference"),
                _row("eval", stream, setting, "videos_per_s_hmdb51_clip", inputs_rate / per_clip, status=DERIVED,
                     device=device, note=f"{per_clip:.0f} inputs per mean HMDB51 clip"),
                _row("eval", stream, setting, "hours_test_split", HMDB51_TEST_CLIPS * per_clip / inputs_rate / 3600,
                     status=DERIVED, device=device),
            )
            del model
            keras.backend.clear_session()
            gc.collect()

    # ============================================================================================
    # demo
    # ============================================================================================
    def stage_demo(self) -> None:
        from utils.demo_data import DEMO_SETTINGS, make_demo_dataset
        from utils.extract import extract_dataset
        method = self.s.demo_method or DEMO_SETTINGS.get("flow_method", self.s.default_method)
        if self.s.quick and method not in self.s.methods:
            method = self.s.methods[0]
        method = (self.extractable([method]) or self.extractable(self.s.methods))[0]
        root = self.workdir / "demo"
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        make_demo_dataset(root, seed=0)
        make_s = time.perf_counter() - started
        workers, threads = self.recommended_workers(method)
        self.log(f"demo: made in {make_s:.1f} s; extracting with {method}, {workers} worker(s)")
        started = time.perf_counter()
        summary = extract_dataset(root / "videos", root / "rawframes", method, workers, opencv_threads=threads,
                                  progress=False)
        extract_s = time.perf_counter() - started
        setting = f"{summary.done} clips, {method}, {workers} worker(s)"
        self.add(_row("demo", "make_demo_dataset", f"{summary.done} clips", "seconds", make_s),
                 _row("demo", "extract", setting, "seconds", extract_s),
                 _row("demo", "extract", setting, "pairs_per_s", summary.frame_pairs / extract_s))
        try:
            from utils.dataset import build_index
            index = build_index(Config(dataset=str(root)))
            n_train = int((index["subset"] == "train").sum())
        except Exception as error:  # noqa: BLE001
            self.log(f"  cannot index the demo data set ({error}); no epoch estimate")
            return
        for row in list(self.rows):
            if row.stage == "models" and row.metric == "train_samples_per_s" and row.value and \
                    row.setting.startswith("demo preset"):
                cfg = training_preset(row.item, "demo")
                per_clip = cfg.get("frames_per_video") or cfg.get("stacks_per_video") or 1
                epochs = cfg.get("epochs") or cfg.get("warmup_epochs", 0) + cfg.get("finetune_epochs", 0)
                samples = n_train * per_clip
                setting = f"{n_train} clips x {per_clip}, {row.setting.split(': ', 1)[-1]}"
                self.add(_row("demo", f"{row.item} training", setting, "epoch_minutes", samples / row.value / 60,
                              status=DERIVED, device=row.device, note="model time only; from the models stage"),
                         _row("demo", f"{row.item} training", setting, "schedule_hours",
                              epochs * samples / row.value / 3600, status=DERIVED, device=row.device,
                              note=f"{epochs} epochs of the demo preset"))


# ================================================================================================
# Stage helpers (module level, so spawned worker processes can import them)
# ================================================================================================
def _flow_callable(method: str):
    """Per-video flow callable for ``method`` (a name of the ``utils.flow`` registry)."""
    from utils import flow
    return flow.make_video_flow(method)


def _pair_stepper(fn, frames: np.ndarray) -> Callable[[], int]:
    """A step computing the next frame pair of ``frames`` (cycling)."""
    state = {"i": 0}

    def step() -> int:
        i = state["i"] % (len(frames) - 1)
        state["i"] += 1
        fn(frames[i:i + 2])
        return 1
    return step


def _flow_speed_worker(worker: int, methods: list[str], frames: np.ndarray, min_time: float, min_pairs: int,
                       barrier, results) -> None:
    """One of N processes: for each method, warm up, wait for the others, count pairs for ``min_time``."""
    method = "?"
    try:
        cv2.setNumThreads(1)
        for method in methods:
            fn = _flow_callable(method)
            step = _pair_stepper(fn, frames)
            step()                                   # warm-up
            barrier.wait(timeout=600)
            count, started = 0, time.monotonic()
            while True:
                count += step()
                ended = time.monotonic()
                if ended - started >= min_time and count >= min_pairs:
                    break
            results.put((worker, method, count, started, ended, None))
    except BaseException:  # noqa: BLE001 - report to the parent, release the others
        barrier.abort()
        results.put((worker, method, 0, 0.0, 0.0, traceback.format_exc()))


def _parallel_flow_rates(methods: list[str], clips: list[np.ndarray], workers: int, min_time: float,
                         min_pairs: int) -> dict[str, float]:
    """Aggregate pairs/s of ``workers`` spawned processes (one OpenCV thread each) per method."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_flow_speed_worker, daemon=True,
                                 args=(w, methods, clips[w % len(clips)], min_time, min_pairs, barrier, results))
                 for w in range(workers)]
    for p in processes:
        p.start()
    per_method: dict[str, list] = {m: [] for m in methods}
    try:
        for _ in range(workers * len(methods)):
            worker, method, count, started, ended, error = results.get(timeout=600 + 20 * min_time)
            if error:
                raise RuntimeError(f"flow-speed worker {worker} failed on {method!r}:\n{error}")
            per_method[method].append((count, started, ended))
    except _queue.Empty:
        raise RuntimeError("flow-speed worker processes stopped answering") from None
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return {m: sum(c for c, _, _ in runs) / (max(e for _, _, e in runs) - min(s for _, s, _ in runs))
            for m, runs in per_method.items()}


def _video_size(path: Path) -> tuple[int, int]:
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)


def _link_clips(clips: Sequence[Path], videos_dir: Path) -> None:
    """``videos_dir/<class>/<clip>`` pointing at ``clips`` (symlinks, copies where links fail)."""
    shutil.rmtree(videos_dir, ignore_errors=True)
    for clip in clips:
        target = videos_dir / clip.parent.name / clip.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(clip.resolve())
        except OSError:
            shutil.copy2(clip, target)


def _video_folders(rawframes: Path) -> list[Path]:
    return sorted(p for c in rawframes.iterdir() if c.is_dir() and not c.name.startswith(".")
                  for p in c.iterdir() if p.is_dir() and not p.name.startswith("."))


def _device_label(description: str) -> str:
    """``"jax on gpu:0 (NVIDIA H100)"`` -> ``"GPU (NVIDIA H100)"``; CPU descriptions -> ``"CPU"``."""
    text = str(description)
    if "gpu" in text.lower() or "cuda" in text.lower():
        name = text[text.find("(") + 1:text.rfind(")")] if "(" in text else text
        return f"GPU ({name})"
    return "CPU"


def _keras_device() -> str:
    gpus = gpu_names()
    return f"GPU ({gpus[0]})" if gpus else "CPU"


FALLBACK_PRESETS = {   # used only if utils.training is missing; mirrors its SPATIAL/TEMPORAL_DEFAULTS
    ("spatial", "hmdb51"): dict(image_size=224, batch_size=32, frames_per_video=4, warmup_epochs=2,
                                finetune_epochs=15, unfreeze_from="conv1", dropout=0.5),
    ("spatial", "demo"): dict(image_size=56, batch_size=16, frames_per_video=4, warmup_epochs=2, finetune_epochs=8,
                              unfreeze_from="conv1", dropout=0.5),
    ("temporal", "hmdb51"): dict(image_size=224, batch_size=64, stacks_per_video=8, epochs=60, arch="cnn_m_2048",
                                 width=1.0, dropout=0.9),
    ("temporal", "demo"): dict(image_size=56, batch_size=16, stacks_per_video=4, epochs=12, arch="cnn_m_2048",
                               width=0.25, dropout=0.5),
}


def training_preset(stream: str, preset: str) -> dict:
    """The training settings the notebooks use for ``stream`` on ``preset`` ("hmdb51" or "demo")."""
    if stream not in ("spatial", "temporal"):
        raise ValueError(f"unknown stream {stream!r}; use spatial or temporal")
    if preset not in ("hmdb51", "demo"):
        raise ValueError(f"unknown model preset {preset!r}; use hmdb51 or demo")
    try:
        from utils.training import default_settings
    except ImportError:
        return dict(FALLBACK_PRESETS[(stream, preset)])
    return default_settings(stream, preset)


def preset_classes(preset: str) -> int:
    if preset == "demo":
        from utils.demo_data import DEMO_CLASSES
        return len(DEMO_CLASSES)
    return HMDB51_CLASSES


def build_model(stream: str, size: int, cfg: dict, num_classes: int, stack_length: int = 10):
    """A stream's network as training builds it (random weights), compiled as training compiles it."""
    import keras
    from utils import models
    if stream == "spatial":
        model = models.build_spatial_model(num_classes, image_size=size, weights=None, dropout=cfg.get("dropout", 0.5))
        if hasattr(models, "unfreeze_backbone"):      # the fine-tuning phase: the slower of the two
            models.unfreeze_backbone(model, cfg.get("unfreeze_from", "conv1"))
    elif stream == "temporal":
        options = {k: cfg[k] for k in ("arch", "width", "dropout") if k in cfg}
        model = models.build_temporal_model(num_classes, image_size=size, stack_length=stack_length, **options)
    else:
        raise ValueError(f"unknown stream {stream!r}; use spatial or temporal")
    try:
        from utils.training import compile_model
    except ImportError:
        model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss="sparse_categorical_crossentropy")
    else:
        compile_model(model)
    return model


# ================================================================================================
# Recommendations and derived tables
# ================================================================================================
def _parse_setting(setting: str) -> tuple[int, int] | None:
    """``"2 processes x 1 OpenCV thread"`` -> (2, 1); ``"1 process x 2 OpenCV threads"`` -> (1, 2)."""
    try:
        left, right = setting.split(" x ")
        return int(left.split()[0]), int(right.split()[0])
    except (ValueError, IndexError):
        return None


def recommend(rows: Sequence[Row], method: str, machine: str | None = None) -> dict | None:
    """Best (workers, OpenCV threads) of ``method`` from the flow-speed rows (highest pairs/s).

    Ties within 3 % go to fewer processes (less memory, fewer files open at once).
    """
    candidates = []
    for row in rows:
        if row.stage == "flow-speed" and row.item == method and row.metric == "pairs_per_s" and \
                row.status == MEASURED and row.value and (machine is None or row.machine_id == machine):
            parsed = _parse_setting(row.setting)
            if parsed:
                candidates.append((row.value, parsed, row.setting))
    if not candidates:
        return None
    best_rate = max(c[0] for c in candidates)
    good = [c for c in candidates if c[0] >= 0.97 * best_rate]
    rate, (workers, threads), setting = min(good, key=lambda c: (c[1][0] * c[1][1], c[1][0], -c[0]))
    single = next((c[0] for c in candidates if c[1] == (1, 1)), None)
    text = (f"recommended extraction for {method}: --workers {workers} --opencv-threads {threads} "
            f"({setting}: {format_value(rate)} pairs/s"
            + (f", {rate / single:.2f}x one process with one thread" if single else "") + ")")
    return {"method": method, "workers": workers, "threads": threads, "pairs_per_s": rate, "setting": setting,
            "text": text, "all": sorted(candidates, reverse=True)}


def format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


# ================================================================================================
# CSV
# ================================================================================================
def write_csv(rows: Sequence[Row], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            data = asdict(row)
            data["value"] = "" if row.value is None else repr(float(row.value))
            writer.writerow({k: data[k] for k in CSV_COLUMNS})
    os.replace(tmp, path)
    return path


def read_csv(path: Path) -> list[Row]:
    """Rows of a ``benchmarks.csv`` (this or another machine's); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark CSV {path}")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a benchmark CSV written by utils.bench: missing columns {sorted(missing)}")
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                value = float(record["value"]) if record["value"] not in ("", None) else None
            except ValueError:
                raise ValueError(f"{path}, line {line}: value {record['value']!r} is not a number") from None
            rows.append(Row(**{f.name: record[f.name] for f in fields(Row) if f.name != "value"}, value=value))
    return rows


def combine(old: Sequence[Row], new: Sequence[Row], replaced_stages: Iterable[tuple[str, str]] = ()) -> list[Row]:
    """``old`` updated with ``new``: same key -> the new row; (machine_id, stage) in ``replaced_stages``
    -> all old rows of that stage on that machine dropped; "not measured" GPU placeholders dropped
    once a measured GPU row with the same stage, item, metric and preset exists."""
    replaced = set(replaced_stages)
    merged: dict[tuple, Row] = {r.key(): r for r in old if (r.machine_id, r.stage) not in replaced}
    for row in new:
        merged.pop(row.key(), None)
        merged[row.key()] = row
    rows = list(merged.values())

    def what(r: Row) -> tuple:      # a GPU figure of the same stream, metric and preset ("hmdb51 preset: ...")
        return r.stage, r.item, r.metric, r.setting.split(":")[0]

    measured_gpu = {what(r) for r in rows if r.device.startswith("GPU") and r.status in (MEASURED, DERIVED)}
    return [r for r in rows if not (r.status == NOT_MEASURED and r.device.startswith("GPU") and what(r) in measured_gpu)]


# ================================================================================================
# Markdown
# ================================================================================================
def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def _metric_title(metric: str) -> str:
    """Column title with its unit, unless the title already names it ("pairs/s")."""
    import re
    title, unit = METRICS.get(metric, (metric, ""))
    if not unit or unit == "fraction" or re.search(rf"(?<![\w/]){re.escape(unit)}(?![\w/])", title):
        return title
    return f"{title} ({unit})"


def _cell(row: Row | None) -> str:
    if row is None:
        return ""
    if row.status == NOT_MEASURED or row.value is None:
        return NOT_MEASURED
    text = format_value(row.value)
    return text + "*" if row.status == DERIVED else text


class Report:
    """Markdown tables from rows of one or more machines."""

    def __init__(self, rows: Sequence[Row]):
        self.rows = list(rows)
        order: list[str] = []
        for row in self.rows:
            if row.machine_id and row.machine_id not in order:
                order.append(row.machine_id)
        self.machines = {mid: next(r.machine for r in self.rows if r.machine_id == mid) for mid in order}
        self.labels = {mid: chr(ord("A") + i) for i, mid in enumerate(order)}
        self.when = {mid: max(r.measured_at for r in self.rows if r.machine_id == mid) for mid in order}
        flow_machines = [r.machine_id for r in self.rows if r.stage in ("flow-speed", "extract")]
        cpu_machines = [r.machine_id for r in self.rows if r.device == "CPU" and r.status == MEASURED]
        self.primary = (flow_machines or cpu_machines or order or [""])[0]

    def select(self, stage: str, **match) -> list[Row]:
        return [r for r in self.rows if r.stage == stage and all(getattr(r, k) == v for k, v in match.items())]

    def find(self, stage: str, item: str | None = None, metric: str | None = None, *, machine=None,
             device_prefix: str | None = None, setting_prefix: str | None = None, best: bool = False) -> Row | None:
        rows = [r for r in self.rows if r.stage == stage and (item is None or r.item == item)
                and (metric is None or r.metric == metric) and (machine is None or r.machine_id == machine)
                and (device_prefix is None or r.device.startswith(device_prefix))
                and (setting_prefix is None or r.setting.startswith(setting_prefix))]
        measured = [r for r in rows if r.value is not None]
        if best and measured:
            return max(measured, key=lambda r: r.value)
        return (measured or rows or [None])[0]

    def pivot(self, stage: str, metrics: Sequence[str], first: str = "item", second: str = "setting",
              first_title: str = "", second_title: str = "", sort: Callable | None = None) -> str:
        rows = [r for r in self.select(stage) if r.metric in metrics]
        if not rows:
            return "_not run_"
        several = len({r.machine_id for r in rows}) > 1
        devices = len({r.device for r in rows}) > 1
        groups: dict[tuple, dict[str, Row]] = {}
        for r in rows:
            groups.setdefault((r.machine_id, r.device, getattr(r, first), getattr(r, second)), {})[r.metric] = r
        present = [m for m in metrics if any(m in g for g in groups.values())]
        header = ([first_title or first, second_title or second] + (["device"] if devices else [])
                  + (["machine"] if several else [])
                  + [_metric_title(m) for m in present])
        keys = list(groups)
        first_seen = {}
        for mid, _, a, _ in keys:
            first_seen.setdefault((mid, a), len(first_seen))
        keys.sort(key=sort or (lambda k: first_seen[(k[0], k[2])]))     # stable: rows of one item together
        body = []
        for key in keys:
            mid, device, a, b = key
            body.append([a, b] + ([device] if devices else []) + ([self.labels.get(mid, "?")] if several else [])
                        + [_cell(groups[key].get(m)) for m in present])
        return _md_table(header, body)

    # --- sections ----------------------------------------------------------------------------------
    def machines_block(self) -> str:
        if not self.machines:
            return "_no figures yet_"
        lines = []
        for mid, description in self.machines.items():
            lines.append(f"- **{self.labels[mid]}** (`{mid}`, measured {self.when[mid]}): {description}")
        return "\n".join(lines)

    def recommendation(self) -> tuple[str, dict | None]:
        methods = [m for m in ALL_METHODS if self.select("flow-speed", item=m, machine_id=self.primary)]
        default = Config().flow_method
        rec = recommend(self.rows, default, self.primary) or (recommend(self.rows, methods[0], self.primary)
                                                                if methods else None)
        if not rec:
            return "_flow-speed not run: no recommendation_", None
        lines = [] if rec["method"] == default else [
            f"- {default} (the default method) was not measured in this run; the recommendation below is "
            f"for {rec['method']}. Run `python -m utils.bench --stages flow-speed` for {default}."]
        lines += [f"- **{rec['text']}** (machine {self.labels.get(self.primary, '?')}, "
                  f"{usable_cores_of(self.machines.get(self.primary, ''))} cores).",
                 "  All configurations measured for it: "
                 + "; ".join(f"{s}: {format_value(v)} pairs/s" for v, _, s in rec["all"]) + "."]
        for method in methods:
            if method == rec["method"]:
                continue
            other = recommend(self.rows, method, self.primary)
            if other:
                lines.append(f"- {method}: best with --workers {other['workers']} --opencv-threads "
                             f"{other['threads']} ({format_value(other['pairs_per_s'])} pairs/s).")
        lines.append("- The rule the code applies: the configuration with the most frame pairs per second; "
                     "configurations within 3 % of the best go to the one using fewer cores/processes. "
                     "`utils.extract` defaults to one process per core with one OpenCV thread each.")
        return "\n".join(lines), rec

    def how_long(self) -> str:
        """The README table: fixed rows, "not measured" where no run measured them."""
        p = self.primary
        label = self.labels.get(p, "?")
        cores = usable_cores_of(self.machines.get(p, ""))
        header = ["task", f"this machine ({label}, CPU, {cores} cores)", "per core", "GPU"]
        body = []
        extracted = [r.item for r in self.select("extract", metric="hours_full_hmdb51", machine_id=p)]
        for method in dict.fromkeys(["tvl1", "dis-medium", *extracted]):
            title = {"tvl1": "Extract full HMDB51 (6766 clips, ~640k frame pairs), TV-L1 (the default)",
                     "dis-medium": "Extract full HMDB51, DIS medium (the fast alternative)"}.get(
                         method, f"Extract full HMDB51, {method}")
            hours = self.find("extract", method, "hours_full_hmdb51", machine=p)
            core = self.find("extract", method, "core_hours_full_hmdb51", machine=p)
            rate = self.find("flow-speed", method, "pairs_per_s", machine=p, best=True)
            single = self.find("flow-speed", method, "pairs_per_s", machine=p,
                               setting_prefix="1 process x 1 OpenCV thread")
            if hours is not None and hours.value:
                hours_text = f"{format_value(hours.value)} h* ({hours.setting.split(',')[0]})"
                core_text = f"{format_value(core.value)} core-h*" if core and core.value else ""
            elif rate is not None and rate.value:     # flow alone: no decoding, no JPEG writing
                hours_text = f"{format_value(HMDB51_FRAME_PAIRS / rate.value / 3600)} h* (flow only, {rate.setting})"
                core_text = (f"{format_value(HMDB51_FRAME_PAIRS / single.value / 3600)} core-h* (flow only)"
                             if single and single.value else "")
            else:
                hours_text, core_text = NOT_MEASURED, ""
            gpu = NOT_MEASURED
            if method == "tvl1":
                gpu_rate = self.find("tvl1keras", "tvl1-keras", "pairs_per_s", device_prefix="GPU")
                if gpu_rate and gpu_rate.value:
                    gpu = f"{format_value(HMDB51_FRAME_PAIRS / gpu_rate.value / 3600)} h* (tvl1-keras, flow only)"
            body.append([title, hours_text, core_text, gpu])
        disk = self.find("extract", "tvl1", "disk_gb_full_hmdb51", machine=p) or \
            self.find("extract", None, "disk_gb_full_hmdb51", machine=p)
        body.append(["Disk space for the full HMDB51 rawframes (JPEG q95, native size)",
                     f"{format_value(disk.value)} GB*" if disk and disk.value else NOT_MEASURED, "", ""])
        make = self.find("demo", "make_demo_dataset", "seconds", machine=p)
        extract = self.find("demo", "extract", "seconds", machine=p)
        demo = NOT_MEASURED
        if make and extract and make.value is not None and extract.value is not None:
            demo = (f"{format_value(make.value + extract.value)} s ({format_value(make.value)} s + "
                    f"{format_value(extract.value)} s; {extract.setting})")
        body.append(["Demo data set: make it + extract frames and flow", demo, "", ""])
        demo_total = [make.value + extract.value] if demo != NOT_MEASURED else []
        demo_gpu_total = []
        for stream in ("spatial", "temporal"):
            row = self.find("demo", f"{stream} training", "schedule_hours", machine=p)
            epoch = self.find("demo", f"{stream} training", "epoch_minutes", machine=p)
            text, gpu_text = NOT_MEASURED, NOT_MEASURED
            if row and row.value:
                demo_total.append(row.value * 3600)
                text = f"{format_value(row.value * 60)} min*"
                if epoch and epoch.value:
                    text += f" ({format_value(epoch.value * 60)} s per epoch; {row.setting})"
                cpu_rate = self.find("models", stream, "train_samples_per_s", machine=p, device_prefix="CPU",
                                     setting_prefix="demo preset")
                gpu_rate = self.find("models", stream, "train_samples_per_s", device_prefix="GPU",
                                     setting_prefix="demo preset")
                if cpu_rate and cpu_rate.value and gpu_rate and gpu_rate.value and gpu_rate.status == MEASURED:
                    gpu_hours = row.value * cpu_rate.value / gpu_rate.value
                    demo_gpu_total.append(gpu_hours * 3600)
                    gpu_text = f"{format_value(gpu_hours * 60)} min* (model time)"
            body.append([f"Demo training, {stream} stream (the demo preset's epochs, model time only)", text, "",
                         gpu_text])
        if len(demo_total) == 3:
            body.append(["Demo pipeline: make + extract + train both streams (no evaluation)",
                         f"{format_value(sum(demo_total) / 60)} min*", "", NOT_MEASURED])
        for stream, title in (("spatial", "ResNet-50 fine-tuning"), ("temporal", "CNN-M-2048 from scratch")):
            cpu = self.find("models", stream, "train_samples_per_s", machine=p, device_prefix="CPU",
                            setting_prefix="hmdb51 preset")
            gpu = self.find("models", stream, "train_samples_per_s", device_prefix="GPU", setting_prefix="hmdb51 preset")
            body.append([f"Train the {stream} stream on HMDB51 at 224 ({title}, the hmdb51 preset of utils.training)",
                         self._training(cpu), "", self._training(gpu)])
        for stream in ("spatial", "temporal"):
            cpu = self.find("eval", stream, "hours_test_split", machine=p, device_prefix="CPU")
            gpu = self.find("eval", stream, "hours_test_split", device_prefix="GPU")
            size = (cpu or gpu).setting.split(",")[0] if (cpu or gpu) else "224x224"
            body.append([f"Whole-video evaluation of a test split (1530 clips), {stream} stream ({size})",
                         f"{format_value(cpu.value)} h*" if cpu and cpu.value else NOT_MEASURED, "",
                         f"{format_value(gpu.value)} h*" if gpu and gpu.value else NOT_MEASURED])
        return _md_table(header, body) + (
            "\n\n\\* projected from a throughput measured in the same run (see the tables of "
            "`report/benchmarks.md`); \"not measured\" means nobody ran it on such a machine: it is not "
            "an estimate.")

    def _training(self, train: Row | None) -> str:
        """"X h (N epochs, Y min per epoch)" at the slower of the model and that machine's generators."""
        if train is None or train.value is None:
            return NOT_MEASURED
        same = dict(machine=train.machine_id, device_prefix=train.device, setting_prefix=train.setting)
        epoch = self.find("models", train.item, "epoch_minutes", **same)
        schedule = self.find("models", train.item, "schedule_hours", **same)
        if not (epoch and epoch.value and schedule and schedule.value):
            return f"{format_value(train.value)} samples/s"
        name = "SpatialFrames" if train.item == "spatial" else "FlowStacks"
        gens = [r for r in self.rows if r.stage == "generators" and r.item.startswith(name)
                and r.metric == "samples_per_s" and r.machine_id == train.machine_id and r.value]
        slowdown, limited = 1.0, ""
        if gens:
            best = max(gens, key=lambda r: r.value)
            if best.value < train.value:
                slowdown, limited = train.value / best.value, ", input-bound: the generators are slower"
        epochs = round(schedule.value * 60 / epoch.value)
        return (f"{format_value(schedule.value * slowdown)} h* ({epochs} epochs, "
                f"{format_value(epoch.value * slowdown)} min each{limited})")

    def keep_up(self) -> str:
        body = []
        for train in [r for r in self.rows if r.stage == "models" and r.metric == "train_samples_per_s"
                      and r.status == MEASURED and r.value and r.setting.startswith("hmdb51 preset")]:
            name = "SpatialFrames" if train.item == "spatial" else "FlowStacks"
            gens = [r for r in self.rows if r.stage == "generators" and r.item.startswith(name)
                    and r.metric == "samples_per_s" and r.machine_id == train.machine_id and r.value]
            if not gens:
                body.append([train.item, train.device, self.labels.get(train.machine_id, "?"),
                             format_value(train.value), "not measured on that machine", "-"])
                continue
            best = max(gens, key=lambda r: r.value)
            ratio = best.value / train.value
            body.append([train.item, train.device, self.labels.get(train.machine_id, "?"), format_value(train.value),
                         f"{format_value(best.value)} ({best.setting.split(',')[0]})",
                         f"{ratio:.1f}x: {'yes' if ratio >= 1 else 'no, input-bound'}"])
        for placeholder in [r for r in self.rows if r.stage == "models" and r.device.startswith("GPU")
                            and r.status == NOT_MEASURED and r.metric == "train_samples_per_s"
                            and r.setting.startswith("hmdb51 preset")]:
            body.append([placeholder.item, "GPU", "-", NOT_MEASURED, "-", NOT_MEASURED])
        if not body:
            return "_models (hmdb51 preset) not run_"
        return _md_table(["stream", "device", "machine", "training samples/s (224)", "generator samples/s, best",
                          "generators keep up?"], body)

    def quality_table(self) -> str:
        rows = self.select("flow-quality")
        if not rows:
            return "_not run_"
        return self.pivot("flow-quality", ["epe_px", "ref_epe_px", "ms_per_pair", "ref_ms_per_pair"],
                          first="setting", second="item", first_title="pair", second_title="method")

    def storage_summary(self) -> str:
        rows = [r for r in self.select("flow-storage", metric="epe_added_px") if r.value is not None]
        if not rows:
            return ""
        by_method: dict[str, list[float]] = {}
        for r in rows:
            by_method.setdefault(r.item, []).append(r.value)
        return "EPE added by storage, per method (min to max over the pairs): " + "; ".join(
            f"{m}: {min(v):+.3f} to {max(v):+.3f} px" for m, v in by_method.items()) + f". ({REFERENCE_STORAGE_NOTE}.)"

    def render(self, command: str) -> str:
        rec_text, _ = self.recommendation()
        sections = [
            "# Benchmarks: how fast and how good each stage is",
            f"Generated by `{command}` (`utils/bench.py`). Regenerate with `python -m utils.bench` "
            "(`--quick` for a 2-minute smoke run, `--stages` to pick stages, `--merge other.csv` to add "
            "figures from another machine). All figures are in `benchmarks.csv`, one row each, with the "
            "machine they were measured on.",
            "Every figure is a throughput or a ratio measured within one run, after a short warm-up, over a "
            "fixed minimum time. Figures marked * are derived (projected) from measured ones; "
            "\"not measured\" means nobody ran that configuration: it is not an estimate. Timings on a "
            "machine shared with other work are noisy.",
            "## Machines\n\n" + self.machines_block(),
            "## Recommendations\n\n" + rec_text,
            "## How long will this take\n\n" + self.how_long(),
            "## Optical flow: speed\n\nFrame pairs per second at the native 320x240 of HMDB51 "
            "(grayscale frames from the real clips in `tests/data/hmdb51_clips`). *N processes x 1 OpenCV "
            "thread* is what `utils.extract` does (one worker per clip); *1 process x N OpenCV threads* "
            "lets OpenCV parallelise inside one pair.\n\n"
            + self.pivot("flow-speed", ["pairs_per_s", "speedup", "relative_to_tvl1"],
                         first_title="method", second_title="configuration"),
            "## Optical flow: quality\n\nAverage end-point error (EPE, px; lower is better) on the pairs "
            "with ground truth in `tests/data/flow_gt` (Middlebury, MPI-Sintel, FlyingChairs), one OpenCV "
            "thread, next to the reference figures of their README (OpenCV 5.0 defaults).\n\n" + self.quality_table(),
            "## Optical flow: storage as uint8 JPEG\n\nFlow is clipped to +-20 px, quantised to "
            "0..255 and written as JPEG q95 (`utils.flow.quantize_flow`); the tables show the error "
            "this adds (EPE of the stored flow vs the float flow, and vs ground truth).\n\n"
            + self.pivot("flow-storage", ["epe_float_vs_gt_px", "epe_uint8_vs_float_px", "epe_jpeg_vs_float_px",
                                          "epe_jpeg_vs_gt_px", "epe_added_px", "clipped_fraction"],
                         first="setting", second="item", first_title="pair", second_title="method")
            + ("\n\n" + self.storage_summary() if self.storage_summary() else ""),
            "## Extraction end to end\n\n`utils.extract.extract_dataset` on the real clips (decode, RGB "
            "JPEGs, flow, flow JPEGs). The fixed start-up of a run (spawning the workers, imports) is "
            "measured with the same call on 2 frames per clip; the projection to the full HMDB51 "
            f"({HMDB51_CLIPS} clips, about {HMDB51_FRAME_PAIRS:,} frame pairs) uses the pairs/s without it. "
            "videos/s is for the clips as extracted here (see the run column).\n\n"
            + self.pivot("extract", ["videos_per_s", "pairs_per_s_end_to_end", "startup_seconds", "pairs_per_s",
                                     "seconds", "kb_per_pair", "hours_full_hmdb51",
                                     "core_hours_full_hmdb51", "disk_gb_full_hmdb51"],
                         first_title="method", second_title="run"),
            "## Input generators\n\nTraining batches of `SpatialFrames` and `FlowStacks` (JPEG decoding, "
            "random crop, flip, preprocessing) from frames extracted from the real clips.\n\n"
            + self.pivot("generators", ["samples_per_s"], first_title="generator", second_title="workers"),
            "## Models\n\nOne optimiser step (`train_on_batch`) and one inference (`predict_on_batch`) on "
            "random inputs, random initial weights, the networks, optimiser and batch of the training presets "
            "of `utils.training` (hmdb51: 224 px, 51 classes; demo: 56 px, 9 classes; on a CPU the batch is "
            "capped at 16). The spatial stream is timed in its fine-tuning phase (whole backbone trainable), "
            "the slower of its two phases, so its schedule time is an upper bound. Epoch and schedule times "
            "count the model only (no validation, no input pipeline; see the next table).\n\n"
            + self.pivot("models", ["train_samples_per_s", "infer_samples_per_s", "compile_seconds", "epoch_minutes",
                                    "schedule_hours"], first_title="stream", second_title="preset, input, batch")
            + "\n\n### Do the generators keep up with training?\n\n" + self.keep_up(),
            "## Whole-video evaluation\n\n`utils.evaluation.score_videos` with the whole-video protocol "
            "(every frame / every stack of a clip, batched), untrained networks.\n\n"
            + self.pivot("eval", ["videos_per_s", "inputs_per_s", "videos_per_s_hmdb51_clip", "hours_test_split"],
                         first_title="stream", second_title="setting"),
            "## TV-L1 in Keras\n\n`utils/tvl1_keras.py` against OpenCV's TV-L1 in the same run.\n\n"
            + self.pivot("tvl1keras", ["pairs_per_s", "speed_vs_opencv", "compile_seconds", "epe_px",
                                       "epe_vs_opencv_px"],
                         first_title="implementation", second_title="setting"),
            "## Adding figures from another machine (a GPU)\n\nOn the other machine (any Keras backend; "
            "TensorFlow is not needed there): `python -m utils.bench --stages generators,models,eval,tvl1keras "
            "--csv-only gpu.csv` (add `--mixed-precision` to time float16). Here: `python -m utils.bench --merge "
            "gpu.csv`, which adds its rows (machine B, ...) to these tables and replaces the matching "
            "\"not measured\" GPU rows.",
            "## Demo data set\n\nMaking the built-in demo data set (`utils.demo_data`) and extracting it with "
            "the demo's flow method; training times derived from the models stage (demo preset).\n\n"
            + self.pivot("demo", ["seconds", "pairs_per_s", "epoch_minutes", "schedule_hours"],
                                                  first_title="step", second_title="setting"),
        ]
        return "\n\n".join(sections) + "\n"

    def readme_table(self) -> str:
        return ("Measured by `python -m utils.bench` (full figures and the machines in "
                "[`report/benchmarks.md`](report/benchmarks.md)); machine "
                f"{self.labels.get(self.primary, '?')}: {self.machines.get(self.primary, '?')}.\n\n"
                + self.how_long() + "\n")


def usable_cores_of(description: str) -> str:
    import re
    found = re.search(r"(\d+) usable", description)
    return found.group(1) if found else "?"


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# ================================================================================================
# Running
# ================================================================================================
def resolve_stages(text: str) -> list[str]:
    chosen: list[str] = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        expanded = STAGE_ALIASES.get(name, (name,))
        for stage in expanded:
            if stage not in STAGES:
                raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)} "
                                 f"(aliases: {', '.join(sorted(STAGE_ALIASES))})")
            if stage not in chosen:
                chosen.append(stage)
    return [s for s in STAGES if s in chosen]     # dependencies run first (flow-speed before extract, ...)


def run_stages(stages: Sequence[str], settings: Settings, log: Callable[[str], None] = print,
               keep: Path | None = None) -> tuple[list[Row], dict]:
    """Run ``stages``; returns this run's rows (stamped with the machine) and the machine description."""
    info = machine_info()
    description = describe_machine(info)
    mid = machine_id(description)
    log(f"machine {mid}: {description}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=keep)) if keep else Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(settings, workdir, log)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    failed = []
    try:
        for stage in stages:
            started = time.perf_counter()
            log(f"[{stage}]")
            try:
                getattr(bench, "stage_" + stage.replace("-", "_"))()
            except Exception as error:  # noqa: BLE001 - one broken stage must not lose the others' figures
                log(traceback.format_exc())
                log(f"[{stage}] FAILED: {type(error).__name__}: {error}")
                bench.add(_row(stage, "-", "-", "seconds", None, status=NOT_MEASURED,
                               note=f"stage failed: {type(error).__name__}: {str(error)[:300]}"))
                failed.append(stage)
                continue
            log(f"[{stage}] {time.perf_counter() - started:.1f} s")
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    for row in bench.rows:
        row.machine, row.machine_id, row.measured_at = description, mid, stamp
    return bench.rows, {"id": mid, "description": description, "failed": failed, **info}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated stages: {', '.join(STAGES)}; aliases flow (= the three flow-*), "
                             "all, none. Default: all (--quick: all but tvl1keras, whose compilation alone takes "
                             "a minute on a CPU; none when --merge is given)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and short timings (about 1-2 min; figures are rough)")
    parser.add_argument("--out-dir", type=Path, default=REPORT_DIR,
                        help="where benchmarks.md, benchmarks.csv and benchmarks_readme_table.md go (default: report/)")
    parser.add_argument("--csv-only", type=Path, metavar="PATH",
                        help="write only this run's rows to PATH (no markdown; for merging elsewhere)")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], metavar="CSV",
                        help="add the rows of these CSVs (e.g. from a GPU machine) to the table")
    parser.add_argument("--fresh", action="store_true", help="ignore the existing benchmarks.csv in --out-dir")
    parser.add_argument("--methods", help=f"flow methods for flow-speed/quality/storage (default: {','.join(ALL_METHODS)}; "
                                          "--quick: all but tvl1)")
    parser.add_argument("--extract-methods", help="flow methods for the extract stage (default: tvl1,dis-medium)")
    parser.add_argument("--min-time", type=float, help="seconds each timed measurement lasts at least "
                                                       "(default 5, --quick 0.5)")
    parser.add_argument("--workers", help="worker counts for flow-speed, e.g. 1,2,4 (default: 1, 2, 4 ... cores)")
    parser.add_argument("--videos", type=Path, help=f"folder of <class>/<clip> videos (default {DEFAULT_VIDEOS})")
    parser.add_argument("--flow-gt", type=Path, help=f"folder of ground-truth pairs (default {DEFAULT_FLOW_GT})")
    parser.add_argument("--flow-pairs", type=int, help="frame pairs per clip for flow-speed (default 12, --quick 4)")
    parser.add_argument("--max-videos", type=int, help="clips used by extract, generators, eval (default: all, --quick 2)")
    parser.add_argument("--max-frames", type=int, help="frames per clip extracted (default: whole clips, --quick 12)")
    parser.add_argument("--slow-max-frames", type=int, help="frames per clip (of at most 4 clips) when extracting with TV-L1 (default 16)")
    parser.add_argument("--presets", help="training presets timed by models: hmdb51 (224 px), demo (56 px); "
                                          "default both (--quick: demo)")
    parser.add_argument("--size", type=int, help="override the presets' model input size (e.g. 64 for a tiny run)")
    parser.add_argument("--mixed-precision", action="store_true", help="time the models with mixed_float16 (GPU)")
    parser.add_argument("--streams", help="spatial,temporal (default both)")
    parser.add_argument("--batch-size", type=int, help="override the model batch (default: the preset's, capped at 16 on a CPU)")
    parser.add_argument("--eval-size", type=int, help="input size for the eval stage (default 224)")
    parser.add_argument("--tvl1keras-pairs", type=int, dest="tvl1_keras_pairs",
                        help="frame pairs per call of the Keras TV-L1 (default 4 on a CPU, 64 on a GPU)")
    parser.add_argument("--tvl1keras-gt-pairs", type=int, dest="tvl1_keras_gt_pairs",
                        help="ground-truth pairs for its parity check (default: all on a GPU, 1 on a CPU)")
    parser.add_argument("--keep-workdir", type=Path, help="keep the scratch files (extracted frames) under this folder")
    return parser


def settings_from_args(args) -> Settings:
    changes = {}
    split = lambda text: tuple(t.strip() for t in text.split(",") if t.strip())  # noqa: E731
    if args.methods:
        changes["methods"] = split(args.methods)
    if args.extract_methods:
        changes["extract_methods"] = split(args.extract_methods)
    if args.workers:
        changes["workers"] = tuple(int(w) for w in split(args.workers))
    if args.presets:
        changes["presets"] = split(args.presets)
    if args.mixed_precision:
        changes["mixed_precision"] = True
    if args.streams:
        changes["streams"] = split(args.streams)
    for name in ("min_time", "videos", "flow_gt", "flow_pairs", "max_videos", "max_frames", "slow_max_frames", "size",
                 "batch_size", "eval_size", "tvl1_keras_pairs", "tvl1_keras_gt_pairs"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.max_videos is not None:
        changes.setdefault("slow_max_videos", min(args.max_videos, Settings().slow_max_videos))
        changes.setdefault("eval_videos", min(args.max_videos, Settings().eval_videos))
    if args.max_frames is not None and args.slow_max_frames is None:
        changes["slow_max_frames"] = min(args.max_frames, Settings().slow_max_frames)
    if args.size and args.eval_size is None:
        changes["eval_size"] = args.size
    settings = Settings.quick_preset(**changes) if args.quick else Settings(**changes)
    unknown = [s for s in settings.streams if s not in ("spatial", "temporal")]
    if unknown:
        raise ValueError(f"unknown stream(s) {unknown}; use spatial and/or temporal")
    unknown = [p for p in settings.presets if p not in ("hmdb51", "demo")]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; use hmdb51 and/or demo")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        default = "none" if args.merge else ("quick" if args.quick else "all")
        stages = resolve_stages(args.stages if args.stages is not None else default)
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    merged: list[Row] = []
    for path in args.merge:
        try:
            merged += read_csv(path)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    command = "python -m utils.bench " + " ".join(argv if argv is not None else sys.argv[1:])

    rows: list[Row] = []
    failed: list[str] = []
    if stages:
        started = time.perf_counter()
        rows, info = run_stages(stages, settings, keep=args.keep_workdir)
        failed = info["failed"]
        print(f"benchmark stages {', '.join(stages)} took {time.perf_counter() - started:.0f} s"
              + (f"; FAILED: {', '.join(failed)} (see the log above)" if failed else ""))
        rec = recommend(rows, settings.default_method) or next(
            (recommend(rows, m) for m in settings.methods if recommend(rows, m)), None)
        if rec:
            print(rec["text"])
    if args.csv_only:
        write_csv(combine([], rows + merged), args.csv_only)
        print(f"wrote {args.csv_only}")
        return 1 if failed else 0

    out_dir = args.out_dir
    existing_path = out_dir / "benchmarks.csv"
    existing = read_csv(existing_path) if existing_path.is_file() and not args.fresh else []
    replaced = {(r.machine_id, r.stage) for r in rows}
    table = combine(combine(existing, rows, replaced), merged)
    if not table:
        print("nothing to write: no stage ran and nothing was merged", file=sys.stderr)
        return 2
    report = Report(table)
    write_csv(table, existing_path)
    write_text(out_dir / "benchmarks.md", report.render(command))
    write_text(out_dir / "benchmarks_readme_table.md", report.readme_table())
    print(f"wrote {out_dir / 'benchmarks.md'}, {existing_path}, {out_dir / 'benchmarks_readme_table.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
