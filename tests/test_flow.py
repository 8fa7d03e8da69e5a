"""utils.flow: quantisation, the .flo reader, flow quality on a ground-truth pair, the method registry."""
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils import flow as flow_lib
from utils.flow import (FLOW_BOUND, FlowMethodUnavailable, compute_flow, dequantize_flow, endpoint_error,
                        flow_to_color, make_video_flow, quantize_flow, read_flo, register_flow_method)

GT_DIR = Path(__file__).parent / "data" / "flow_gt" / "mb_RubberWhale"
REFERENCE_TVL1_EPE = 0.157      # reference table of the shared data README (see tests/data/PROVENANCE.md): OpenCV 5.0 TV-L1 defaults, grayscale, 1 thread
HALF_STEP = 2 * FLOW_BOUND / 255 / 2


@pytest.fixture(scope="module")
def rubber_whale():
    first = cv2.imread(str(GT_DIR / "frame1.png"), cv2.IMREAD_GRAYSCALE)
    second = cv2.imread(str(GT_DIR / "frame2.png"), cv2.IMREAD_GRAYSCALE)
    return first, second, read_flo(GT_DIR / "gt.flo")


@pytest.fixture
def one_opencv_thread():
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(previous)


def test_quantize_round_trip_within_half_a_step():
    values = np.concatenate([np.linspace(-FLOW_BOUND, FLOW_BOUND, 100_001, dtype=np.float32),
                             np.random.default_rng(0).uniform(-20, 20, 10_000).astype(np.float32)])
    quantized = quantize_flow(values)
    assert quantized.dtype == np.uint8
    error = np.abs(dequantize_flow(quantized) - values)
    assert error.max() <= HALF_STEP + 1e-5
    assert error.max() > 0.9 * HALF_STEP          # the step really is 40/255
    assert quantize_flow(np.float32(0.0)) == 128 and quantize_flow(-20.0) == 0 and quantize_flow(20.0) == 255


def test_quantize_clips_beyond_the_bound():
    quantized = quantize_flow(np.array([-1000.0, -20.5, 20.5, 1e6], np.float32))
    np.testing.assert_array_equal(quantized, [0, 0, 255, 255])
    np.testing.assert_allclose(dequantize_flow(quantized), [-20, -20, 20, 20], atol=1e-5)
    assert quantize_flow(np.array([5.0]), bound=5.0)[0] == 255     # the bound is a parameter


def test_read_flo_and_clear_errors(tmp_path):
    gt = read_flo(GT_DIR / "gt.flo")
    assert gt.shape == (388, 584, 2) and gt.dtype == np.float32
    unknown = np.any(np.abs(gt) > 1e9, axis=-1)
    assert 0 < unknown.mean() < 0.5                  # RubberWhale has occluded pixels without ground truth
    assert endpoint_error(gt, gt) == 0.0             # unknown pixels are masked, not inf/nan
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"PIEH" + b"\0" * 20)
    with pytest.raises(ValueError, match="bad.flo"):
        read_flo(bad)
    truncated = tmp_path / "short.flo"
    truncated.write_bytes((GT_DIR / "gt.flo").read_bytes()[:1000])
    with pytest.raises(ValueError, match="short.flo.*584x388"):
        read_flo(truncated)


def test_tvl1_endpoint_error_matches_reference(rubber_whale, one_opencv_thread):
    first, second, gt = rubber_whale
    start = time.perf_counter()
    flow = compute_flow(first, second, "tvl1")
    seconds = time.perf_counter() - start
    assert flow.shape == gt.shape and flow.dtype == np.float32
    epe = endpoint_error(flow, gt)
    stored = endpoint_error(dequantize_flow(_jpeg_round_trip(quantize_flow(flow))), gt)
    print(f"\nRubberWhale TV-L1: EPE {epe:.3f} px ({seconds:.1f} s), stored as JPEG q95: {stored:.3f} px")
    assert abs(epe - REFERENCE_TVL1_EPE) <= 0.1 * REFERENCE_TVL1_EPE
    assert stored <= epe + 0.03                      # clipping + 8 bits + JPEG cost almost nothing


@pytest.mark.parametrize("method", ["farneback", "dis", "dis-fast"])
def test_fast_methods_are_sane(rubber_whale, method, one_opencv_thread):
    first, second, gt = rubber_whale
    start = time.perf_counter()
    flow = compute_flow(first, second, method)
    seconds = time.perf_counter() - start
    epe = endpoint_error(flow, gt)
    print(f"\nRubberWhale {method}: EPE {epe:.3f} px ({1000 * seconds:.0f} ms)")
    assert np.isfinite(flow).all()
    assert epe < 1.0                                 # zero flow scores 1.26 px here


def test_zero_flow_is_a_worse_baseline(rubber_whale):
    _, _, gt = rubber_whale
    assert endpoint_error(np.zeros_like(gt), gt) > 1.0


def test_per_video_equals_per_pair():
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (64, 80), dtype=np.uint8), (0, 0), 2)
    frames = np.stack([np.roll(base, shift, axis=1) for shift in range(4)])   # moves 1 px right per frame
    flows = make_video_flow("dis")(frames)
    assert flows.shape == (3, 64, 80, 2) and flows.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(flows[i], compute_flow(frames[i], frames[i + 1], "dis"))
    inner = flows[:, 16:-16, 16:-16]
    assert abs(np.median(inner[..., 0]) - 1.0) < 0.2 and abs(np.median(inner[..., 1])) < 0.2


def test_registry_accepts_new_methods(monkeypatch):
    monkeypatch.setattr(flow_lib, "FLOW_METHODS", dict(flow_lib.FLOW_METHODS))
    calls = []

    def factory(scale=1.0):
        calls.append(scale)
        return lambda frames: np.full((len(frames) - 1, *frames.shape[1:], 2), scale, np.float32)

    method = register_flow_method("constant", factory, batched=True)
    assert method.execution == "in-process batched"
    assert flow_lib.FLOW_METHODS["tvl1"].execution == "per process"
    flow = compute_flow(np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), "constant", scale=2.0)
    assert flow.shape == (4, 5, 2) and (flow == 2.0).all() and calls == [2.0]
    with pytest.raises(ValueError, match="unknown flow method 'nope'.*tvl1"):
        make_video_flow("nope")


def test_missing_opencv_contrib_gives_clear_message(monkeypatch):
    monkeypatch.delattr(cv2.optflow, "DualTVL1OpticalFlow_create")
    with pytest.raises(FlowMethodUnavailable, match="opencv-contrib-python-headless==5.0.0.93") as info:
        make_video_flow("tvl1")
    assert "pip uninstall" in str(info.value) and "opencv-python " in str(info.value)
    make_video_flow("dis")                           # the methods of plain OpenCV still work


def test_flow_to_color():
    flow = np.zeros((10, 20, 2), np.float32)
    flow[:, 10:, 0] = 5.0                            # right half moves right
    rgb = flow_to_color(flow)
    assert rgb.shape == (10, 20, 3) and rgb.dtype == np.uint8
    assert (rgb[:, :10] == 0).all()                  # still pixels are black
    assert (rgb[:, 10:].max(axis=-1) == 255).all()   # fastest pixels are brightest
    np.testing.assert_array_equal(rgb[0, 10], [255, 0, 0])   # motion to the right is red
    assert flow_to_color(flow, max_magnitude=10.0)[0, 10].max() == 127


def _jpeg_round_trip(quantized):
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", quantized[..., c], [cv2.IMWRITE_JPEG_QUALITY, 95])[1],
                                  cv2.IMREAD_GRAYSCALE) for c in range(2)], axis=-1)
