"""The results table and figures of a run, made from score files and training histories only.

:func:`write_report` reads ``report/<run>/scores/*.npz`` (written by :mod:`utils.evaluation`) and
``models/<run>/<stream>/history.csv`` (written by training) - never a model - and writes

- ``report/<run>/results.md`` and ``results.csv`` (copied to ``report/results.md|csv``): top-1
  accuracy of each stream and fusion under both protocols, top-5 and mean class accuracy, the
  settings of the run, and the reference figures of earlier work side by side; and one row per
  experiment of notebooks 06-08 (:data:`EXPERIMENTS`, read from their score files by name, "not run"
  where a file is absent), next to the figures published for it;
- ``report/<run>/figures/``: confusion matrix (fusion, whole video), per-class accuracy of each
  stream, training curves of both streams.

Figures are plain ``matplotlib.figure.Figure`` objects on the Agg canvas (no pyplot state), so
the same code works headless and in notebooks.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from utils import config as config_module
from utils.config import Config
from utils.evaluation import PROTOCOLS, STREAMS, Scores, classification_metrics, current_scores, describe_flow, \
    describe_protocol, fusion_results, per_class_accuracy
from utils.writers import remove_dead_temporaries

NETWORKS = {  # key in evaluation.fusion_results -> row of the course's table
    "spatial": "Spatial ResNet-50",
    "temporal": "Temporal",
    "average": "Fusion (average)",
    "weighted": "Fusion (weighted, w from validation)",
}
PROTOCOL_NAMES = {"one_frame": "One frame", "whole_video": "Whole video"}

# Top-1 accuracy (%) on HMDB51 reported elsewhere: context for this run's figures, not results of it.
REFERENCE_RESULTS = pd.DataFrame([
    ("Earlier student work (this course)", "Spatial ResNet-50", 39.0, 45.0, "HMDB51"),
    ("Earlier student work (this course)", "Temporal", 25.8, None, "HMDB51"),
    ("Earlier student work (this course)", "Fusion (average)", 38.0, None, "HMDB51"),
    ("Simonyan & Zisserman 2014", "Spatial (CNN-M-2048, ImageNet)", None, 40.5,
     "Table 4: mean of 3 splits; ImageNet pre-trained; 25 frames x 10 crops per video"),
    ("Simonyan & Zisserman 2014", "Temporal (flow stacking, L=10), HMDB51 alone", None, 46.6,
     "Table 2: split 1; trained on HMDB51's training clips only, as here"),
    ("Simonyan & Zisserman 2014", "Temporal (flow stacking, L=10), multi-task", None, 54.6,
     "Table 4: mean of 3 splits; flow net trained multi-task on UCF101 + HMDB51 (more data than here)"),
    ("Simonyan & Zisserman 2014", "Fusion (average), multi-task temporal", None, 58.0,
     "Table 4: mean of 3 splits; the spatial net above + the multi-task temporal net"),
    ("Wang et al. 2016 (TSN)", "Two streams, BN-Inception", None, 69.0,
     "~69, mean of 3 splits; ImageNet-only pretraining"),
], columns=["source", "network", "one_frame", "whole_video", "notes"])

EXPERIMENTS = pd.DataFrame([
    # score-file name (report/<run>/scores/<name>_<protocol>.npz), row, HMDB51 top-1 (%) published, source
    # notebook 06 (SG3I):
    ("sg3i", "SG3I: motion without flow (3 grayscale frames as RGB)", None,
     "Kim & Won 2020 (IEEE Access 8:60179): no figure of the stream alone taken here"),
    ("fusion_sg3i", "Fusion RGB + SG3I (average)", None,
     "Kim & Won 2020: 5.7 points above Simonyan & Zisserman 2014's flow two-stream (abstract)"),
    # notebook 07 (the 3D CNN):
    ("c3d_rgb", "3D CNN on RGB clips (C3D-style, from scratch)", 24.3,
     "a C3D-like 3D ConvNet from scratch, split 1: Carreira & Zisserman 2017, Table 2 (C3D: Tran et al. 2015)"),
    ("c3d_flow", "3D CNN on flow volumes (C3D-style, from scratch)", None, "no published figure taken here"),
    # notebook 08 (the learned fusion):
    ("fusion_learned", "Fusion (learned on validation scores)", 59.4,
     "SVM on the two streams' softmax scores, mean of 3 splits: Simonyan & Zisserman 2014"),
], columns=["name", "experiment", "reference", "source"])
"""The experiments after the course (notebooks 06-08): one row each in ``results.md``, in both protocols;
a run that made no score file reads "not run". ``reference``: top-1 (%) on HMDB51 reported elsewhere
(not this run); None where no comparable figure is quoted."""
NOT_RUN = "not run"
EXPERIMENTS_HEADING = "## Experiments (notebooks 06-08)"


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------
def collect_experiments(cfg: Config, problems: list[str] | None = None) -> dict[str, dict[str, Scores]]:
    """``{experiment name: {protocol: Scores}}`` for the experiments' score files that exist and are current
    (:func:`utils.evaluation.current_scores`; the reasons for those left out go to ``problems``)."""
    found: dict[str, dict[str, Scores]] = {}
    for name in EXPERIMENTS.name:
        for protocol in PROTOCOLS:
            scores = current_scores(cfg, name, protocol, "test", problems)
            if scores is not None:
                found.setdefault(name, {})[protocol] = scores
    return found


def experiments_table(experiments: dict[str, dict[str, Scores]]) -> pd.DataFrame:
    """One row per experiment of :data:`EXPERIMENTS`: top-1 (%) per protocol (NaN: not run), the number
    of test clips each protocol scored, and the reference figure."""
    rows = []
    for ref in EXPERIMENTS.itertuples(index=False):
        found = experiments.get(ref.name, {})
        row = {"name": ref.name, "experiment": ref.experiment}
        for protocol in PROTOCOLS:
            scores = found.get(protocol)
            row[protocol] = round(100 * scores.metrics()["top1"], 2) if scores is not None else np.nan
            row[f"n_{protocol}"] = len(scores) if scores is not None else 0
        rows.append({**row, "reference": ref.reference, "source": ref.source})
    return pd.DataFrame(rows)


def experiment_rows(experiments: dict[str, dict[str, Scores]]) -> pd.DataFrame:
    """The experiments' runs as rows of :func:`results_table` (``results.csv``): one per (experiment, protocol) run."""
    rows = []
    for ref in EXPERIMENTS.itertuples(index=False):
        for protocol, scores in experiments.get(ref.name, {}).items():
            m = scores.metrics()
            rows.append({"network": ref.experiment, "protocol": protocol, "top1": round(100 * m["top1"], 2),
                         "top5": round(100 * m["top5"], 2), "mean_class": round(100 * m["mean_class"], 2),
                         "n_videos": m["n_videos"], "fusion_weight": None, "stride": scores.meta.get("stride"),
                         "checkpoint": scores.meta.get("checkpoint")})
    return pd.DataFrame(rows)


def experiments_markdown(table: pd.DataFrame) -> str:
    """The experiments' table for ``results.md``: "not run" where a run made no score file."""
    def clips(row) -> str:
        counts = {PROTOCOL_NAMES[p].lower(): row[f"n_{p}"] for p in PROTOCOLS if row[f"n_{p}"]}
        if not counts:
            return "-"
        return str(next(iter(counts.values()))) if len(set(counts.values())) == 1 else \
            ", ".join(f"{n} ({p})" for p, n in counts.items())

    shown = pd.DataFrame({
        "Experiment": table.experiment,
        **{PROTOCOL_NAMES[p]: [NOT_RUN if pd.isna(v) else _cell(v) for v in table[p]] for p in PROTOCOLS},
        "Test clips": [clips(row) for _, row in table.iterrows()],
        "Published on HMDB51": [_cell(v) if v is not None and not pd.isna(v) else "-" for v in table.reference],
        "Source of that figure": table.source,
    })
    return markdown_table(shown)


def collect_results(cfg: Config, problems: list[str] | None = None) -> dict[str, dict[str, Scores]]:
    """``{protocol: {network: Scores}}`` for the protocols whose score files exist and are current.

    Score files made by a checkpoint that has changed since, on frames extracted again, or damaged
    are left out; the reason for each (``<file>: what is wrong; what to do``) goes to ``problems``.
    """
    return {protocol: fusion_results(cfg, protocol, problems) for protocol in PROTOCOLS}


def results_table(results: dict[str, dict[str, Scores]]) -> pd.DataFrame:
    """One row per (network, protocol) with accuracies in percent, in the course's row order."""
    rows = []
    for key, name in NETWORKS.items():
        for protocol in PROTOCOLS:
            scores = results.get(protocol, {}).get(key)
            if scores is None:
                continue
            m = classification_metrics(scores.label, scores.scores)
            rows.append({
                "network": name, "protocol": protocol,
                "top1": round(100 * m["top1"], 2), "top5": round(100 * m["top5"], 2),
                "mean_class": round(100 * m["mean_class"], 2), "n_videos": m["n_videos"],
                "fusion_weight": scores.meta.get("weight") if key in ("average", "weighted") else None,
                "stride": _stream_meta(results[protocol], key, "stride"),
                "checkpoint": _stream_meta(results[protocol], key, "checkpoint"),
                "checkpoint_sha256": _made_by(results[protocol], key),
                "flow": "" if key == "spatial" else describe_flow(_temporal_extraction(results[protocol]), short=True),
            })
    return pd.DataFrame(rows, columns=["network", "protocol", "top1", "top5", "mean_class", "n_videos",
                                       "fusion_weight", "stride", "checkpoint", "checkpoint_sha256", "flow"])


def _temporal_extraction(results: dict[str, Scores]) -> dict | None:
    """The extraction settings of the frames the temporal scores were computed on (None if unknown)."""
    return results["temporal"].meta.get("extraction") if "temporal" in results else None


def _made_by(results: dict[str, Scores], key: str) -> str:
    """The first 12 hex digits of the SHA-256 of the checkpoint(s) behind a row ("spatial ... / temporal ...")."""
    def short(stream):
        digest = results[stream].meta.get("checkpoint_sha256") if stream in results else None
        return digest[:12] if digest else "unknown"
    if key in STREAMS:
        return short(key)
    return " / ".join(f"{stream} {short(stream)}" for stream in STREAMS)


def top1_grid(table: pd.DataFrame) -> pd.DataFrame:
    """The course's table: rows = networks, columns = protocols, cells = top-1 % (NaN when missing)."""
    grid = table.pivot(index="network", columns="protocol", values="top1") if len(table) else pd.DataFrame()
    return grid.reindex(index=list(NETWORKS.values()), columns=list(PROTOCOLS))


def _stream_meta(results: dict[str, Scores], key: str, name: str):
    if key in STREAMS:
        return results[key].meta.get(name)
    values = {results[s].meta.get(name) for s in STREAMS if s in results}
    return values.pop() if len(values) == 1 else " / ".join(map(str, sorted(values, key=str)))


def _cell(value, digits: int = 1) -> str:
    return "NA" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency such as tabulate)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def spatial_initialisation(cfg: Config) -> str | None:
    """How the spatial backbone was initialised, from its training folder's ``state.json`` (None if unknown)."""
    from utils.pretrained import describe_weights

    try:      # the training folder's state.json (utils.training), read without importing Keras
        state = json.loads((Path(cfg.stream_dir("spatial")) / "state.json").read_text())
    except (OSError, ValueError):
        return None
    run_info = (state.get("settings") or {}).get("run_info") or {}
    return describe_weights(run_info["weights"]) if "weights" in run_info else None


def tested_model(checkpoint) -> str | None:
    """Which model a checkpoint holds and on how many training clips it was trained, from the
    ``state.json`` and ``history.csv`` beside it (written by :mod:`utils.training`); None if absent."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    try:
        state = json.loads((path.parent / "state.json").read_text())
    except (OSError, ValueError):
        return None
    settings = state.get("settings") or {}
    clips, held_out = _clips(settings.get("train_data")), _clips(settings.get("val_data"))
    refit = (settings.get("run_info") or {}).get("refit")
    if refit:
        return (f"the final fit on all {clips} training clips (train + validation) for {refit['epochs']} "
                f"epochs, the count chosen on the validation clips")
    done = state.get("epochs_done")
    which = f"epoch {done} (the last)"
    if path.name == "best.keras":
        try:
            history = pd.read_csv(path.parent / "history.csv")
            best = int(history.loc[history["val_accuracy"].idxmax(), "epoch"]) + 1
            which = f"epoch {best} of {done} (the best on validation)"
        except (OSError, ValueError, KeyError):
            which = f"the best validation epoch of {done}"
    held = f", {held_out} validation clips held out" if held_out else ""
    return f"{which}, trained on {clips} training clips{held}"


def _clips(data: dict | None) -> int | None:
    """The number of clips (videos, or array rows) a training folder's settings record for a data set."""
    if not data:
        return None
    return data.get("videos") or (data.get("arrays") or [None])[0]


def load_history(cfg: Config, stream: str) -> pd.DataFrame | None:
    """``models/<run>/<stream>/history.csv`` (Keras CSVLogger format), or None if absent."""
    path = Path(cfg.stream_dir(stream)) / "history.csv"
    if not path.is_file():
        return None
    try:
        history = pd.read_csv(path)
        why = "no epoch column"
    except (ValueError, UnicodeDecodeError) as error:      # pandas' ParserError and EmptyDataError are ValueErrors
        history, why = None, f"{type(error).__name__}: {str(error).strip()}"
    if history is None or "epoch" not in history:
        warnings.warn(f"{path}: not a training history ({why}: a damaged file?); the report goes on without "
                      f"its training curves; delete it (and the run's state.json) to train that stream again",
                      stacklevel=2)
        return None
    return history


# ----------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------
def confusion_matrix_figure(scores: Scores, title: str = "") -> Figure:
    """Row-normalised confusion matrix (true class x predicted class) of video scores."""
    from sklearn.metrics import confusion_matrix

    shown = np.union1d(scores.label, scores.predicted)   # labels the dataset defines but no video has or gets: not drawn
    names = [scores.class_names[k] for k in shown]
    n = len(shown)
    cm = confusion_matrix(scores.label, scores.predicted, labels=shown, normalize="true")
    side = min(16.0, 3.0 + 0.25 * n)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the class's videos")
    font = max(4, min(9, 300 // n))
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if cm[i, j] > 0:
                    ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=9 if n <= 9 else 7,
                            color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def per_class_accuracy_figure(results: dict[str, Scores], title: str = "") -> Figure:
    """Per-class accuracy of each stream and fusion (grouped horizontal bars, sorted by fusion)."""
    series = {NETWORKS[k]: per_class_accuracy(s) for k, s in results.items() if k in NETWORKS}
    frame = pd.DataFrame(series).dropna(how="all") * 100    # classes without test videos: no bar
    sort_by = next((NETWORKS[k] for k in ("average", "spatial", "temporal") if NETWORKS[k] in frame), None)
    if sort_by is not None:
        frame = frame.sort_values(sort_by)
    n = len(frame)
    fig = Figure(figsize=(8, max(3.0, 1.0 + 0.22 * n * max(1, len(series)) / 2)))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(series))
    for i, name in enumerate(frame.columns):
        offset = ((len(series) - 1) / 2 - i) * height  # first series on top, as in the legend
        ax.barh(np.arange(n) + offset, frame[name].fillna(0), height, label=name)
    ax.set_yticks(range(n), frame.index, fontsize=max(5, min(9, 400 // max(n, 1))))
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%) on the class's test videos")
    ax.legend(fontsize=9, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves_figure(histories: dict[str, pd.DataFrame | None], title: str = "") -> Figure:
    """Accuracy and loss per epoch (training and validation) of each stream's history.csv."""
    histories = {k: v for k, v in histories.items() if v is not None and len(v)}
    fig = Figure(figsize=(10, 3.2 * max(1, len(histories))))
    if not histories:
        fig.text(0.5, 0.5, "no training history found", ha="center")
        return fig
    axes = fig.subplots(len(histories), 2, squeeze=False)
    for row, (stream, history) in zip(axes, histories.items()):
        epochs = np.arange(1, len(history) + 1)
        for ax, metric in zip(row, ("accuracy", "loss")):
            for column, style in ((metric, "-"), (f"val_{metric}", "--")):
                if column in history:
                    ax.plot(epochs, history[column], style, marker=".", label=column)
            if "phase" in history:  # training in phases (e.g. head warm-up, then fine-tuning)
                changes = np.flatnonzero(history["phase"].to_numpy()[1:] != history["phase"].to_numpy()[:-1])
                for c in changes:
                    ax.axvline(c + 1.5, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{stream} stream: {metric}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=9)
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def fusion_weight_figure(search: pd.DataFrame, chosen: float, title: str = "") -> Figure:
    """Validation top-1 accuracy (and NLL) of ``w * spatial + (1 - w) * temporal`` against ``w``."""
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    ax.plot(search["weight"], 100 * search["top1"], marker=".", label="validation top-1 (%)")
    ax.axvline(chosen, color="C2", ls="--", label=f"chosen w = {chosen:.2f}")
    ax.axvline(0.5, color="grey", ls=":", label="plain average (w = 0.5)")
    ax.set_xlabel("w (weight of the spatial stream)")
    ax.set_ylabel("top-1 accuracy (%)")
    if "nll" in search:
        other = ax.twinx()
        other.plot(search["weight"], search["nll"], color="C1", alpha=0.6, label="validation NLL")
        other.set_ylabel("mean negative log-likelihood", color="C1")
    ax.legend(fontsize=9, loc="lower center")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def factor_grid_figure(results: dict[str, Scores], video: int = 0, title: str = "") -> Figure:
    """For one video of the demo: each network's class probabilities laid out as colour x motion.

    The spatial stream can only put its mass on a row (the colour), the temporal stream only on a
    column (the motion); their average peaks where the row and the column cross.
    """
    from utils.demo_data import APPEARANCES, MOTIONS, demo_class_factors

    colours, motions = list(APPEARANCES), list(MOTIONS)
    fig = Figure(figsize=(3.3 * len(results) + 0.8, 3.4))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    first = next(iter(results.values()))
    true_colour, true_motion = demo_class_factors(first.class_names[int(first.label[video])])
    for ax, (name, scores) in zip(axes, results.items()):
        grid = np.zeros((len(colours), len(motions)))
        for k, class_name in enumerate(scores.class_names):
            colour, motion = demo_class_factors(class_name)
            grid[colours.index(colour), motions.index(motion)] = scores.scores[video, k]
        image = ax.imshow(grid, cmap="Greens", vmin=0, vmax=max(0.5, float(grid.max())))
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if value > 0.6 * max(0.5, grid.max()) else "black")
        ax.add_patch(_cell_frame(motions.index(true_motion), colours.index(true_colour)))
        ax.set_xticks(range(len(motions)), motions)
        ax.set_yticks(range(len(colours)), colours)
        ax.set_title(name, fontsize=10)
    fig.colorbar(image, ax=list(axes), fraction=0.03, label="probability")
    fig.suptitle(title or f"{first.video[video]}: true class {true_colour}_{true_motion} (red frame)", fontsize=10)
    return fig


def _cell_frame(column: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def protocol_figure(n_frames: int, stack_length: int = 10, stride: int = 1, segments: int | None = None) -> Figure:
    """Which frames and flow stacks each protocol feeds the two streams, for a clip of ``n_frames``
    (the whole video: ``segments`` equally spaced ones, or every ``stride``-th one)."""
    from utils.evaluation import input_positions

    n_flows = n_frames - 1
    rows = [("one frame: spatial", "spatial", "one_frame"), ("one frame: temporal", "temporal", "one_frame"),
            ("whole video: spatial", "spatial", "whole_video"), ("whole video: temporal", "temporal", "whole_video")]
    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    for y, (name, stream, protocol) in enumerate(reversed(rows)):
        y = 1.5 * y
        positions = input_positions(stream, protocol, n_frames, n_flows, stack_length, stride, segments)
        if stream == "spatial":
            ax.scatter(positions, [y] * len(positions), marker="s", s=18, color="C0")
        else:
            for k, start in enumerate(positions):  # one bar per stack, flows start ... start + L - 1
                offset = 0.4 - 0.8 * k / max(1, len(positions) - 1) if len(positions) > 1 else 0
                ax.plot([start, start + stack_length - 1], [y + offset] * 2, color="C1", lw=1.5)
    ax.set_yticks(1.5 * np.arange(len(rows)), [r[0] for r in reversed(rows)])
    ax.set_xlim(0.5, n_frames + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    whole = f"{segments} equally spaced" if segments else f"stride {stride}"
    ax.set_xlabel(f"frame / flow index (clip of {n_frames} frames, {n_flows} flows; "
                  f"stacks of L = {stack_length}; whole video: {whole})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def show_figure(fig: Figure, dpi: int = 100) -> None:
    """Display a figure in a notebook as a PNG (works whatever matplotlib backend is active)."""
    import io

    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    display(Image(data=buffer.getvalue()))


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a figure as PNG atomically (Agg canvas, no pyplot)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def write_figures(cfg: Config, results: dict[str, dict[str, Scores]] | None = None) -> dict[str, Path]:
    """The report's figures in ``report/<run>/figures/``; returns ``{name: path}`` of those made."""
    results = collect_results(cfg) if results is None else results
    folder = Path(cfg.report_dir) / "figures"
    made = {}
    for protocol in PROTOCOLS:
        res = results.get(protocol, {})
        label = PROTOCOL_NAMES[protocol].lower()
        if "average" in res:
            made[f"confusion_{protocol}"] = save_figure(
                confusion_matrix_figure(res["average"], f"Fusion (average), {label}: confusion matrix"),
                folder / f"confusion_fusion_{protocol}.png")
        if res:
            shown = {k: v for k, v in res.items() if k != "weighted"}
            made[f"per_class_{protocol}"] = save_figure(
                per_class_accuracy_figure(shown, f"Per-class accuracy, {label}"),
                folder / f"per_class_accuracy_{protocol}.png")
        if "weighted" in res and res["weighted"].meta.get("weight_search"):
            made[f"fusion_weight_{protocol}"] = save_figure(
                fusion_weight_figure(pd.DataFrame(res["weighted"].meta["weight_search"]),
                                     res["weighted"].meta["weight"],
                                     f"Fusion weight chosen on validation, {label}"),
                folder / f"fusion_weight_{protocol}.png")
    histories = {s: load_history(cfg, s) for s in STREAMS}
    if any(h is not None for h in histories.values()):
        made["training_curves"] = save_figure(
            training_curves_figure(histories, f"Training curves, {cfg.run_name}"),
            folder / "training_curves.png")
    return made


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------
LEFT_OUT = "**Left out of this table** (NA above):"


def report_markdown(cfg: Config, table: pd.DataFrame, results: dict[str, dict[str, Scores]],
                    settings: dict | None = None, figures: dict[str, Path] | None = None,
                    figures_prefix: str = "figures/", problems: list[str] | None = None,
                    experiments: dict[str, dict[str, Scores]] | None = None) -> str:
    """The text of ``results.md``: ``problems``, the score files left out and why (under the table);
    the experiments' table when ``experiments`` is given."""
    grid = top1_grid(table)
    any_scores = next((s for res in results.values() for s in res.values()), None)
    n_test = {p: len(next(iter(res.values()))) for p, res in results.items() if res}
    lines = [f"# Two-stream results: {cfg.dataset_name}, split {cfg.split}", ""]
    lines += ["Top-1 accuracy (%) over the test videos of the split, computed from the per-video "
              f"scores in `report/{cfg.run_name}/scores/`. Regenerate with `utils.report.write_report`.", ""]
    course = pd.DataFrame({"Network": grid.index,
                           **{PROTOCOL_NAMES[p]: [_cell(v) for v in grid[p]] for p in PROTOCOLS}})
    lines += [markdown_table(course), ""]
    if problems:
        lines += [LEFT_OUT, *[f"- {problem}" for problem in dict.fromkeys(problems)], ""]
    if experiments is not None:
        lines += [EXPERIMENTS_HEADING, "",
                  "Top-1 accuracy (%) on the same test split, from `report/<run>/scores/<experiment>_<protocol>.npz`; "
                  f"\"{NOT_RUN}\" where this run made no score file (`python -m utils.run --experiments` runs "
                  "them). The published figures are HMDB51's, not this run's.", "",
                  experiments_markdown(experiments_table(experiments)), ""]

    if len(table):
        detail = table.assign(
            protocol=table.protocol.map(PROTOCOL_NAMES),
            top1=table.top1.map(_cell), top5=table.top5.map(_cell), mean_class=table.mean_class.map(_cell),
            fusion_weight=table.fusion_weight.map(lambda w: "" if w is None or pd.isna(w) else f"{w:.2f}"),
            checkpoint_sha256=table.checkpoint_sha256.map(lambda h: f"`{h}`"),
            flow=table.flow.map(lambda f: f or "(RGB only)"))
        detail = detail[["network", "protocol", "top1", "top5", "mean_class", "n_videos", "fusion_weight",
                         "checkpoint_sha256", "flow"]]
        detail.columns = ["Network", "Protocol", "Top-1", "Top-5", "Mean class", "Test videos", "w (spatial)",
                          "Checkpoint (SHA-256)", "Flow"]
        lines += ["## Top-1, top-5 and mean class accuracy (%)", "", markdown_table(detail), ""]

    lines += ["## Settings", ""]
    lines.append(f"- dataset: `{cfg.dataset_name}` (`{_relative(cfg.data_root)}`), split {cfg.split}")
    if any_scores is not None:
        tested = len(np.unique(any_scores.label))
        lines.append(f"- classes: {len(any_scores.class_names)}"
                     + (f" labels (the dataset's numbering), {tested} of them in the test videos"
                        if tested < len(any_scores.class_names) else "") + "; test videos: " + ", ".join(
            f"{n} ({PROTOCOL_NAMES[p].lower()})" for p, n in n_test.items()))
        meta = any_scores.meta
        method = meta.get("flow_method", cfg.flow_method)
        origin = (meta.get("extraction") or {}).get("origin")      # "made elsewhere; method unknown"
        flow = f"{method} flow" if method else f"flow {origin}" if origin else "flow of unknown method"
        lines.append(f"- input: {meta.get('image_size', cfg.image_size)} px crops; flow stacks of "
                     f"L = {meta.get('stack_length', cfg.stack_length)} ({flow})")
        missing = {m for res in results.values() for s in res.values() for m in [s.meta.get("n_missing")] if m}
        if missing:
            lines.append(f"- **partial test split**: {max(missing)} test videos were left out (not on disk, "
                         f"extraction failed or too short; each is named in the score files' `excluded`)")
    for protocol, res in results.items():
        for stream in STREAMS:
            if stream in res:
                meta, n_inputs = res[stream].meta, res[stream].n_inputs
                inputs = f"{int(n_inputs.sum())} inputs ({n_inputs.min():.0f} to {n_inputs.max():.0f} per video)"
                cost = f"; {inputs} in {meta['seconds']:.0f} s" if meta.get("seconds") is not None else f"; {inputs}"
                lines.append(f"- {PROTOCOL_NAMES[protocol].lower()}, {stream}: {describe_protocol(meta)}, "
                             f"softmax averaged per video{cost}")
        if "weighted" in res:
            search = res["weighted"].meta.get("weight_search", {})
            n_val = res["weighted"].meta.get("n_val")
            lines.append(f"- fusion weight ({PROTOCOL_NAMES[protocol].lower()}): w = "
                         f"{res['weighted'].meta['weight']:.2f} for the spatial stream, chosen among "
                         f"{len(search.get('weight', []))} values on the validation videos"
                         + (f" ({n_val} videos)" if n_val else ""))
    initialisation = spatial_initialisation(cfg)
    if initialisation:
        lines.append(f"- spatial stream initialisation: {initialisation}")
    for stream in STREAMS:
        ckpts = {(res[stream].meta.get("checkpoint"), res[stream].meta.get("checkpoint_sha256"))
                 for res in results.values() if stream in res}
        history = load_history(cfg, stream)
        epochs = f"; the validated run: {len(history)} epochs trained" if history is not None else ""
        if ckpts:
            described = {c: tested_model(c) for c, _ in ckpts}
            lines.append(f"- {stream} model tested: " + "; ".join(
                f"`{_relative(c)}`" + (f", {described[c]}" if described[c] else "")
                + (f" (SHA-256 `{h}`)" if h else "")
                for c, h in sorted(ckpts, key=str)) + epochs)
    for name, value in (settings or {}).items():
        lines.append(f"- {name}: `{value!r}`")
    lines.append("")

    lines += ["## Reference figures (not this run)", "",
              "Top-1 accuracy (%) on HMDB51 reported elsewhere, for comparison with the table above.", ""]
    ref = REFERENCE_RESULTS.assign(one_frame=REFERENCE_RESULTS.one_frame.map(_cell),
                                   whole_video=REFERENCE_RESULTS.whole_video.map(_cell))
    ref.columns = ["Source", "Network", "One frame", "Whole video", "Notes"]
    lines += [markdown_table(ref), ""]

    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            lines += [f"![{name}]({figures_prefix}{Path(path).name})", ""]
    return "\n".join(lines)


def _relative(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(config_module.REPO_ROOT))
    except (ValueError, TypeError, OSError):
        return str(path)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(cfg: Config, settings: dict | None = None, *, figures: bool = True,
                 publish: bool = True) -> Path:
    """Write ``report/<run>/results.md|csv`` (+ figures); with ``publish``, copy both to ``report/``.

    ``settings``: extra settings to list (e.g. the notebook's parameters). Works with whatever
    score files exist (missing cells read NA). Returns the path of ``report/<run>/results.md``.
    """
    problems: list[str] = []
    results = collect_results(cfg, problems)
    experiments = collect_experiments(cfg, problems)
    for problem in dict.fromkeys(problems):
        print(f"left out of the table: {problem}")
    table = results_table(results)
    run_dir = Path(cfg.report_dir)
    remove_dead_temporaries(run_dir)
    remove_dead_temporaries(run_dir / "figures")
    made = write_figures(cfg, results) if figures else {}
    md_path, csv_path = run_dir / "results.md", run_dir / "results.csv"
    _write_text(md_path, report_markdown(cfg, table, results, settings, made, problems=problems,
                                         experiments=experiments))
    extra = experiment_rows(experiments)
    csv = (pd.concat([table, extra], ignore_index=True) if len(extra) else table).assign(
        dataset=cfg.dataset_name, split=cfg.split)
    _write_text(csv_path, csv.to_csv(index=False))
    if publish:
        top = Path(config_module.REPORT_DIR)
        _write_text(top / "results.md", report_markdown(cfg, table, results, settings, made,
                                                        figures_prefix=f"{cfg.run_name}/figures/", problems=problems,
                                                        experiments=experiments))
        shutil.copyfile(csv_path, top / "results.csv")
    return md_path
