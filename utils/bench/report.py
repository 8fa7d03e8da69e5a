"""The report: ``benchmarks.md`` (machines, recommendations, "how long will this take", a table per
stage) from the rows of one or more machines."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from utils.bench.flow import REFERENCE_STORAGE_NOTE, recommend
from utils.bench.rows import DERIVED, METRICS, NOT_MEASURED, PLACEHOLDERS, Row, format_value
from utils.config import Config
from utils.rawframes import write_atomically

# stage: (heading, what its table shows, titles of its first two columns: item and setting, or for the
# flow quality and storage tables setting (the GT pair) and item); then a column per metric, as measured.
SECTIONS = {
    "flow-speed": ("Optical flow: speed", "Frame pairs/s at 320x240 (the real clips of `tests/data/hmdb51_clips`); "
                   "*N processes x 1 OpenCV thread* is what `utils.extract` does.", "method", "configuration"),
    "flow-quality": ("Optical flow: quality", "EPE on the pairs of `tests/data/flow_gt`, one OpenCV thread, next to "
                     "their README's (OpenCV 5.0 defaults).", "pair", "method"),
    "flow-storage": ("Optical flow: storage as uint8 JPEG", "Flow written and read back as the pipeline does (+-20 px, "
                     f"0..255, JPEG q95): the error this adds ({REFERENCE_STORAGE_NOTE}).", "pair", "method"),
    "tvl1keras": ("TV-L1 in Keras: speed", "`utils/tvl1_keras.py` in the calls batched extraction makes, on one clip "
                  "and on the mix of every 320x240 clip (the realistic figure).", "implementation", "setting"),
    "extract": ("Extraction end to end", "`utils.extract.extract_dataset` on the real clips; the projections leave "
                "out the start-up of a run (not the frames-only rows: their start-up is in, a large share on short "
                "runs with several processes).", "method", "run"),
    "extract-cpu": ("Batched extraction: the CPU side", "`utils.extract_batched.run_batched` with a free flow (stored "
                    "DIS flows of the same clips): what its worker processes sustain.", "work per pair", "processes"),
    "extract-batched": ("Batched extraction (tvl1-keras) end to end", "`run_batched` with TV-L1 in Keras against the "
                        "same flow calls alone, from the first flow call.", "method", "run"),
    "generators": ("Input generators", "Training batches at 224x224 through Keras' own enqueuer (as `model.fit` gets "
                   "them), the first batch left out; one thread's CPU time per sample.", "generator", "loader"),
    "models": ("Models: training and inference", "`model.fit` on one batch in memory (the model alone) and fed by the "
               "real generators, `predict_on_batch`; the presets of `utils.training` (batch at most 16 on a CPU), "
               "random weights, the spatial stream in its slower fine-tuning phase.", "stream", "preset, input, batch"),
    "eval": ("Whole-video evaluation", "`utils.evaluation.score_videos`, whole-video protocol, untrained networks.",
             "stream", "setting"),
    "tvl1keras-parity": ("TV-L1 in Keras: parity", "EPE against ground truth and its ratio to OpenCV's (target 0.99 "
                         "to 1.01).", "implementation", "pair"),
    "tvl1keras-storage": ("TV-L1 in Keras: 16-bit storage", "The dual variables and warp terms stored in float16 or "
                          "bfloat16 (u in float32) against float32, on the ground-truth pairs: EPE, the difference "
                          "to the float32 flow, inner iterations (one slot, default parameters).", "implementation",
                          "pair"),
}
TASKS = {("extract", "hours_full_hmdb51"): "Extract full HMDB51 (~640k frame pairs), {}",
         ("extract-batched", "hours_full_hmdb51"): "Extract full HMDB51, {} (batched, end to end)",
         ("tvl1keras", "hours_full_hmdb51"): "TV-L1 flow of full HMDB51, {} (the flow alone)",
         ("models", "schedule_hours"): "Train the {} stream on HMDB51 (hmdb51 preset, whole schedule)",
         ("eval", "hours_test_split"): "Whole-video evaluation of an HMDB51 test split (1530 clips), {} stream"}


def md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in body])


def figure(r: Row | None, unit: str = "", what: str = "") -> str:
    """``"458 h* (1 worker)"`` for a measured or derived row, else what its status says."""
    if r is None or r.value is None:
        return r.status if r is not None and r.status in PLACEHOLDERS else NOT_MEASURED
    return f"{cell(r).replace('*', '')} {unit}{'*' if r.status == DERIVED else ''}" + (f" ({what})" if what else "")


def cell(r: Row | None) -> str:
    if r is None:
        return ""
    if r.status in PLACEHOLDERS or r.value is None:
        return r.status if r.status in PLACEHOLDERS else NOT_MEASURED
    return format_value(r.value) + ("*" if r.status == DERIVED else "")


class Report:
    """Markdown from rows of one or more machines (A, B, ... in the order they first appear)."""

    def __init__(self, rows: Sequence[Row]):
        self.rows = list(rows)
        order = list(dict.fromkeys(r.machine_id for r in self.rows if r.machine_id))
        self.machines = {m: next(r.machine for r in self.rows if r.machine_id == m) for m in order}
        self.labels = {m: chr(ord("A") + i) for i, m in enumerate(order)}
        cpu = [r.machine_id for r in self.rows if r.stage in ("flow-speed", "extract")] + order
        self.primary = (cpu or [""])[0]

    def pivot(self, stage: str) -> str:
        _, _, first_title, second_title = SECTIONS[stage]
        first, second = ("setting", "item") if stage in ("flow-quality", "flow-storage") else ("item", "setting")
        groups: dict[tuple, dict[str, Row]] = {}
        for r in self.rows:
            if r.stage == stage and r.item != "-":
                groups.setdefault((getattr(r, first), getattr(r, second), r.device, r.machine_id), {})[r.metric] = r
        if not groups:
            whole = [r for r in self.rows if r.stage == stage]
            return f"_{whole[-1].status}: {whole[-1].note}_" if whole else "_not run_"
        metrics = list(dict.fromkeys(m for g in groups.values() for m in g))
        several = len({k[2:] for k in groups}) > 1
        firsts: dict[str, int] = {}
        for key in groups:
            firsts.setdefault(key[0], len(firsts))
        body = [[a, b] + ([f"{self.labels.get(m, '?')}, {d}"] if several else []) + [cell(g.get(k)) for k in metrics]
                for (a, b, d, m), g in sorted(groups.items(), key=lambda kv: firsts[kv[0][0]])]
        return md_table([first_title, second_title] + (["machine, device"] if several else [])
                        + [METRICS.get(m, (m,))[0] for m in metrics], body)

    def recommendation(self) -> str:
        methods = [Config().flow_method] + [r.item for r in self.rows if r.stage == "flow-speed"]
        rec = next(filter(None, (recommend(self.rows, m, self.primary) for m in methods)), None)
        return (f"- **{rec['text']}** (machine {self.labels.get(self.primary, '?')}): of the configurations measured, "
                "the most pairs/s; within 3 % of it, the fewest cores." if rec else "_flow-speed not run_")

    def how_long(self) -> str:
        """Every projection to the full data set, of this machine's CPU and of every GPU measured."""
        body = [[TASKS[r.stage, r.metric].format(r.item), f"{self.labels.get(r.machine_id, '?')}, {r.device}"
                 if r.value is not None else r.device,
                 figure(r, "h", r.setting)] for r in self.rows if (r.stage, r.metric) in TASKS
                and (r.machine_id == self.primary or r.device.startswith("GPU"))]
        return (md_table(["task", "machine, device", "time"], sorted(body, key=lambda line: line[0]))
                + "\n\n\\* projected from a throughput measured in the same run; \"not measured\": nobody ran it on "
                  "such a machine (not an estimate)." if body else "_nothing projected yet_")

    def render(self, command: str) -> str:
        machines = "\n".join(f"- **{self.labels[m]}** (`{m}`, measured "
                             f"{max(r.measured_at for r in self.rows if r.machine_id == m)}): {d}"
                             for m, d in self.machines.items()) or "_no figures yet_"
        sections = [
            "# Benchmarks: how fast and how good each stage is",
            f"Generated by `{command}` (`utils/bench/`; `--quick` for a smoke run, `--stages` to pick stages, "
            "`--merge other.csv` to add another machine's figures). Every figure is in `benchmarks.csv` with the "
            "machine it was measured on: a throughput or a ratio measured within one run, after a warm-up, over a "
            "minimum time. * marks figures derived from measured ones; \"not measured\" and \"skipped: budget\" mean "
            "nobody measured that configuration (no estimate). Timings on a shared machine are noisy.",
            "## Machines\n\n" + machines, "## Recommendations\n\n" + self.recommendation(),
            "## How long will this take\n\n" + self.how_long()]
        sections += [f"## {title}\n\n{text}\n\n{self.pivot(stage)}" for stage, (title, text, *_) in SECTIONS.items()]
        sections.append("## The GPU figures: one prepared check\n\n`bash scripts/device_check.sh OUT` on a machine "
                        "with a GPU, then `python -m utils.bench --merge OUT/benchmarks.csv` here (README: 'On a GPU: "
                        "the one-shot device check'). Until it has run, the README's 'How long will this take' gives "
                        "the predicted GPU figures, labelled as a prediction.")
        return "\n\n".join(sections) + "\n"


def write_report(path: Path, report: Report, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, report.render(command))
