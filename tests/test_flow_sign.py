"""A clip moving right and down by known amounts: every flow method stores it with the right sign, in the right files.

flow_x holds the horizontal component (positive = rightwards), flow_y the vertical one (positive =
downwards), stored as ``255 * (v + bound) / (2 * bound)`` (see utils.flow). A swapped x/y or a
negated flow anywhere in extraction moves these values by 6 grey levels per pixel of motion.
"""
import cv2
import numpy as np
import pytest

from utils.extract import extract_dataset
from utils.flow import FLOW_BOUND, FLOW_METHODS

WIDTH, HEIGHT, FRAMES = 64, 48, 4
RIGHT, DOWN = 2, 1                          # pixels per frame
MARGIN = 8                                  # border pixels left out (content enters and leaves there)
FAST_OPTIONS = {"tvl1-keras": {"nscales": 1, "slots": 4, "pairs_per_slot": 1}}   # one level: compiles in seconds


def stored_value(pixels: float) -> float:
    return 255 * (pixels + FLOW_BOUND) / (2 * FLOW_BOUND)


@pytest.fixture(scope="module")
def moving_clip(tmp_path_factory):
    """``videos/move/right_down.avi``: a blurred random texture seen through a window that moves left and
    up, so the content moves RIGHT px right and DOWN px down per frame."""
    videos = tmp_path_factory.mktemp("videos")
    texture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (HEIGHT + 40, WIDTH + 40, 3), np.uint8),
                               (0, 0), 1.5)
    (videos / "move").mkdir()
    writer = cv2.VideoWriter(str(videos / "move" / "right_down.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25,
                             (WIDTH, HEIGHT))
    for t in range(FRAMES):
        top, left = 20 - DOWN * t, 20 - RIGHT * t
        writer.write(texture[top:top + HEIGHT, left:left + WIDTH])
    writer.release()
    return videos


@pytest.mark.parametrize("method", sorted(FLOW_METHODS))
def test_rightward_and_downward_motion_is_stored_above_128(moving_clip, tmp_path, method):
    summary = extract_dataset(moving_clip, tmp_path, method, workers=1, progress=False,
                              method_options=FAST_OPTIONS.get(method))
    assert (summary.done, summary.frame_pairs) == (1, FRAMES - 1)
    folder = tmp_path / "move" / "right_down"
    for i in range(1, FRAMES):
        for axis, pixels in (("x", RIGHT), ("y", DOWN)):
            image = cv2.imread(str(folder / f"flow_{axis}_{i:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
            inner = image[MARGIN:-MARGIN, MARGIN:-MARGIN].astype(float)
            expected = stored_value(pixels)                 # 2 px: 140.25, 1 px: 133.875 (0 px: 127.5)
            assert abs(np.median(inner) - expected) <= 1 and abs(inner.mean() - expected) <= 1, \
                (method, f"flow_{axis}_{i:05d}.jpg", np.median(inner), inner.mean(), expected)
