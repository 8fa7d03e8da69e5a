"""Sentences about a run, made from its own numbers: what the notebooks say about their results.

Every function takes what a notebook has at hand (the index, a training history, score files of
:mod:`utils.evaluation`) and returns a :class:`Reading`, a string that a notebook shows as Markdown
when it is the last expression of a cell. Nothing here is a fixed claim about a result: a sentence
either counts something of this run or says what is true of every run. Readings about the demo's
two factors (colour, motion) start with "On the demo:"; ``tests/test_notebooks.py`` checks their
numbers against the score files of a quick run.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from utils.evaluation import Scores

FRAGILE_MARGIN = 0.03
"""A fused video won by less than this (probability of the true class minus the best other one)."""


class Reading(str):
    """A sentence (Markdown) about this run; shown as Markdown by Jupyter."""

    def _repr_markdown_(self) -> str:
        return str(self)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------------------
# 00: the dataset
# ----------------------------------------------------------------------------------------
def validation_share(index: pd.DataFrame, val_fraction: float) -> Reading:
    """How much of the training part went to validation, against ``val_fraction``."""
    from utils.dataset import source_group

    part = index[index["subset"].isin(["train", "val"])]
    n_val, n_all = int((part["subset"] == "val").sum()), len(part)
    sources = part.loc[part["subset"] == "val", "source"].map(source_group).nunique()
    share = n_val / n_all if n_all else 0.0
    return Reading(
        f"In this run: {n_val} of the {n_all} training clips ({_pct(share)}) went to validation, "
        f"{_count(int(sources), 'whole source')}; `val_fraction` asked for {_pct(val_fraction)}. "
        "Whole sources move, never single clips, so the share comes out near `val_fraction`, not at it "
        "(each class keeps at least one training source and, with two or more, gets at least one "
        "validation source).")


def split_counts(index: pd.DataFrame) -> Reading:
    """Training and test clips per class in each official split (ranges when classes differ)."""
    parts = []
    for split in (1, 2, 3):
        column = f"split{split}"
        if column not in index:
            continue
        counts = pd.crosstab(index["class_name"], index[column]).reindex(columns=["train", "test"], fill_value=0)
        def span(values) -> str:
            low, high = int(values.min()), int(values.max())
            return str(low) if low == high else f"{low}-{high}"
        parts.append(f"split {split}: {span(counts['train'])} training / {span(counts['test'])} test clips per class")
    return Reading("In this dataset: " + "; ".join(parts) + ". (On HMDB51 the official files give 70 / 30 in "
                   "every split.)")


def meta_tags(index: pd.DataFrame) -> Reading:
    """Shares of clips with a moving camera and of each quality, from the file names' tags."""
    known = index.dropna(subset=["camera_motion", "quality"])
    if known.empty:
        return Reading("In this dataset no file name carries HMDB51's meta tags.")
    n = len(known)
    moving = int((known["camera_motion"] == "moving").sum())
    quality = known["quality"].value_counts()
    shares = ", ".join(f"{int(quality.get(q, 0))} {q}" for q in ("good", "medium", "bad"))
    return Reading(f"In this dataset: {moving} of {n} clips ({_pct(moving / n)}) have a moving camera; "
                   f"quality: {shares}.")


# ----------------------------------------------------------------------------------------
# 02, 03: training
# ----------------------------------------------------------------------------------------
def training_summary(history: pd.DataFrame, stream: str) -> Reading:
    """Epochs per phase, the best validation epoch, and how training accuracy compares with validation."""
    if history is None or not len(history):
        return Reading(f"No training history for the {stream} stream yet.")
    phases = history["phase"].value_counts(sort=False) if "phase" in history else pd.Series({"train": len(history)})
    names = {"warmup": "warm-up", "finetune": "fine-tuning", "train": "training"}
    phase_text = ", ".join(f"{_count(int(n), 'epoch')} of {names.get(p, p)}" for p, n in phases.items())
    text = f"In this run: the {stream} stream trained {phase_text}"
    if "val_accuracy" in history and history["val_accuracy"].notna().any():
        best = history.loc[history["val_accuracy"].idxmax()]
        last = history.iloc[-1]
        gap = float(last["accuracy"]) - float(last["val_accuracy"])
        text += (f"; best validation accuracy {best['val_accuracy']:.3f} at epoch {int(best['epoch']) + 1}. "
                 f"In the last epoch training accuracy was {last['accuracy']:.3f} and validation accuracy "
                 f"{last['val_accuracy']:.3f}")
        if gap > 0.05:
            text += (f": training is {gap:.3f} above validation, the gap that grows when a network memorises "
                     "its training clips.")
        elif gap < -0.05:
            text += (f": validation is {-gap:.3f} above training, no sign of overfitting (training accuracy is "
                     "measured on augmented inputs with dropout on, validation on fixed centre crops).")
        else:
            text += ": about equal, no sign of overfitting yet."
    else:
        text += " (no validation)."
    return Reading(text)


def trainable_reading(phases: dict[str, dict], pretrained: bool) -> Reading:
    """What trains in each phase, from :func:`utils.models.trainable_summary` rows."""
    parts = []
    for name, row in phases.items():
        parts.append(f"{name}: {row['trainable_params']:,} trainable parameters, "
                     f"{row['bn_layers_training']} of {row['bn_layers']} BatchNorm layers in training mode")
    why = ("the backbone is pretrained, so its BatchNorm layers keep ImageNet's statistics (frozen, "
           "inference mode)" if pretrained else
           "the backbone starts from random weights, so there are no statistics to keep: its BatchNorm "
           "layers train (batch statistics) with everything else, and there is no head-only warm-up")
    return Reading("In this run: " + "; ".join(parts) + f". Here {why}.")


# ----------------------------------------------------------------------------------------
# 04, 05: scores of the test videos
# ----------------------------------------------------------------------------------------
def metrics_table(results: dict[str, Scores]) -> pd.DataFrame:
    """Top-1, top-5 and mean class accuracy (%) per network, and the number of videos (an integer)."""
    rows = {}
    for name, scores in results.items():
        m = scores.metrics()
        rows[name] = {"top-1 (%)": round(100 * m["top1"], 1), "top-5 (%)": round(100 * m["top5"], 1),
                      "mean class (%)": round(100 * m["mean_class"], 1), "videos": int(m["n_videos"])}
    return pd.DataFrame(rows).T.astype({"videos": int})


def fusion_margins(scores: Scores) -> np.ndarray:
    """Per video: probability of the true class minus the largest probability of another class
    (negative: the video is wrong)."""
    rows = np.arange(len(scores))
    true = scores.scores[rows, scores.label]
    others = scores.scores.copy()
    others[rows, scores.label] = -np.inf
    return true - others.max(axis=1)


def margins_reading(scores: Scores, name: str = "fusion (average)", threshold: float = FRAGILE_MARGIN) -> Reading:
    """How many videos the fused scores get right, and by how much."""
    margins = fusion_margins(scores)
    n, right = len(margins), int((margins > 0).sum())
    close = int(((margins > 0) & (margins < threshold)).sum())
    text = f"In this run: {name} gets {right} of {n} test videos right."
    if right:
        text += (f" The margin of a video (the true class's probability minus the best other class's) is at "
                 f"least {float(margins[margins > 0].min()):.3f} on the right ones, and {close} of them "
                 f"{'is' if close == 1 else 'are'} won by less than {threshold:.2f}")
        text += (": a small change in either stream (another seed, one more epoch) can flip those, so read "
                 "the accuracy as fragile, not as solved." if close else ".")
    if right < n:
        text += f" {n - right} are wrong (margin at most 0)."
    return Reading(text)


def factor_reading(results: dict[str, Scores]) -> Reading:
    """On the demo: how often each network gets the colour, the motion and both right."""
    from utils.demo_data import factor_accuracy

    parts = []
    for name, s in results.items():
        f = factor_accuracy(s.class_names, s.label, s.predicted)
        parts.append(f"{name}: colour {_pct(f['colour'])}, motion {_pct(f['motion'])}, both {_pct(f['both'])}")
    return Reading("On the demo: " + "; ".join(parts) + f" of the {len(next(iter(results.values())))} test videos "
                   "(chance for one factor: 33.3 %).")


def _factor_shares(scores: Scores, keep: str) -> tuple[list[str], np.ndarray]:
    """For each video, the shares of the three values of the *other* factor within the predicted value of
    ``keep`` ("motion": the colours of the predicted motion; "colour": the motions of the predicted colour)."""
    from utils.demo_data import APPEARANCES, MOTIONS, demo_class_factors

    others = list(APPEARANCES) if keep == "motion" else list(MOTIONS)
    shares = []
    for probs, predicted in zip(scores.scores, scores.predicted):
        colour, motion = demo_class_factors(scores.class_names[int(predicted)])
        names = [f"{o}_{motion}" for o in others] if keep == "motion" else [f"{colour}_{o}" for o in others]
        values = probs[[scores.class_names.index(n) for n in names]]
        shares.append(values / values.sum())
    return others, np.array(shares)


def colour_guess_reading(temporal: Scores) -> Reading:
    """On the demo: which colour the temporal stream picks for each motion, and how small its lean is."""
    from utils.demo_data import demo_class_factors

    colours, shares = _factor_shares(temporal, "motion")
    picked = [demo_class_factors(temporal.class_names[int(p)]) for p in temporal.predicted]
    by_motion = {}
    for (colour, motion), row in zip(picked, shares):
        by_motion.setdefault(motion, []).append((colour, row))
    parts = []
    for motion, items in by_motion.items():
        counts = Counter(c for c, _ in items)
        top, n_top = counts.most_common(1)[0]
        mean = np.mean([row for _, row in items], axis=0)
        spread = " / ".join(f"{c} {v:.2f}" for c, v in zip(colours, mean))
        parts.append(f"{motion}: {top} on {n_top} of {len(items)} (mean shares {spread})")
    lean = float(np.mean(shares.max(axis=1) - shares.min(axis=1)))
    return Reading(
        "On the demo: the temporal stream's colour, per predicted motion: " + "; ".join(parts) + ". "
        "Its input has no colour (flow is computed on grayscale frames, where the three colours of a motion "
        "are the same clip), so it cannot tell them apart; what it learns instead is a lean of its last "
        "layer, the same for every clip of a motion, here on average "
        f"{lean:.2f} between the largest and the smallest colour share. Top-1 turns that small lean into the "
        "same colour on (nearly) every clip of the motion, which is why its per-class accuracy is high on "
        "one class of each motion and near 0 on the other two. Which colour wins is an accident of the "
        "initialisation and the order of the batches, not of the data; averaging with the spatial stream, "
        "which does see the colour, outweighs it.")


def motion_guess_reading(spatial: Scores) -> Reading:
    """On the demo: how much of a colour's mass the spatial stream puts on its likeliest motion."""
    _, shares = _factor_shares(spatial, "colour")
    top = shares.max(axis=1)
    worst = int(top.argmax())
    return Reading(
        f"On the demo: the spatial stream cannot see the motion, so 1/3 for each motion of a colour is the "
        f"honest answer. Its likeliest motion gets on average {top.mean():.2f} of the colour's mass, at most "
        f"{top[worst]:.2f} (on {spatial.video[worst]}). Whatever leans away from 1/3 pulls the average of the "
        "two streams towards a motion the frame cannot show.")


def protocol_reading(n_frames: int, n_flows: int, start: int, stack_length: int) -> Reading:
    """Where the one-frame inputs of a clip sit."""
    return Reading(
        f"In this run, for a clip of {n_frames} frames ({n_flows} flows): the middle stack is flows {start} to "
        f"{start + stack_length - 1}, and the spatial input is frame {start}, the first frame of that stack. "
        f"On a clip not much longer than L + 1 = {stack_length + 1} frames that frame sits near the start; on "
        "a long clip near the middle.")


def whole_video_reading(results: dict[str, Scores], segments: int | None, crops: int) -> Reading:
    """What "whole video" meant in this run: inputs per clip of each stream."""
    parts = []
    every = True
    for stream in ("spatial", "temporal"):
        if stream not in results:
            continue
        n = results[stream].n_inputs // max(1, crops)
        parts.append(f"{stream} {int(n.min())}-{int(n.max())} {'frames' if stream == 'spatial' else 'stacks'} per "
                     f"clip ({int(results[stream].n_inputs.sum())} inputs over {len(n)} clips)")
        every &= segments is None or int(n.max()) < segments
    what = ("every frame and every stack start of each clip: its clips are shorter than the protocol's "
            f"{segments} positions" if every and segments else f"{segments or 'all'} positions per clip")
    return Reading(f"In this run, \"whole video\" is {what}; " + ", ".join(parts)
                   + f", {crops} crop(s) each.")


def protocol_change_reading(one_frame: dict[str, Scores], whole_video: dict[str, Scores]) -> Reading:
    """Top-1 of each network under both protocols, in videos."""
    parts = []
    for name in whole_video:
        if name not in one_frame:
            continue
        a = int((one_frame[name].predicted == one_frame[name].label).sum())
        b = int((whole_video[name].predicted == whole_video[name].label).sum())
        n = len(whole_video[name])
        parts.append(f"{name} {a} -> {b} of {n} ({b - a:+d})")
    return Reading("In this run, videos right with one frame -> the whole video: " + "; ".join(parts) + ".")


# ----------------------------------------------------------------------------------------
# 01: flow on the demo
# ----------------------------------------------------------------------------------------
def demo_speed_reading(video_stem: str, measured: np.ndarray) -> Reading:
    """On the demo: the speed the generator gave this clip's square against the flow measured on one pair."""
    from utils.demo_data import clip_spec, speed_range_px

    spec = clip_spec(video_stem)
    low, high = speed_range_px((spec.width, spec.height))
    true = float(np.hypot(*spec.velocity))
    moving = measured[measured > 0.5 * true]
    median = float(np.median(moving)) if moving.size else 0.0
    return Reading(
        f"On the demo: the generator moves each square {low:.2f}-{high:.2f} px per frame; this clip's moves "
        f"{true:.2f} px per frame. The flow of the pair above reaches {float(measured.max()):.2f} px/frame at most, "
        f"with a median of {median:.2f} over the {moving.size} pixels it sees moving by more than half that: "
        "a method estimates motion, it does not read it off, and a small square on a "
        "48-pixel frame is a hard case.")


def edge_reading(specs) -> Reading:
    """On the demo: how many clips have their square wrap around a frame edge."""
    from utils.demo_data import crosses_edge

    n = sum(crosses_edge(spec) for spec in specs)
    return Reading(
        f"On the demo: {n} of {len(specs)} clips have their square cross a frame edge at some point. The "
        "generator draws the square on a torus (OpenCV's `BORDER_WRAP`): what leaves the frame on one side "
        "comes back on the other, so every frame, and every training crop, shows the colour. The price is "
        "motion no camera films: at the edge, optical flow sees part of the square vanish and reappear.")
