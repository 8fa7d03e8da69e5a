"""Tests for utils/tvl1_pallas.py: the fused Pallas inner loop against the Keras-ops solver, on CPU.

No GPU here: the kernel runs in Pallas' interpreter (``interpret=True``), the same kernel body the
GPU compiles, and :func:`utils.tvl1_pallas.lowers_to_triton` checks that it lowers to Triton's IR.
The whole solver with ``kernel="pallas"`` needs the JAX backend: that test runs in the JAX process
of tests/test_backends.py (``backend_smoke``). Frames are small (one or two tiles per side, halos
crossing tiles and image borders) to keep the interpreter fast.
"""
import cv2
import numpy as np
import pytest
from conftest import TEST_DATA

from utils import tvl1_keras as T
from utils import tvl1_pallas as P
PAIR_DIR = TEST_DATA / "flow_gt" / "mb_RubberWhale"
BLOCK = (16, 16)                  # halo of `chunk` px on each side: 3 x 4 tiles on a 40x24 image at chunk 3


def _frames(size):
    return [cv2.resize(cv2.imread(str(PAIR_DIR / name), cv2.IMREAD_GRAYSCALE), size, interpolation=cv2.INTER_AREA)
            for name in ("frame1.png", "frame2.png")]


def _chunk_inputs(storage, height=24, width=40):
    """A realistic chunk: three slots of warp terms from real frames, random flow (slot 2: far from
    converged) and duals."""
    rng = np.random.default_rng(0)
    frame0, frame1 = (f.astype(np.float32) for f in _frames((width, height)))
    I0, I1 = np.stack([frame0, frame1, frame0]), np.stack([frame1, frame0, np.roll(frame0, 1, axis=1)])
    u1, u2 = (rng.normal(0, 1, (2, 3, height, width)) * np.array([0.5, 0.5, 3.0])[:, None, None]).astype(np.float32)
    duals = [rng.uniform(-0.3, 0.3, (3, height, width)).astype(storage) for _ in range(4)]
    I1x, I1y = (np.asarray(a) for a in T.centered_gradient(I1))
    terms = tuple(np.asarray(t).astype(storage) for t in T._warp_terms(I0, I1, I1x, I1y, u1, u2))
    return (u1, u2, *duals), terms


def _pallas_inner(chunk, storage="float32"):
    params = T.TVL1Params()
    return P.make_inner_iterations(chunk=chunk, lambda_theta=params.lambda_ * params.theta, theta=params.theta,
                                   tau_theta=params.tau / params.theta, storage=storage, block=BLOCK, interpret=True)


def _change_per_iteration(state, terms, ready, iterations):
    """sum((u - u_old)^2) after each of ``iterations`` single Keras-ops iterations, per slot."""
    one = T.make_keras_inner_iterations(T.TVL1Params(), 1)
    changes = []
    for _ in range(iterations):
        new, _, _ = one(state, terms, ready, np.float32(0))
        new = tuple(np.asarray(a) for a in new)
        changes.append(((new[0] - state[0]) ** 2 + (new[1] - state[1]) ** 2).sum(axis=(1, 2)))
        state = new
    return np.stack(changes, axis=1)


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_a_chunk_matches_the_keras_ops_iterations(storage):
    """Three slots, one not ready; the threshold makes slot 0 converge after its 2nd of 3
    iterations (the second launch re-runs it for exactly 2) and slot 2 not at all: same state,
    iteration counts and convergence as the Keras-ops loop."""
    import jax
    chunk = 3
    state, terms = _chunk_inputs(storage)
    ready = np.array([True, False, True])
    change = _change_per_iteration(state, terms, ready, chunk)
    assert change[0, 1] < min(change[0, 0], change[2].min()), change
    threshold = np.float32((change[0, 1] + min(change[0, 0], change[2].min())) / 2)
    keras_state, keras_ran, keras_converged = T.make_keras_inner_iterations(T.TVL1Params(), chunk, storage)(
        state, terms, ready, threshold)
    pallas_state, pallas_ran, pallas_converged = jax.jit(_pallas_inner(chunk, storage))(state, terms, ready, threshold)
    np.testing.assert_array_equal(np.asarray(keras_ran), [2, 0, 3])
    np.testing.assert_array_equal(np.asarray(pallas_ran), np.asarray(keras_ran))
    np.testing.assert_array_equal(np.asarray(pallas_converged), np.asarray(keras_converged))
    for ours, theirs in zip(pallas_state, keras_state):
        assert np.asarray(ours).dtype == np.asarray(theirs).dtype
        # float16 duals: the rounding of a value one float32 ulp apart may differ by one float16 step
        np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                                   atol=1e-5 if storage == "float32" else 1e-3)
    np.testing.assert_array_equal(np.asarray(pallas_state[0])[1], state[0][1])           # the idle slot


def test_tile_grid_and_block_checks():
    assert P.tile_grid(24, 40, 3, BLOCK) == (3, 4)
    assert P.tile_grid(240, 320, 5) == (11, 6)                 # default block (32, 64): interiors 22 x 54
    with pytest.raises(ValueError, match="powers of two"):
        P.tile_grid(24, 40, 3, (24, 16))
    with pytest.raises(ValueError, match="halo"):
        P.tile_grid(24, 40, 8, BLOCK)


def test_the_kernels_lower_to_triton():
    """Both launches (chunk, re-run) lower to Triton's IR for a CUDA GPU: no operation Pallas
    cannot lower on a GPU (the interpreter would run those too)."""
    assert P.lowers_to_triton(block=BLOCK) > 0
    assert P.lowers_to_triton(block=BLOCK, storage="bfloat16") > 0


@pytest.mark.skipif(T.keras.backend.backend() == "jax", reason="the error of the other backends")
def test_pallas_needs_the_jax_backend():
    with pytest.raises(ValueError, match="JAX backend"):
        T.TVL1Keras(kernel="pallas")
    with pytest.raises(ValueError, match="kernel"):
        T.TVL1Keras(kernel="triton")
    with pytest.raises(ValueError, match="options of kernel='pallas'"):
        T.TVL1Keras(block=(16, 16))


@pytest.mark.backend_smoke
@pytest.mark.skipif(T.keras.backend.backend() != "jax", reason="kernel='pallas' needs the JAX backend")
def test_the_pallas_solver_matches_the_keras_ops_solver():
    """Three 40x24 pairs (one level, 3 x 4 tiles), two slots: the same flow and the same inner
    iterations per pair; warps stop early (epsilon 0.05), so chunks end with a re-run."""
    frame0, frame1 = _frames((40, 24))
    shifted = cv2.warpAffine(frame0, np.float32([[1, 0, 1.5], [0, 1, -0.75]]), (40, 24), flags=cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REFLECT)
    frames0, frames1 = np.stack([frame0, frame1, frame0]), np.stack([frame1, frame0, shifted])
    options = dict(slots=2, pairs_per_slot=2, chunk=3, nscales=1, warps=3, epsilon=0.05, median_filtering=3)
    keras_flow = T.TVL1Keras(**options)
    pallas_flow = T.TVL1Keras(kernel="pallas", block=BLOCK, **options)
    expected = keras_flow.pairs(frames0, frames1)
    flows = pallas_flow.pairs(frames0, frames1)
    np.testing.assert_array_equal(pallas_flow.last_iterations, keras_flow.last_iterations)
    assert (pallas_flow.last_iterations % 3 != 0).any()          # some warp converged inside a chunk
    np.testing.assert_allclose(flows, expected, atol=1e-4)
    assert "pallas" in repr(pallas_flow)
