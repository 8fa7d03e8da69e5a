"""Benchmarks: how fast and how good every stage is, measured on this machine.

``python -m utils.bench`` runs the stages below on the real HMDB51 clips and ground-truth flow
pairs shipped in ``tests/data`` and writes ``report/benchmarks.md`` (tables, recommendations,
"how long will this take"), ``report/benchmarks.csv`` (one row per figure) and
``report/benchmarks_readme_table.md`` (the short table for the README).

Stages (``--stages``, comma separated; ``all`` by default), one module of ``utils/bench/`` each:

* ``flow-speed``   frame pairs per second of every flow method at native 320x240: one process with
                   one OpenCV thread, one process with OpenCV's own threads, N processes x 1 thread.
                   The best configuration of the default method becomes the recommended
                   ``python -m utils.extract --workers N --opencv-threads T``.
* ``flow-quality`` average end-point error (EPE) on the ground-truth pairs (``tests/data/flow_gt``),
                   next to the reference figures of the data set README.
* ``flow-storage`` the error added by storing flow as uint8 JPEG (quantise, JPEG q95, dequantise).
* ``flow``         the three above.
* ``tvl1keras``    TV-L1 written in Keras ops (``utils/tvl1_keras.py``) vs OpenCV: speed in full
                   calls, batch, compilation, peak memory, parity (EPE ratio) on the GT pairs.
* ``extract``      ``utils.extract.extract_dataset`` end to end, projected to the full HMDB51.
* ``extract-cpu``  the CPU side of batched extraction (decode + quantise + 3 JPEG writes per pair)
                   over 1..N processes: pairs/s, per core, scaling.
* ``extract-batched`` ``tvl1-keras`` extraction end to end (``utils.extract_batched``) against its
                   flow computation alone, in the same run.
* ``generators``   samples per second of ``SpatialFrames`` / ``FlowStacks`` through Keras' enqueuer:
                   worker threads, worker processes, the decoded-flow cache, over 1..N workers.
* ``models``       training and inference samples per second of both streams, built, compiled and
                   batched as the ``hmdb51`` (224 px) and ``demo`` presets of ``utils.training``, on
                   the Keras backend in use (a GPU if Keras sees one; TensorFlow is not required);
                   GPU rows are "not measured" on a machine without one.
* ``fit``          ``model.fit`` with the real generators feeding both streams (hmdb51 preset) against
                   the model alone: do the generators keep up?
* ``eval``         whole-video evaluation (``utils.evaluation.score_videos``), videos per second.
* ``demo``         the built-in demo data set: making it and extracting it, timed.

Every figure is a throughput or a ratio measured within one run, after a short warm-up, over at
least ``--min-time`` seconds.

The GPU figures come from one prepared command, run once on a machine with a GPU (any Keras
backend: JAX or PyTorch where TensorFlow is not installed; at most 8 minutes), whose CSV is then
merged here::

    KERAS_BACKEND=jax python -m utils.bench --device --csv-only gpu.csv   # on the GPU machine
    python -m utils.bench --merge gpu.csv                                 # here

(``scripts/device_check.sh`` wraps the first line.) Each run updates ``benchmarks.csv``: rows of
the stages it ran on this machine are replaced, everything else (other stages, other machines)
is kept; ``--fresh`` starts from an empty table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from utils.bench import demo, evaluation, extract, fit, flow, generators, models, tvl1
from utils.bench.context import ALL_METHODS, DEFAULT_FLOW_GT, DEFAULT_VIDEOS, DEVICE_STAGE_BUDGET, Bench, Settings
from utils.bench.flow import recommend
from utils.bench.machine import describe_machine, machine_id, machine_info
from utils.bench.report import Report, write_text
from utils.bench.rows import NOT_MEASURED, Row, combine, read_csv, row, write_csv
from utils.config import REPORT_DIR

# The stages in pipeline order (a stage may use what an earlier one left on the Bench).
STAGE_FUNCTIONS: dict[str, Callable[[Bench], None]] = {
    "flow-speed": flow.stage_speed,
    "flow-quality": flow.stage_quality,
    "flow-storage": flow.stage_storage,
    "tvl1keras": tvl1.stage_tvl1keras,
    "extract": extract.stage_extract,
    "extract-cpu": extract.stage_extract_cpu,
    "extract-batched": extract.stage_extract_batched,
    "generators": generators.stage_generators,
    "models": models.stage_models,
    "fit": fit.stage_fit,
    "eval": evaluation.stage_eval,
    "demo": demo.stage_demo,
}
STAGES = tuple(STAGE_FUNCTIONS)
STAGE_ALIASES = {"flow": ("flow-speed", "flow-quality", "flow-storage"), "all": STAGES,
                 "none": (), "quick": tuple(s for s in STAGES if s not in ("tvl1keras", "extract-batched", "fit")),
                 "device": tuple(DEVICE_STAGE_BUDGET), "speed": ("flow-speed",),
                 "quality": ("flow-quality",), "storage": ("flow-storage",), "evaluation": ("eval",)}


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
               keep: Path | None = None, after_stage: Callable[[list[Row]], None] | None = None
               ) -> tuple[list[Row], dict]:
    """Run ``stages``; returns this run's rows (stamped with the machine) and the machine description.
    ``after_stage(rows)`` gets the stamped rows so far after every stage."""
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
                STAGE_FUNCTIONS[stage](bench)
            except Exception as error:  # noqa: BLE001 - one broken stage must not lose the others' figures
                log(traceback.format_exc())
                log(f"[{stage}] FAILED: {type(error).__name__}: {error}")
                bench.add(row(stage, "-", "-", "seconds", None, status=NOT_MEASURED,
                               note=f"stage failed: {type(error).__name__}: {str(error)[:300]}"))
                failed.append(stage)
                continue
            log(f"[{stage}] {time.perf_counter() - started:.1f} s")
            if after_stage is not None:
                for r in bench.rows:
                    r.machine, r.machine_id, r.measured_at = description, mid, stamp
                after_stage(list(bench.rows))
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    for r in bench.rows:
        r.machine, r.machine_id, r.measured_at = description, mid, stamp
    return bench.rows, {"id": mid, "description": description, "failed": failed, **info}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated stages: {', '.join(STAGES)}; aliases flow (= the three flow-*), "
                             "device, all, none. Default: all (--quick: all but the stages that compile TV-L1 "
                             "or train, a minute each on a CPU; --device: device; none when --merge is given)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and short timings (about 1-2 min; figures are rough)")
    parser.add_argument("--device", action="store_true",
                        help="the one-shot GPU check: every GPU figure (TV-L1 speed and parity, batched "
                             "extraction, generators, training with the generators at 224 in float32 and "
                             "mixed precision, whole-video evaluation) in at most 8 minutes; any Keras backend. "
                             "With --quick: tiny sizes (a test of the check on a CPU)")
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
                        help="frame pairs per call of the Keras TV-L1 (default: the full call it plans, e.g. "
                             "16 on a CPU, 256 on a GPU)")
    parser.add_argument("--tvl1-size", type=_parse_size, dest="tvl1_size",
                        help="resize the TV-L1 frames to WxH (default: the clips' 320x240)")
    parser.add_argument("--repeats", type=int, help="runs of each CPU-side extraction measurement (default 2)")
    parser.add_argument("--tvl1keras-gt-pairs", type=int, dest="tvl1_keras_gt_pairs",
                        help="ground-truth pairs for its parity check (default: all on a GPU, 1 on a CPU)")
    parser.add_argument("--keep-workdir", type=Path, help="keep the scratch files (extracted frames) under this folder")
    return parser


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, got {text!r}") from None
    return width, height


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
        changes["policies"] = ("mixed_float16",)
    if args.streams:
        changes["streams"] = split(args.streams)
    for name in ("min_time", "videos", "flow_gt", "flow_pairs", "max_videos", "max_frames", "slow_max_frames", "size",
                 "batch_size", "eval_size", "tvl1_keras_pairs", "tvl1_keras_gt_pairs", "tvl1_size", "repeats"):
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
    if args.device:
        settings = Settings.device_preset(quick=args.quick, **changes)
    else:
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
        default = "none" if args.merge else "device" if args.device else "quick" if args.quick else "all"
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
        partial = (args.csv_only or args.out_dir / "benchmarks.csv").with_suffix(".partial.csv")
        save = (lambda so_far: write_csv(so_far, partial)) if args.device else None   # a run stopped early keeps them
        rows, info = run_stages(stages, settings, keep=args.keep_workdir, after_stage=save)
        partial.unlink(missing_ok=True)
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
