"""The benchmark table: one :class:`Row` per figure, its CSV file, and how runs are combined."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

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
    "samples_per_s_per_core": ("samples/s per core", "samples/s"),
    "samples_per_cpu_second": ("samples per CPU second", "samples/s"),
    "train_samples_per_s": ("training samples/s", "samples/s"),
    "infer_samples_per_s": ("inference samples/s", "samples/s"),
    "inputs_per_s": ("network inputs/s", "inputs/s"),
    "videos_per_s_hmdb51_clip": ("videos/s (mean HMDB51 clip)", "videos/s"),
    "hours_test_split": ("test split (1530 clips)", "h"),
    "epe_vs_opencv_px": ("EPE vs OpenCV TV-L1", "px"),
    "epe_ratio_vs_opencv": ("EPE / OpenCV's EPE", "x"),
    "speed_vs_opencv": ("speed vs OpenCV", "x"),
    "compile_seconds": ("first call (compiles)", "s"),
    "epoch_minutes": ("one epoch", "min"),
    "schedule_hours": ("whole training schedule", "h"),
    "pairs_per_s_per_core": ("pairs/s per core", "pairs/s"),
    "scaling_efficiency": ("scaling: rate / (N x rate of 1)", "x"),
    "flow_only_pairs_per_s": ("flow computation alone, pairs/s", "pairs/s"),
    "end_to_end_vs_flow_only": ("end to end / flow alone", "x"),
    "main_ms_per_pair": ("main process, ms per pair", "ms"),
    "batch_pairs": ("pairs per flow call", "pairs"),
    "peak_memory_mib": ("peak memory", "MiB"),
    "fit_samples_per_s": ("fit samples/s (real generator)", "samples/s"),
    "generator_keeps_up": ("fit with the generator / model alone", "x"),
    "max_abs_difference": ("largest difference to today's loader", "units of 20 px"),
}


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


def row(stage, item, setting, metric, value, *, status=MEASURED, device="CPU", note="") -> Row:
    """A :class:`Row` with the unit of ``metric``; non-finite values become ``None``."""
    unit = METRICS.get(metric, ("", ""))[1]
    value = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)
    return Row(stage, str(item), str(setting), metric, value, unit, device, status, note)


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


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            data = asdict(r)
            data["value"] = "" if r.value is None else repr(float(r.value))
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
    for r in new:
        merged.pop(r.key(), None)
        merged[r.key()] = r
    rows = list(merged.values())

    def what(r: Row) -> tuple:      # a GPU figure of the same stream, metric and preset ("hmdb51 preset: ...")
        return r.stage, r.item, r.metric, r.setting.split(":")[0]

    measured_gpu = {what(r) for r in rows if r.device.startswith("GPU") and r.status in (MEASURED, DERIVED)}
    return [r for r in rows if not (r.status == NOT_MEASURED and r.device.startswith("GPU") and what(r) in measured_gpu)]
