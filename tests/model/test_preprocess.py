"""Frame preprocessing: the fast pad-and-resize is bit-identical to padding the square, then resizing it."""

from __future__ import annotations

import numpy as np
import pytest

from longvu.model.preprocess import BAND_ROWS, ImageSpec, preprocess_frame, preprocess_reference

SIGLIP = ImageSpec(size=384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
DINO = ImageSpec(size=378, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize(
    "h,w",
    [(360, 640), (641, 359), (1080, 607), (2 * BAND_ROWS + 5, 37), (BAND_ROWS - 1, 9), (50, 20), (20, 50),
     (384, 200), (200, 384), (378, 500), (333, 333), (1, 7), (7, 1)],
)  # fmt: skip
@pytest.mark.parametrize("spec", [SIGLIP, DINO], ids=["siglip", "dino"])
def test_pad_and_resize_is_bit_identical(h, w, spec):
    rng = np.random.default_rng(h * 1000 + w)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_frame(frame, spec), preprocess_reference(frame, spec))
