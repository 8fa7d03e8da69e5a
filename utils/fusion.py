"""Late fusion with a choice: the average, the validation-weighted average, or a learned network.

:func:`fuse` applies ``fusion="average"|"weighted"|"learned"`` to two streams' per-video test scores:

* ``"average"`` - the two-stream paper's fusion (:func:`utils.evaluation.average_fusion`): nothing to fit;
* ``"weighted"`` - ``w * spatial + (1 - w) * temporal`` with ``w`` chosen on the validation videos
  (:func:`utils.evaluation.choose_fusion_weight`): one number fitted;
* ``"learned"`` - a small network ("FuseNet", after an earlier project behind this repository) that takes
  the two softmax vectors of a video, concatenated (``2K`` numbers for ``K`` classes), and outputs a
  softmax over the classes: one hidden layer of ``hidden`` ReLU units with dropout (or, with
  ``hidden=0``, a linear layer), fitted on the **validation videos' scores** only. The paper's nearest
  relative is its SVM on the stacked softmax scores (Simonyan & Zisserman 2014, 59.4 % on HMDB51 against
  58.0 % for the average).

The learned fusion never sees a test video: it is fitted on ``..._val.npz`` scores (the validation
carve-out, which training never used to fit weights), and :func:`train_learned_fusion` refuses
validation scores that share a video with the scores it will be applied to. Why it may still lose to
the average: it fits ``(2K x hidden) + (hidden x K)`` numbers (about 10,000 for HMDB51's 51 classes)
on a few hundred validation videos, where the average fits none; and the streams' scores on videos
they were not trained on are what it must learn from, so there are only as many examples as
validation videos. Notebook 08 measures it on the same test scores as the other two.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils.evaluation import Scores, average_fusion, check_aligned, choose_fusion_weight, weighted_fusion

FUSIONS = ("average", "weighted", "learned")
LEARNED_DEFAULTS: dict[str, Any] = dict(
    hidden=64,            # ReLU units of the hidden layer (0: a linear layer on the 2K scores)
    dropout=0.5,          # on the hidden layer
    l2=1e-3,              # L2 on the kernels (Keras' kernel_regularizer)
    epochs=300,           # full passes over the validation videos
    batch_size=32,
    learning_rate=1e-3,   # Adam
    seed=0,
)
"""Settings of the learned fusion (``fuse(..., fusion="learned", **options)`` overrides them). No paper gives
a recipe for such a network (the earlier project's FuseNet was not published; the two-stream paper's SVM is
linear, ``hidden=0`` here): small and regularised, for a few hundred validation videos. No early stopping:
there are no videos left to stop on (the validation videos are its training set)."""


def fused_scores_name(fusion: str) -> str:
    """The score-file name (``scores_path(cfg, name, protocol)``) of a fusion: ``"fusion_learned"``, ..."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}")
    return f"fusion_{fusion}"


def fusion_inputs(spatial: Scores, temporal: Scores) -> np.ndarray:
    """The learned fusion's input per video: the two softmax vectors side by side, ``float32[n, 2K]``."""
    check_aligned(spatial, temporal)
    return np.concatenate([spatial.scores, temporal.scores], axis=1).astype(np.float32)


def check_disjoint(fitted_on: Scores, applied_to: Scores) -> None:
    """Raise, naming them, if videos the fusion is fitted on are also videos it will score (test videos)."""
    shared = sorted(set(fitted_on.video.tolist()) & set(applied_to.video.tolist()))
    if shared:
        raise ValueError(f"the learned fusion would be fitted on {len(shared)} of the videos it is applied to "
                         f"(e.g. {shared[:5]}): fit it on validation scores (..._val.npz), never on test videos")


def take_per_class(spatial: Scores, temporal: Scores, n: int, seed: int = 0) -> tuple[Scores, Scores]:
    """At most ``n`` videos of each class, the same ones from both streams' scores (drawn with ``seed``,
    kept in their order): to fit a fusion on fewer validation videos."""
    check_aligned(spatial, temporal)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(spatial.label == label),
                                              size=min(n, int((spatial.label == label).sum())), replace=False)
                                   for label in np.unique(spatial.label)]))
    return tuple(Scores(s.video[keep], s.label[keep], s.scores[keep], s.class_names, s.n_inputs[keep], dict(s.meta))
                 for s in (spatial, temporal))


def build_fusion_model(num_classes: int, n_streams: int = 2, hidden: int = 64, dropout: float = 0.5,
                       l2: float = 1e-3):
    """The learned fusion network: ``n_streams * K`` softmax scores -> [Dense(hidden, relu) -> Dropout] ->
    Dense(K, softmax). ``hidden=0`` leaves out the hidden layer (multinomial logistic regression)."""
    import keras
    from keras import layers

    regulariser = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((n_streams * num_classes,), name="stream_scores")
    x = inputs
    if hidden:
        x = layers.Dense(int(hidden), activation="relu", kernel_regularizer=regulariser, name="hidden")(x)
        if dropout:
            x = layers.Dropout(dropout, name="hidden_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=regulariser, dtype="float32",
                           name="fused")(x)
    return keras.Model(inputs, outputs, name=f"fusion_net_h{int(hidden)}")


@dataclass
class LearnedFusion:
    """A fitted fusion network and what it was fitted on (the validation videos, by name)."""

    model: Any
    class_names: list[str]
    videos: list[str]                              # the videos it was fitted on
    settings: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)    # loss and accuracy on those videos after fitting

    def __call__(self, spatial: Scores, temporal: Scores) -> Scores:
        """Fused scores of videos it was not fitted on (an error names any overlap)."""
        if list(spatial.class_names) != self.class_names:
            raise ValueError("the scores use another class list than the learned fusion was fitted on")
        shared = sorted(set(self.videos) & set(spatial.video.tolist()))
        if shared:
            raise ValueError(f"the learned fusion was fitted on {len(shared)} of these videos (e.g. {shared[:5]}); "
                             f"apply it to test videos only")
        fused = _predict(self.model, fusion_inputs(spatial, temporal))
        meta = {"fusion": "learned", **self.settings, "n_val": len(self.videos),
                "fitted_on": videos_fingerprint(self.videos),
                "spatial": spatial.meta.get("checkpoint"), "temporal": temporal.meta.get("checkpoint")}
        return Scores(spatial.video, spatial.label, fused, spatial.class_names,
                      spatial.n_inputs + temporal.n_inputs, meta)


def videos_fingerprint(videos) -> str:
    """A short hash of a set of video names (the learned fusion's ``meta["fitted_on"]``)."""
    return hashlib.sha1("\n".join(sorted(map(str, videos))).encode()).hexdigest()[:12]


def train_learned_fusion(spatial_val: Scores, temporal_val: Scores, *, apply_to: Scores | None = None,
                         **options) -> LearnedFusion:
    """Fit the fusion network on two streams' **validation** scores (the same videos, in the same order).

    ``apply_to``: the scores it will be applied to (the test videos); sharing a video with them is an
    error. ``options`` override :data:`LEARNED_DEFAULTS`. Deterministic for a given ``seed``
    (``keras.utils.set_random_seed``).
    """
    import keras

    unknown = sorted(set(options) - set(LEARNED_DEFAULTS))
    if unknown:
        raise KeyError(f"unknown learned-fusion setting(s) {unknown}; known: {sorted(LEARNED_DEFAULTS)}")
    settings = {**LEARNED_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if apply_to is not None:
        check_disjoint(spatial_val, apply_to)
    x = fusion_inputs(spatial_val, temporal_val)
    y = spatial_val.label
    if len(x) == 0:
        raise ValueError("no validation videos to fit the learned fusion on")
    keras.utils.set_random_seed(int(settings["seed"]))
    model = build_fusion_model(len(spatial_val.class_names), 2, settings["hidden"], settings["dropout"],
                               settings["l2"])
    model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # All epochs in one call of fit (one shuffled copy of the videos per epoch): Keras' fixed cost per
    # epoch is larger than the work of one epoch here (a few hundred videos, 2K numbers each).
    order = np.concatenate([np.random.default_rng([int(settings["seed"]), e]).permutation(len(x))
                            for e in range(int(settings["epochs"]))])
    model.fit(x[order], y[order], epochs=1, batch_size=int(settings["batch_size"]), shuffle=False, verbose=0)
    probs = _predict(model, x)
    return LearnedFusion(model, list(spatial_val.class_names), spatial_val.video.tolist(), settings,
                         {"fitted_loss": float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()),
                          "fitted_accuracy": float((probs.argmax(axis=1) == y).mean())})


def _predict(model, x: np.ndarray) -> np.ndarray:
    """The network's softmax on ``x`` in one call (no traced predict function for a few hundred rows)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float32)


def fuse(spatial: Scores, temporal: Scores, fusion: str = "average", *, spatial_val: Scores | None = None,
         temporal_val: Scores | None = None, **options) -> Scores:
    """Fuse two streams' test scores with ``fusion``: ``"average"``, ``"weighted"`` (``w`` chosen on the
    validation scores) or ``"learned"`` (a network fitted on the validation scores; ``options`` as
    :data:`LEARNED_DEFAULTS`). The last two need ``spatial_val`` and ``temporal_val``; validation scores
    that share a video with the test scores are an error."""
    fused_scores_name(fusion)          # checks the choice
    check_aligned(spatial, temporal)
    if fusion == "average":
        return average_fusion(spatial, temporal)
    if spatial_val is None or temporal_val is None:
        raise ValueError(f"fusion={fusion!r} is fitted on validation scores: pass spatial_val and temporal_val "
                         f"(the ..._val.npz score files of notebooks 04/05)")
    check_disjoint(spatial_val, spatial)
    if fusion == "weighted":
        weight, search = choose_fusion_weight(spatial_val, temporal_val)
        fused = weighted_fusion(spatial, temporal, weight)
        fused.meta.update(n_val=len(spatial_val), weight_search=search.to_dict(orient="list"))
        return fused
    return train_learned_fusion(spatial_val, temporal_val, apply_to=spatial, **options)(spatial, temporal)
