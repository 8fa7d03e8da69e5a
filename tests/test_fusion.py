"""Late fusion with a choice (utils.fusion): the learned fusion is fitted on validation scores only.

Synthetic scores in the demo's structure: 9 classes = 3 colours x 3 motions; the "spatial" stream puts
its mass on the three classes of the right colour, the "temporal" one on the three of the right motion,
each with some noise, so that neither alone is right more than about a third of the time and the two
together can be.
"""
from __future__ import annotations

import numpy as np
import pytest

from utils import evaluation as ev
from utils import fusion

K = 9
CLASSES = [f"{c}_{m}" for c in ("red", "green", "blue") for m in ("up", "down", "sideways")]
FAST = dict(epochs=60, hidden=16)


def stream_scores(n: int, prefix: str, seed: int) -> tuple[ev.Scores, ev.Scores]:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, K, n)
    spatial, temporal = np.full((n, K), 0.02), np.full((n, K), 0.02)
    for i, y in enumerate(label):
        colour, motion = divmod(int(y), 3)
        spatial[i, 3 * colour:3 * colour + 3] += 0.3 + 0.1 * rng.random(3)
        temporal[i, motion::3] += 0.3 + 0.1 * rng.random(3)
    videos = [f"{prefix}{i:03d}" for i in range(n)]
    return (ev.Scores(videos, label, spatial / spatial.sum(1, keepdims=True), CLASSES, meta={"checkpoint": "s"}),
            ev.Scores(videos, label, temporal / temporal.sum(1, keepdims=True), CLASSES, meta={"checkpoint": "t"}))


def test_learned_fusion_is_never_fitted_on_test_videos():
    spatial, temporal = stream_scores(40, "test", 0)
    spatial_val, temporal_val = stream_scores(30, "val", 1)
    # validation scores that include a test video are refused, whichever way the fusion is asked for
    leaky = [ev.Scores(np.r_[v.video[:-1], spatial.video[:1]], v.label, v.scores, CLASSES) for v in (spatial_val, temporal_val)]
    for call in (lambda: fusion.fuse(spatial, temporal, "learned", spatial_val=leaky[0], temporal_val=leaky[1], **FAST),
                 lambda: fusion.train_learned_fusion(*leaky, apply_to=spatial, **FAST),
                 lambda: fusion.fuse(spatial, temporal, "weighted", spatial_val=leaky[0], temporal_val=leaky[1])):
        with pytest.raises(ValueError, match="test000"):
            call()
    # a fitted fusion refuses to score the videos it was fitted on
    learned = fusion.train_learned_fusion(spatial_val, temporal_val, apply_to=spatial, **FAST)
    assert learned.videos == spatial_val.video.tolist()
    with pytest.raises(ValueError, match="fitted on 30"):
        learned(spatial_val, temporal_val)
    # nothing of the test videos enters the fit: not their labels, and no video's scores change another's
    fused = fusion.fuse(spatial, temporal, "learned", spatial_val=spatial_val, temporal_val=temporal_val, **FAST)
    order = np.random.default_rng(2).permutation(len(spatial))            # other labels, another first video
    changed = [ev.Scores(s.video, s.label[order], np.r_[s.scores[-1:], s.scores[1:]], CLASSES) for s in (spatial, temporal)]
    again = fusion.fuse(*changed, "learned", spatial_val=spatial_val, temporal_val=temporal_val, **FAST)
    np.testing.assert_array_equal(again.scores[1:], fused.scores[1:])
    np.testing.assert_array_equal(again.scores[0], fused.scores[-1])
    assert fused.meta["fusion"] == "learned" and fused.meta["n_val"] == 30
    assert fused.meta["fitted_on"] == fusion.videos_fingerprint(spatial_val.video)


def test_learned_fusion_learns_with_enough_validation_videos_and_can_lose_with_few():
    spatial, temporal = stream_scores(60, "test", 3)
    plenty = stream_scores(400, "val", 4)
    single = [s.scores.argmax(1) for s in (spatial, temporal)]
    assert max((p == spatial.label).mean() for p in single) < 0.6          # neither stream alone solves it
    learned = fusion.fuse(spatial, temporal, "learned", spatial_val=plenty[0], temporal_val=plenty[1], epochs=60)
    assert learned.metrics()["top1"] >= 0.95
    assert fusion.fuse(spatial, temporal, "average").metrics()["top1"] >= 0.95
    few = fusion.take_per_class(*plenty, 1, seed=0)
    assert len(few[0]) == K and sorted(few[0].label) == list(range(K))
    np.testing.assert_array_equal(few[0].video, few[1].video)
    assert set(few[0].video) <= set(plenty[0].video)


def test_fuse_choices_match_the_evaluation_fusions():
    spatial, temporal = stream_scores(20, "test", 5)
    spatial_val, temporal_val = stream_scores(20, "val", 6)
    np.testing.assert_array_equal(fusion.fuse(spatial, temporal).scores, ev.average_fusion(spatial, temporal).scores)
    weighted = fusion.fuse(spatial, temporal, "weighted", spatial_val=spatial_val, temporal_val=temporal_val)
    weight, _ = ev.choose_fusion_weight(spatial_val, temporal_val)
    assert weighted.meta["weight"] == weight and weighted.meta["n_val"] == 20
    np.testing.assert_allclose(weighted.scores, ev.weighted_fusion(spatial, temporal, weight).scores)
    for name in ("weighted", "learned"):
        with pytest.raises(ValueError, match="validation"):
            fusion.fuse(spatial, temporal, name)
    with pytest.raises(ValueError, match="fusion must be one of"):
        fusion.fuse(spatial, temporal, "max")
    with pytest.raises(KeyError, match="unknown"):
        fusion.train_learned_fusion(spatial_val, temporal_val, hiden=3)
    assert fusion.fused_scores_name("learned") == "fusion_learned"
    assert fusion.build_fusion_model(K, hidden=0).count_params() == 2 * K * K + K   # linear: 2K x K + K
