"""Benchmarks: how fast and how good every stage of the pipeline is, measured on this machine.

``python -m utils.bench`` runs the stages below on the real HMDB51 clips and ground-truth flow
pairs in ``tests/data`` (calling the pipeline's own functions) and writes
``report/benchmarks.md`` and ``report/benchmarks.csv`` (one row per figure, with its machine).

Stages (``--stages``, comma separated; default all; ``--quick``: all but those that compile TV-L1):
{stages}

The GPU figures come from one prepared command (``scripts/device_check.sh``: ``--smoke``, then
``--device``; at most 8 minutes, any Keras backend) whose CSV is merged here with ``--merge``.
Each run updates ``benchmarks.csv``: rows of the stages it ran on this machine are replaced,
everything else is kept; ``--fresh`` starts from an empty table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

from utils.bench import extract, flow, streams, tvl1
from utils.bench.context import DEVICE_STAGE_BUDGET, Bench, Settings
from utils.bench.machine import describe_machine, keras_device, machine_id
from utils.bench.report import SECTIONS, Report, write_report
from utils.bench.rows import NOT_MEASURED, Row, combine, read_csv, row, write_csv
from utils.config import REPORT_DIR, Config

STAGE_FUNCTIONS: dict[str, Callable[[Bench], None]] = {     # in the order they run
    "flow-speed": flow.stage_speed, "flow-quality": flow.stage_quality, "flow-storage": flow.stage_storage,
    "tvl1keras": tvl1.stage_tvl1keras, "extract": extract.stage_extract, "extract-cpu": extract.stage_extract_cpu,
    "extract-batched": extract.stage_extract_batched, "generators": streams.stage_generators,
    "models": streams.stage_models, "eval": streams.stage_eval, "tvl1keras-parity": tvl1.stage_parity,
    "tvl1keras-storage": tvl1.stage_storage}
STAGES = tuple(STAGE_FUNCTIONS)
STAGE_ALIASES = {"flow": STAGES[:3], "all": STAGES, "none": (), "device": tuple(DEVICE_STAGE_BUDGET),
                 "quick": tuple(s for s in STAGES if s not in ("tvl1keras", "extract-batched", "tvl1keras-parity",
                                                               "tvl1keras-storage"))}


def resolve_stages(text: str) -> list[str]:
    chosen = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        for stage in STAGE_ALIASES.get(name, (name,)):
            if stage not in STAGES:
                raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)} "
                                 f"(aliases: {', '.join(sorted(STAGE_ALIASES))})")
            chosen.append(stage)
    return [s for s in STAGES if s in chosen]     # dependencies run first (flow-speed before extract, ...)


def run_stages(stages: Sequence[str], settings: Settings, log: Callable[[str], None] = print,
               save: Callable[[list[Row]], None] | None = None) -> tuple[list[Row], list[str]]:
    """Run ``stages``; returns this run's rows and the stages that failed. ``save(rows)`` gets the
    rows so far after each new one. In a budgeted run a stage that would start after its share of the
    budget gets a "skipped: budget" row instead."""
    machine = describe_machine()
    log(f"machine {machine_id(machine)}: {machine}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    bench, failed = Bench(settings, workdir, log, machine, save), []
    try:
        for stage in stages:
            started, cpu = time.perf_counter(), time.process_time()
            log(f"[{stage}]")
            try:
                if bench.time_left(stage) <= 0:
                    bench.skip(stage, "-", "-", ["seconds"], keras_device(), "the budget ran out before this stage")
                else:
                    STAGE_FUNCTIONS[stage](bench)
                    log(f"[{stage}] {time.perf_counter() - started:.1f} s, {time.process_time() - cpu:.1f} s CPU here")
            except Exception as error:  # noqa: BLE001 - one broken stage must not lose the others' figures
                log(traceback.format_exc() + f"[{stage}] FAILED: {type(error).__name__}: {error}")
                bench.add(row(stage, "-", "-", "seconds", None, status=NOT_MEASURED,
                              note=f"stage failed: {type(error).__name__}: {str(error)[:300]}"))
                failed.append(stage)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return bench.rows, failed


def build_parser() -> argparse.ArgumentParser:
    """The options below, then one per Settings field with a help text (``--min-time`` ...)."""
    parser = argparse.ArgumentParser(prog="python -m utils.bench", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=__doc__.format(stages="\n".join(f"  {stage:17s} {SECTIONS[stage][0]}"
                                                                                   for stage in STAGES)))
    parser.add_argument("--stages", help="comma-separated stages or aliases (flow, quick, device, all, none)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short timings (rough figures)")
    parser.add_argument("--device", action="store_true", help="the one-shot GPU check (--quick: at tiny sizes)")
    parser.add_argument("--smoke", action="store_true", help="the device check's smoke test alone (exit 1 on failure)")
    parser.add_argument("--out-dir", type=Path, default=REPORT_DIR, help="where benchmarks.md and .csv go")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], metavar="CSV", help="add the rows of these CSVs")
    parser.add_argument("--fresh", action="store_true", help="ignore the existing benchmarks.csv in --out-dir")
    for f in (f for f in fields(Settings) if "help" in f.metadata):
        kind = f.type.split(" |")[0]
        parse = ((lambda t: tuple(int(n) for n in t.lower().split("x"))) if kind == "tuple[int, int]" else
                 (lambda t, item=int if "int" in kind else str: tuple(item(v) for v in t.split(",") if v.strip()))
                 if kind.startswith("tuple") else {"int": int, "float": float, "Path": Path, "bool": None}[kind])
        parser.add_argument("--" + f.name.replace("_", "-"), help=f"{f.metadata['help']} (default {f.default})",
                            **({"action": argparse.BooleanOptionalAction} if kind == "bool" else {"type": parse}))
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if "help" in f.metadata}
    settings = Settings.preset(args.quick, args.device, **{k: v for k, v in given.items() if v is not None})
    for name, given, known in (("stream", settings.streams, ("spatial", "temporal")),
                               ("preset", settings.presets, ("hmdb51", "demo"))):
        if set(given) - set(known):
            raise ValueError(f"unknown {name}(s) {sorted(set(given) - set(known))}; use {' and/or '.join(known)}")
    return settings


def smoke() -> int:
    """The device check's smoke test: 0 if Keras and the solver work here, else 1 with the reason."""
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            text = tvl1.smoke(Bench(Settings(), Path(workdir), machine=""))
    except Exception as error:  # noqa: BLE001 - any failure stops the check, with what went wrong
        print(traceback.format_exc() + f"SMOKE TEST FAILED: {type(error).__name__}: {error} (see the README section "
              "'On a GPU: the one-shot device check')", file=sys.stderr)
        return 1
    print(f"smoke test passed in {time.perf_counter() - started:.0f} s: {text}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke()
    try:
        stages = resolve_stages(args.stages or ("none" if args.merge else "device" if args.device
                                                else "quick" if args.quick else "all"))
        settings = settings_from(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        merged = [r for path in args.merge for r in read_csv(path)]
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows, failed = [], []
    if stages:
        started = time.perf_counter()
        partial = args.out_dir / "benchmarks.partial.csv"
        rows, failed = run_stages(stages, settings, save=(lambda so_far: write_csv(so_far, partial))
                                  if args.device else None)     # a run stopped early keeps what it measured
        partial.unlink(missing_ok=True)
        print(f"benchmark stages {', '.join(stages)} took {time.perf_counter() - started:.0f} s"
              + (f"; FAILED: {', '.join(failed)} (see the log above)" if failed else ""))
        rec = flow.recommend(rows, Config().flow_method) or next(
            filter(None, (flow.recommend(rows, m) for m in settings.methods)), None)
        if rec:
            print(rec["text"])
    existing_path = args.out_dir / "benchmarks.csv"
    existing = read_csv(existing_path) if existing_path.is_file() and not args.fresh else []
    table = combine(combine(existing, rows, {(r.machine_id, r.stage) for r in rows}), merged)
    if not table:
        print("nothing to write: no stage ran and nothing was merged", file=sys.stderr)
        return 2
    write_csv(table, existing_path)
    write_report(args.out_dir / "benchmarks.md", Report(table), "python -m utils.bench " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    print(f"wrote {args.out_dir / 'benchmarks.md'} and {existing_path}")
    return 1 if failed else 0
