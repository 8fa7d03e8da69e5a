"""The benchmark table: one :class:`Row` per figure, its CSV file, and how runs are combined."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

from utils.rawframes import write_atomically

CSV_COLUMNS = ("machine_id", "stage", "item", "setting", "metric", "value", "unit", "device",
               "status", "note", "measured_at", "machine")
MEASURED, DERIVED, NOT_MEASURED, REFERENCE_STATUS = "measured", "derived", "not measured", "reference"
SKIPPED = "skipped: budget"      # a configuration of a budgeted run (the device check) left out for time
PLACEHOLDERS = (NOT_MEASURED, SKIPPED)
METRICS = {   # metric -> (column title of the markdown tables, unit)
    "pairs_per_s": ("pairs/s", "pairs/s"),
    "frames_per_s": ("frames/s (frames only)", "frames/s"),
    "inner_iterations": ("inner iterations", ""),
    "epe_vs_float32_px": ("mean difference to float32 (px)", "px"),
    "iterations_vs_float32": ("iterations vs float32 (x)", "x"),
    "speedup": ("speed-up vs 1 process x 1 thread (x)", "x"),
    "epe_px": ("EPE (px)", "px"),
    "ms_per_pair": ("ms per pair", "ms"),
    "ref_epe_px": ("reference EPE (px)", "px"),
    "epe_float_vs_gt_px": ("EPE float flow vs GT (px)", "px"),
    "epe_jpeg_vs_float_px": ("stored vs float (px)", "px"),
    "epe_jpeg_vs_gt_px": ("stored vs GT (px)", "px"),
    "epe_added_px": ("EPE added by storage (px)", "px"),
    "startup_seconds": ("start-up (s)", "s"),
    "kb_per_pair": ("disk per frame pair, RGB + flow x,y (KB)", "KB"),
    "hours_full_hmdb51": ("full HMDB51, this machine (h)", "h"),
    "core_hours_full_hmdb51": ("full HMDB51, per core (core-h)", "core-h"),
    "disk_gb_full_hmdb51": ("full HMDB51 on disk (GB)", "GB"),
    "pairs_per_s_per_core": ("pairs/s per core", "pairs/s"),
    "scaling_efficiency": ("rate / (N x rate of 1) (x)", "x"),
    "flow_only_pairs_per_s": ("flow alone, pairs/s", "pairs/s"),
    "end_to_end_vs_flow_only": ("end to end / flow alone (x)", "x"),
    "main_ms_per_pair": ("main process, ms per pair", "ms"),
    "samples_per_s": ("samples/s", "samples/s"),
    "samples_per_cpu_second": ("samples per CPU second", "samples/s"),
    "train_samples_per_s": ("training samples/s (model alone)", "samples/s"),
    "infer_samples_per_s": ("inference samples/s", "samples/s"),
    "compile_seconds": ("first call, compiles (s)", "s"),
    "fit_samples_per_s": ("fit samples/s (real generator)", "samples/s"),
    "generator_keeps_up": ("with the generator / model alone (x)", "x"),
    "schedule_hours": ("whole training schedule (h)", "h"),
    "inputs_per_s": ("network inputs/s", "inputs/s"),
    "hours_test_split": ("test split, 1530 clips (h)", "h"),
    "batch_pairs": ("pairs per flow call", "pairs"),
    "peak_memory_mib": ("peak memory (MiB)", "MiB"),
    "epe_vs_opencv_px": ("EPE vs OpenCV TV-L1 (px)", "px"),
    "epe_ratio_vs_opencv": ("EPE / OpenCV's EPE (x)", "x"),
    "seconds": ("time (s)", "s"),
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
    status: str = MEASURED    # measured | derived | reference | not measured | skipped: budget
    note: str = ""
    measured_at: str = ""
    machine: str = ""
    machine_id: str = ""

    def key(self) -> tuple:
        return (self.machine_id, self.stage, self.item, self.setting, self.metric, self.device)


def row(stage, item, setting, metric, value, *, status=MEASURED, device="CPU", note="") -> Row:
    """A :class:`Row` with the unit of ``metric``; non-finite values become ``None``."""
    value = None if value is None or not math.isfinite(float(value)) else float(value)
    return Row(stage, str(item), str(setting), metric, value, METRICS.get(metric, ("", ""))[1], device, status, note)


def format_value(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    size = abs(value)
    return (f"{value:,.0f}" if size >= 1000 else f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10
            else f"{value:.2f}" if size >= 1 else "0" if size == 0 else f"{value:.3g}")


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """Write ``rows`` to ``path`` in one step (a reader never sees half a table)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**asdict(r), "value": "" if r.value is None else repr(r.value)} for r in rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(Path(path), buffer.getvalue())


def read_csv(path: Path) -> list[Row]:
    """Rows of a ``benchmarks.csv`` (this or another machine's); errors name the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no benchmark CSV {path}")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a benchmark CSV written by utils.bench: missing columns {sorted(missing)}")
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                value = float(record["value"]) if record["value"] else None
            except ValueError:
                raise ValueError(f"{path}, line {line}: value {record['value']!r} is not a number") from None
            rows.append(Row(**{f.name: record[f.name] for f in fields(Row) if f.name != "value"}, value=value))
    return rows


def combine(old: Sequence[Row], new: Sequence[Row], replaced_stages: Iterable[tuple[str, str]] = ()) -> list[Row]:
    """``old`` updated with ``new``: same key -> the new row; (machine_id, stage) in ``replaced_stages``
    -> all old rows of that stage on that machine dropped; GPU placeholders ("not measured",
    "skipped: budget") dropped once a measured GPU row with the same stage, item, metric and preset exists."""
    replaced = set(replaced_stages)
    merged = {r.key(): r for r in old if (r.machine_id, r.stage) not in replaced}
    merged.update((r.key(), r) for r in new)

    def what(r: Row) -> tuple:      # a GPU figure of the same stream, metric and preset ("hmdb51 preset: ...")
        return r.stage, r.item, r.metric, r.setting.split(":")[0]

    gpu = {what(r) for r in merged.values() if r.device.startswith("GPU") and r.status in (MEASURED, DERIVED)}
    return [r for r in merged.values()
            if not (r.status in PLACEHOLDERS and r.device.startswith("GPU") and what(r) in gpu)]
