"""The report: ``benchmarks.md`` (tables, recommendations, "how long will this take") from the rows
of one or more machines, and the short table of the README."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

from utils.bench.context import ALL_METHODS, HMDB51_CLIPS, HMDB51_FRAME_PAIRS
from utils.bench.flow import REFERENCE_STORAGE_NOTE, recommend
from utils.bench.machine import usable_cores_of
from utils.bench.rows import DERIVED, MEASURED, METRICS, NOT_MEASURED, Row, format_value
from utils.config import Config


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def _metric_title(metric: str) -> str:
    """Column title with its unit, unless the title already names it ("pairs/s")."""
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
            gpu = self._gpu_tvl1_hours() if method == "tvl1" else NOT_MEASURED
            body.append([title, hours_text, core_text, gpu])
        batched = self.find("extract-batched", "tvl1-keras", "pairs_per_s", machine=p, device_prefix="CPU")
        body.append(["Extract full HMDB51, tvl1-keras (the same TV-L1 in Keras ops, batched; the GPU path)",
                     f"{format_value(HMDB51_FRAME_PAIRS / batched.value / 3600)} h* (end to end)"
                     if batched and batched.value else NOT_MEASURED, "", self._gpu_tvl1_hours()])
        cpu_side = self.find("extract-cpu", None, "pairs_per_s_per_core", machine=p, best=True)
        gpu_machine = next((r.machine_id for r in self.rows if r.stage == "extract-cpu" and r.machine_id != p
                            and "GPU none found" not in r.machine), None)
        gpu_side = self.find("extract-cpu", None, "pairs_per_s", best=True, machine=gpu_machine) \
            if gpu_machine else None
        body.append(["CPU side of GPU extraction (decode, quantise, 3 JPEG writes per pair), per core",
                     f"{format_value(cpu_side.value)} pairs/s per core ({cpu_side.setting})"
                     if cpu_side and cpu_side.value else NOT_MEASURED, "",
                     f"{format_value(gpu_side.value)} pairs/s ({gpu_side.setting}, GPU machine)"
                     if gpu_side and gpu_side.value else NOT_MEASURED])
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

    def _gpu_tvl1_hours(self) -> str:
        """Full-HMDB51 TV-L1 hours on a GPU: tvl1-keras extraction end to end, else its flow alone."""
        end_to_end = self.find("extract-batched", "tvl1-keras", "pairs_per_s", device_prefix="GPU", best=True)
        if end_to_end and end_to_end.value:
            return f"{format_value(HMDB51_FRAME_PAIRS / end_to_end.value / 3600)} h* (tvl1-keras, end to end)"
        flow_only = self.find("tvl1keras", "tvl1-keras", "pairs_per_s", device_prefix="GPU", best=True)
        if flow_only and flow_only.value:
            return f"{format_value(HMDB51_FRAME_PAIRS / flow_only.value / 3600)} h* (tvl1-keras, flow only)"
        return NOT_MEASURED

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
        fit = self.pivot("fit", ["train_samples_per_s", "fit_samples_per_s", "generator_keeps_up"],
                         first_title="stream", second_title="preset, input, batch")
        fit_text = ("Measured with `model.fit` (fit stage): the model alone on one batch in memory, then fed by "
                    "its generator with one worker thread per core; a ratio of 0.9 or more: the generator keeps "
                    "up.\n\n" + fit) if fit != "_not run_" else ""
        if not body:
            return fit_text or "_models (hmdb51 preset) not run_"
        estimate = ("From the separate stages (the best generator figure against the model alone):\n\n"
                    + _md_table(["stream", "device", "machine", "training samples/s (224)", "generator samples/s, best",
                                 "generators keep up?"], body))
        return "\n\n".join(t for t in (fit_text, estimate) if t)

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
            f"Generated by `{command}` (`utils/bench/`). Regenerate with `python -m utils.bench` "
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
            "## Batched extraction (tvl1-keras): the CPU side and the pipeline\n\n" + BATCHED_TEXT + "\n\n"
            + self.pivot("extract-cpu", ["pairs_per_s", "pairs_per_s_per_core", "scaling_efficiency"],
                         first_title="work per frame pair", second_title="processes") + "\n\n"
            + self.pivot("extract-batched", ["pairs_per_s", "flow_only_pairs_per_s", "end_to_end_vs_flow_only",
                                             "pairs_per_s_end_to_end", "startup_seconds", "main_ms_per_pair",
                                             "batch_pairs"], first_title="method", second_title="run"),
            "## Input generators\n\n" + GENERATORS_TEXT + "\n\n"
            + self.pivot("generators", ["samples_per_s", "samples_per_s_per_core", "scaling_efficiency",
                                        "samples_per_cpu_second", "ms_per_pair", "max_abs_difference"],
                         first_title="generator", second_title="loader"),
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
            "## TV-L1 in Keras\n\n`utils/tvl1_keras.py` against OpenCV's TV-L1 in the same run: speed in "
            "full calls (the batch extraction uses), the batch, compilation, peak memory; parity as the "
            "EPE against ground truth and its ratio to OpenCV's (target 0.99 to 1.01).\n\n"
            + self.pivot("tvl1keras", ["pairs_per_s", "speed_vs_opencv", "batch_pairs", "compile_seconds",
                                       "peak_memory_mib", "epe_px", "epe_vs_opencv_px", "epe_ratio_vs_opencv"],
                         first_title="implementation", second_title="setting")
            + "\n\n### What stands between it and ~2,000 pairs/s on one H200 (an analysis, not measured)\n\n"
            + TVL1_GPU_ANALYSIS,
            "## The GPU figures: one prepared check\n\n" + DEVICE_TEXT,
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


BATCHED_TEXT = (
    "With a batched method the main process only computes flow, over frame pairs of several videos "
    "of the same size at once; worker processes decode the videos (writing the RGB JPEGs) and "
    "quantise and write the flow JPEGs at the same time (`utils/extract_batched.py`). The first "
    "table is the work of those processes per frame pair (decode a frame and write its JPEG, "
    "quantise a flow and write its two JPEGs), in 1..N processes at once, the best of the runs; the "
    "second is `tvl1-keras` extraction end to end against the same flow calls alone, in the same "
    "run (the ratio counts from the first flow call: the start-up of a run, also shown, is paid "
    "once). On a CPU the workers and the flow share the cores; on a GPU machine only the CPU side "
    "runs on them. Main process, ms per pair: its own work outside the flow calls.")

GENERATORS_TEXT = (
    "Training batches of `SpatialFrames` and `FlowStacks` at 224x224 (JPEG decoding, random crop, "
    "flip, preprocessing) from frames extracted from the real clips, through Keras' own enqueuer "
    "(what `model.fit` uses), the first batch (the workers' start-up) left out: worker threads "
    "(`workers=N`, the default), worker processes (`use_multiprocessing=True`), and threads with the "
    "decoded-flow cache (`FlowStacks(flow_cache=...)`: the same values, no JPEG decoding after the "
    "first epoch). Samples per CPU second: one thread's own CPU time, which other work on a shared "
    "machine does not change. Processes send every float32 batch (about 4 MB per flow stack) back "
    "through a pipe, which costs more than the work they take over. The last rows show what "
    "OpenCV's reduced-size decoding (`IMREAD_REDUCED_GRAYSCALE_2`) would save and how much it "
    "changes the 224x224 stacks: more than JPEG noise, so it is not used.")

TVL1_GPU_ANALYSIS = (
    "Nothing here was run on a GPU; the figures are arithmetic. TV-L1 is memory-bound: an inner "
    "iteration reads 10 float32 images per pair (the warped gradients, |grad|^2, the constant part "
    "of rho, u1, u2 and the four dual variables) and writes 6 (u1, u2, p), 64 bytes per pixel at the "
    "least, 80 to 100 with the intermediates that XLA's fusions write between the divergence, the "
    "forward gradient and the per-pair convergence sum. OpenCV's stopping rule leaves about 620 "
    "full-size iterations per pair (5 levels, 2.5 full-size areas, about a sixth of the 5 x 300 "
    "allowed per level), so a 320x240 pair moves about 3 to 4.8 GB: at the about 4.3 TB/s of an "
    "H200's device-to-device copies that is about 900 to 1,400 pairs/s, and 2,000 or more needs "
    "fewer bytes per iteration than XLA's fusions give.\n\n"
    "What stands in the way, in the order we expect it to cost: (1) host round trips: under XLA on "
    "a GPU the predicate of every scheduling step of the `while_loop` and of its four `cond`s "
    "(refill, warp, median, write-back) goes to the host, about five synchronisations per step; "
    "with 64 slots an inner iteration is about 5 M pixels, about 0.1 ms of memory traffic, so with "
    "the default 2 inner iterations per step the GPU may wait as long as it works. The device check "
    "times `chunk=6` and 128 slots as well, and names the fastest. (2) Masked lanes: a slot waiting "
    "for its warp or median, or converged within a chunk, still costs the selects of the step. "
    "(3) Warps and medians: each warp gathers 16 taps for 3 images (48 gathers per pixel, "
    "latency-bound) and each outer iteration sorts a 5x5 window (about 100 min/max per pixel); at "
    "most a quarter of the slots are served per step. (4) Per level the flow returns to the host "
    "and back (`predict_on_batch` gives NumPy), 5 transfers per call, small next to the iterations. "
    "float32 is kept throughout: float16 would halve the bytes but is not expected to keep the EPE "
    "within 1 % of OpenCV's. Reaching ~2,000 pairs/s would take a fused kernel that keeps u and p on "
    "chip for several iterations of a tile (Pallas or Triton, outside `keras.ops`) and a schedule "
    "without host synchronisation (CUDA-graph conditionals, or fixed iteration counts with masks).")

DEVICE_TEXT = (
    "Every GPU figure of these tables comes from one command, run once on a machine with a GPU, on "
    "any Keras backend (JAX or PyTorch where TensorFlow is not installed), in at most 8 minutes: "
    "`KERAS_BACKEND=jax python -m utils.bench --device --out-dir OUT` (`scripts/device_check.sh` "
    "wraps it, carried wheels included). It runs the stages tvl1keras (speed at 320x240 for the "
    "default configuration and, while time allows, `chunk=6` and 128 slots; parity on every "
    "ground-truth pair), extract-cpu (over 1..N cores), extract-batched, generators, fit (both "
    "streams at 224, float32 and mixed precision, with the real generators) and eval, each within "
    "its share of a 7.5-minute budget (what does not fit is written as \"not measured\"). Then here: "
    "`python -m utils.bench --merge OUT/benchmarks.csv` adds its rows (machine B, ...) to these "
    "tables and replaces the matching \"not measured\" rows. `--device --quick` runs the same check "
    "with tiny sizes on a CPU (the test suite does, on JAX).")


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
