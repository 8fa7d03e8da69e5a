"""Tests for utils/tvl1_keras.py: batched Dual TV-L1 in Keras ops, checked against OpenCV.

The building blocks are compared with the OpenCV functions they replace; the whole solver is
compared with ``cv2.optflow.DualTVL1OpticalFlow`` on a 64x48 version of a Middlebury pair (small
enough to compile and run in seconds on a CPU). Full-size parity is measured by
``python -m utils.tvl1_keras`` (see the module docstring), not here.
"""
import cv2
import numpy as np
import pytest
from conftest import TEST_DATA

from utils import tvl1_keras as T

PAIR_DIR = TEST_DATA / "flow_gt" / "mb_RubberWhale"
SIZE = (64, 48)                     # width, height of the CI pair
TINY_SIZE = (32, 24)                # two pyramid levels: for the configurations compiled only for one test
SHIFT = (1.5, -0.75)                # known translation of the synthetic pair


def _read_small(name: str) -> np.ndarray:
    image = cv2.imread(str(PAIR_DIR / name), cv2.IMREAD_GRAYSCALE)
    assert image is not None, f"cannot read {PAIR_DIR / name}"
    return cv2.resize(image, SIZE, interpolation=cv2.INTER_AREA)


def _opencv(frame0, frame1, **params):
    return T.opencv_flow(frame0, frame1, T.TVL1Params(**params))


@pytest.fixture(scope="module")
def small_pairs():
    """Three 64x48 pairs: RubberWhale, the same backwards, and frame 1 moved by SHIFT."""
    frame0, frame1 = _read_small("frame1.png"), _read_small("frame2.png")
    move = np.float32([[1, 0, SHIFT[0]], [0, 1, SHIFT[1]]])
    shifted = cv2.warpAffine(frame0, move, SIZE, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return np.stack([frame0, frame1, frame0]), np.stack([frame1, frame0, shifted])


@pytest.fixture(scope="module")
def flow_method():
    # Two slots for three pairs: the third pair waits in the queue and takes a freed slot.
    # jit_compile="auto": XLA with JAX; plain graph mode with TensorFlow on a CPU (compiles faster).
    return T.TVL1Keras(slots=2, pairs_per_slot=2)


@pytest.fixture(scope="module")
def batched_flows(flow_method, small_pairs):
    return flow_method.pairs(*small_pairs)


# --- building blocks against OpenCV --------------------------------------------------------------
@pytest.mark.backend_smoke
def test_pyramid_sizes_follow_opencv():
    for height, width in [(240, 320), (388, 584), (436, 1024), (48, 64), (20, 30)]:
        expected, image = [(height, width)], np.zeros((height, width), np.float32)
        for _ in range(4):
            image = cv2.resize(image, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
            if min(image.shape) < 16:                        # OpenCV drops levels under 16 px
                break
            expected.append(image.shape)
        assert T.pyramid_sizes(height, width) == expected


@pytest.mark.backend_smoke
def test_resize_linear_matches_opencv():
    rng = np.random.default_rng(0)
    images = (rng.random((2, 37, 53)) * 255).astype(np.float32)
    down = cv2.resize(images[1], None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    ours = np.asarray(T.resize_linear(images, down.shape, (1 / 0.8, 1 / 0.8)))[1]
    np.testing.assert_allclose(ours, down, atol=1e-3)
    up = cv2.resize(images[0], (71, 44), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(np.asarray(T.resize_linear(images, (44, 71)))[0], up, atol=1e-3)


@pytest.mark.backend_smoke
def test_remap_cubic_matches_opencv_with_zero_outside():
    rng = np.random.default_rng(1)
    height, width = 23, 31
    images = [(rng.random((2, height, width)) * 255).astype(np.float32) for _ in range(2)]
    flow_x = rng.normal(0, 4, (2, height, width)).astype(np.float32)
    flow_y = rng.normal(0, 4, (2, height, width)).astype(np.float32)
    flow_x[0, 0, 0], flow_y[1, 5, 5] = 500.0, -80.0                       # far outside: 0
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    warped = T.remap_cubic(images, flow_x, flow_y)
    for image, ours in zip(images, warped):
        for b in range(2):
            expected = cv2.remap(image[b], xs + flow_x[b], ys + flow_y[b], cv2.INTER_CUBIC,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            np.testing.assert_allclose(np.asarray(ours)[b], expected, atol=2e-3)
    assert np.asarray(warped[0])[0, 0, 0] == 0.0


@pytest.mark.backend_smoke
@pytest.mark.parametrize("ksize", [3, 5])
def test_median_blur_is_exactly_opencvs(ksize):
    rng = np.random.default_rng(2)
    images = rng.normal(0, 1, (2, 19, 26)).astype(np.float32)
    images[1] = np.round(images[1])                                        # many ties
    ours = np.asarray(T.median_blur(images, ksize))
    for b in range(2):
        np.testing.assert_array_equal(ours[b], cv2.medianBlur(images[b], ksize))


@pytest.mark.backend_smoke
def test_finite_differences_follow_opencv_borders():
    rng = np.random.default_rng(3)
    x = rng.random((1, 5, 6)).astype(np.float32)
    dx, dy = (np.asarray(a)[0] for a in T.centered_gradient(x))
    padded = np.pad(x[0], 1, mode="edge")                                  # border replicated
    np.testing.assert_allclose(dx, 0.5 * (padded[1:-1, 2:] - padded[1:-1, :-2]), atol=1e-6)
    np.testing.assert_allclose(dy, 0.5 * (padded[2:, 1:-1] - padded[:-2, 1:-1]), atol=1e-6)
    fx, fy = (np.asarray(a)[0] for a in T.forward_gradient(x))
    np.testing.assert_allclose(fx[:, :-1], np.diff(x[0], axis=1), atol=1e-6)
    np.testing.assert_allclose(fy[:-1], np.diff(x[0], axis=0), atol=1e-6)
    assert not fx[:, -1].any() and not fy[-1].any()                        # 0 in the last column/row
    p1, p2 = rng.random((2, 1, 5, 6)).astype(np.float32)
    div = np.asarray(T.divergence(p1, p2))[0]
    zero_outside = lambda p: np.pad(p[0], ((1, 0), (1, 0)))               # noqa: E731
    expected = np.diff(zero_outside(p1)[1:], axis=1) + np.diff(zero_outside(p2)[:, 1:], axis=0)
    np.testing.assert_allclose(div, expected, atol=1e-6)


@pytest.mark.backend_smoke
def test_solver_matches_opencv_step_for_step():
    """A fixed iteration count (epsilon 0, so no stopping test): pyramid (32x24 keeps 2 levels),
    warps, medians, thresholding and dual steps must give OpenCV's numbers, not just similar flow."""
    frame0, frame1 = (cv2.resize(_read_small(n), (32, 24), interpolation=cv2.INTER_AREA)
                      for n in ("frame1.png", "frame2.png"))
    params = dict(warps=2, epsilon=0.0, inner_iterations=10, outer_iterations=2)
    expected = _opencv(frame0, frame1, **params)
    ours = np.asarray(T.tvl1_flow_batch(frame0[None], frame1[None], params=T.TVL1Params(**params)))[0]
    assert len(T.pyramid_sizes(24, 32)) == 2
    assert np.abs(ours - expected).max() < 1e-3


# --- the whole solver ---------------------------------------------------------------------------
def test_batched_flow_matches_opencv(small_pairs, batched_flows):
    frames0, frames1 = small_pairs
    assert batched_flows.shape == (3, SIZE[1], SIZE[0], 2) and batched_flows.dtype == np.float32
    for ours, frame0, frame1 in zip(batched_flows, frames0, frames1):
        expected = _opencv(frame0, frame1)
        # OpenCV's per-pair stopping test (sum of squared updates <= epsilon^2 * pixels) makes the
        # last bits of float arithmetic matter: a warp may stop one iteration apart. Full-size
        # Middlebury pairs agree to ~0.002 px on average; 64x48 pairs to ~0.01 px.
        difference = np.linalg.norm(ours - expected, axis=-1)
        assert np.abs(ours - expected).mean() < 0.03
        assert np.percentile(difference, 95) < 0.15


def test_batched_flow_recovers_a_known_shift(batched_flows):
    interior = batched_flows[2, 8:-8, 8:-8]
    np.testing.assert_allclose(np.median(interior.reshape(-1, 2), axis=0), SHIFT, atol=0.1)


def test_pairs_do_not_depend_on_their_batch_neighbours(flow_method, small_pairs, batched_flows):
    order = [2, 0, 1]
    permuted = flow_method.pairs(small_pairs[0][order], small_pairs[1][order])
    np.testing.assert_allclose(permuted, batched_flows[order], atol=1e-4)
    assert len(flow_method.last_steps) == len(T.pyramid_sizes(SIZE[1], SIZE[0]))


def test_video_interface_returns_one_flow_per_frame_pair(flow_method, small_pairs, batched_flows):
    video = np.stack([small_pairs[0][0], small_pairs[1][0], small_pairs[0][0], small_pairs[1][0]])
    flows = flow_method(video)                             # 3 pairs: the program compiled above
    assert flows.shape == (3, SIZE[1], SIZE[0], 2)
    np.testing.assert_allclose(flows[0], batched_flows[0], atol=1e-4)
    np.testing.assert_allclose(flows[1], batched_flows[1], atol=1e-4)


def test_registry_factory_and_input_errors():
    flow = T.make_video_flow(slots=1)
    assert isinstance(flow, T.TVL1Keras) and T.make_tvl1_keras is T.make_video_flow
    assert flow.device.startswith(f"{T.keras.backend.backend()} on ")
    with pytest.raises(ValueError, match="uint8"):
        flow(np.zeros((3, 24, 32), np.float32))
    with pytest.raises(ValueError, match="T>=2"):
        flow(np.zeros((1, 24, 32), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        flow.pairs(np.zeros((2, 24, 32), np.uint8), np.zeros((2, 24, 30), np.uint8))
    with pytest.raises(ValueError, match="chunk"):
        T.TVL1Keras(chunk=7)
    with pytest.raises(NotImplementedError, match="gamma"):
        T.TVL1Keras(gamma=0.1)
    assert T.TVL1Params().opencv_kwargs()["innnerIterations"] == 30     # OpenCV's spelling


def test_full_calls_plan_one_program_set_and_give_the_same_flow(flow_method, small_pairs, batched_flows):
    """``full_call``: one call size per frame size (what extraction and the benchmark use); the
    padding pairs never enter a slot, so the flow of a lone pair is the one computed in a batch."""
    assert flow_method.plan(SIZE[1], SIZE[0], 1) == (1, 1)                     # adaptive: padded to 1
    assert flow_method.plan(SIZE[1], SIZE[0], 1, full_call=True) == (4, 2)     # 2 slots x 2 pairs per slot
    lone = flow_method.pairs(small_pairs[0][1:2], small_pairs[1][1:2], full_call=True)   # the compiled 4-call
    np.testing.assert_allclose(lone[0], batched_flows[1], atol=1e-4)


# --- no host round trip inside a level, the queue, the device's share of the work ------------------
def _primitive_counts(jaxpr, counts):
    """How often each primitive occurs in a jaxpr, its sub-jaxprs (loop bodies, branches) included."""
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    _primitive_counts(sub, counts)
    return counts


@pytest.mark.backend_smoke
@pytest.mark.skipif(T.keras.backend.backend() != "jax", reason="inspects the JAX program (test_backends runs it)")
@pytest.mark.parametrize("check_every", [1, 3])
def test_a_level_branches_on_no_device_value(check_every):
    """All levels in one program: per level one data-dependent loop ("work left?"), no ``cond``
    (each is a device-to-host copy per scheduling step under XLA on a GPU); the chunk's loop and
    the ``check_every`` steps between two tests have fixed trip counts (``scan``)."""
    import jax
    frames = np.zeros((2, 24, 32), np.uint8)
    jaxpr = jax.make_jaxpr(lambda a, b: T.flow_pyramid(a, b, slots=2, chunk=2, check_every=check_every)[0])(
        frames, frames)
    counts = _primitive_counts(jaxpr.jaxpr, {})
    assert counts.get("cond", 0) == 0
    assert counts.get("while", 0) == len(T.pyramid_sizes(24, 32)) == 2
    # the CPU's option: one cond per step that skips an idle service
    jaxpr = jax.make_jaxpr(lambda a, b: T.flow_pyramid(a, b, slots=2, chunk=2, check_every=check_every,
                                                       skip_idle_service=True)[0])(frames, frames)
    assert _primitive_counts(jaxpr.jaxpr, {}).get("cond", 0) == 2


@pytest.fixture(scope="module")
def tiny_pairs(small_pairs):
    """The three pairs at 32x24 (two pyramid levels: each new configuration compiles in seconds)."""
    return tuple(np.stack([cv2.resize(f, TINY_SIZE, interpolation=cv2.INTER_AREA) for f in frames])
                 for frames in small_pairs)


@pytest.fixture(scope="module")
def tiny_reference(tiny_pairs):
    """The default configuration on the tiny pairs: (flow, steps per level, iterations per level)."""
    flow = T.TVL1Keras(slots=2, pairs_per_slot=2)
    return flow.pairs(*tiny_pairs), flow.last_steps, flow.last_iterations


def test_check_every_changes_the_step_count_only(tiny_pairs, tiny_reference):
    flows, steps, iterations = tiny_reference
    sparse = T.TVL1Keras(slots=2, pairs_per_slot=2, check_every=4)
    np.testing.assert_allclose(sparse.pairs(*tiny_pairs), flows, atol=1e-4)
    np.testing.assert_array_equal(sparse.last_iterations, iterations)
    for level_steps, reference in zip(sparse.last_steps, steps):
        assert level_steps % 4 == 0 and reference <= level_steps < reference + 4


@pytest.mark.backend_smoke
def test_longest_first_orders_by_coarser_iterations_padding_last():
    counts = np.array([5, 9, 9, 0, 7], np.int32)
    valid = np.array([True, True, True, True, False])
    np.testing.assert_array_equal(np.asarray(T.longest_first(counts, valid)), [1, 2, 0, 3, 4])


def test_finer_levels_take_the_slowest_pairs_first(flow_method, small_pairs):
    """``last_starts``: the step each pair entered a slot. Two slots, one served per step, three
    pairs: at each finer level the pairs enter in the order of their coarser iteration counts."""
    flow_method.pairs(*small_pairs)
    iterations, starts = flow_method.last_iterations, flow_method.last_starts
    assert iterations.shape == starts.shape == (len(T.pyramid_sizes(SIZE[1], SIZE[0])), 3)
    assert (iterations > 0).all() and (np.diff(starts[0]) > 0).all()       # the coarsest level: in order
    reordered = False
    for level in range(1, len(iterations)):
        order = np.lexsort((np.arange(3), -iterations[level - 1]))      # most coarse iterations first
        assert (np.diff(starts[level][order]) > 0).all(), (iterations[level - 1], starts[level])
        reordered |= list(order) != [0, 1, 2]
    assert reordered, "the fixture's pairs never change order: the test would not see the queue"


def test_slots_are_not_capped_on_a_gpu(monkeypatch):
    monkeypatch.setattr(T, "device_memory_bytes", lambda: (80 * 2**30, "gpu"))
    per_slot = 4 * 240 * 320 * (T._IMAGES_PER_SLOT + 4 * T._IMAGES_PER_PAIR)
    assert T.choose_slots(240, 320) == 40 * 2**30 // per_slot > 64
    assert T.choose_slots(240, 320, max_slots=100) == 100
    monkeypatch.setattr(T, "device_memory_bytes", lambda: (20 * 2**30, "cpu"))
    assert T.choose_slots(240, 320) == 4


@pytest.mark.backend_smoke
def test_device_quantisation_gives_quantize_flows_bytes():
    from utils.flow import quantize_flow
    rng = np.random.default_rng(4)
    flow = np.concatenate([rng.normal(0, 12, 4000), np.linspace(-21, 21, 4001)]).astype(np.float32)
    flow = np.concatenate([flow, (np.arange(-128, 128) + 0.5) / np.float32(6.375) - 20]).astype(np.float32)  # ties
    np.testing.assert_array_equal(np.asarray(T.quantize_flow_ops(flow, 20.0)), quantize_flow(flow, 20.0))
    np.testing.assert_array_equal(np.asarray(T.quantize_flow_ops(flow, 2.5)), quantize_flow(flow, 2.5))


def test_pairs_quantised_on_the_device(tiny_pairs, tiny_reference):
    from utils.flow import quantize_flow
    flow = T.TVL1Keras(slots=2, pairs_per_slot=2)
    quantized = flow.pairs(*tiny_pairs, quantize=1.0)          # 1 px: clipping and rounding both matter
    assert quantized.dtype == np.uint8 and quantized.shape == tiny_reference[0].shape
    np.testing.assert_array_equal(quantized, quantize_flow(tiny_reference[0], 1.0))
    with pytest.raises(ValueError, match="positive"):
        flow.pairs(*tiny_pairs, quantize=0)


def test_16_bit_storage_stays_close_to_float32(tiny_pairs, tiny_reference):
    """float16 dual variables and warp terms: not the float32 flow, but within a few hundredths
    of a pixel and a few percent of its iterations (full-size figures: ``python -m utils.bench --stages tvl1keras-storage``)."""
    reference, _, iterations = tiny_reference
    half = T.TVL1Keras(slots=2, pairs_per_slot=2, storage="float16")
    flows = half.pairs(*tiny_pairs)
    difference = np.linalg.norm(flows - reference, axis=-1)
    print(f"float16 vs float32: mean {difference.mean():.4f} px, 95th percentile "
          f"{np.percentile(difference, 95):.4f} px, iterations {half.last_iterations.sum()} vs {iterations.sum()}")
    assert 0 < difference.mean() < 0.05 and np.percentile(difference, 95) < 0.2
    assert 0.9 < half.last_iterations.sum() / iterations.sum() < 1.1
    with pytest.raises(ValueError, match="storage"):
        T.TVL1Keras(storage="int8")
