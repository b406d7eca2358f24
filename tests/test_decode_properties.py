"""Property tests of decoding (runtime/decode.py) and of the crop transform under every crop recipe a contract admits.

tests/test_geometry.py covers the crop round trip for FAN's own recipe and
the quarter-step argmax; here: both refinements on arbitrary heatmaps
(NaN and infinities included, as a broken or int8 model may emit) give finite
points inside the heatmap, heatmap <-> crop coordinates invert each other,
the whole decode lands inside the crop window in image pixels, and crop
matrices invert for any recipe within the contract's bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fan_edge.runtime.contract import CROP_SIDE_RATIO, MAX_CENTER_SHIFT
from fan_edge.runtime.crop import CropSpec, apply_affine, crop_matrices, crop_matrix, invert_affine
from fan_edge.runtime.decode import (
    argmax_gaussian,
    argmax_quarter,
    crop_points_to_image,
    crop_to_heatmap,
    decode_heatmaps,
    heatmap_to_crop,
)

SETTINGS = settings(max_examples=150, deadline=None)
coord = st.floats(-5000.0, 5000.0)
extent = st.floats(1.0, 5000.0)
any_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def heatmaps(elements=any_float32, max_side: int = 9, square: bool = False):
    """(N, K, H, W) float32 heatmaps; ``square`` as the contract has them (the session refuses other shapes)."""
    side = st.integers(1, max_side)
    shape = side.map(lambda n: (n, n)) if square else st.tuples(side, side)
    return hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 5), shape).map(lambda t: t[:2] + t[2]),
                      elements=elements)


@st.composite
def crop_specs(draw) -> CropSpec:
    """Any recipe the contract accepts: window / reference_scale within CROP_SIDE_RATIO, |center_shift| <= 1."""
    window = draw(st.floats(1.0, 1000.0))
    lo, hi = CROP_SIDE_RATIO
    return CropSpec(
        reference_scale=draw(st.floats(window / hi, window / lo)),
        center_shift=draw(st.floats(-MAX_CENTER_SHIFT, MAX_CENTER_SHIFT)),
        window=window,
    )


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@SETTINGS
@given(heatmaps(), st.sampled_from(["quarter", "gaussian"]))
def test_refinements_give_finite_points_inside_the_heatmap(hm, refine):
    cells, scores = (argmax_quarter if refine == "quarter" else argmax_gaussian)(hm)
    n, k, h, w = hm.shape
    assert cells.shape == (n, k, 2) and scores.shape == (n, k)
    assert np.all(np.isfinite(cells)), "a refinement produced a non-finite point"
    assert np.all(cells[..., 0] >= 0) and np.all(cells[..., 0] <= w - 1)
    assert np.all(cells[..., 1] >= 0) and np.all(cells[..., 1] <= h - 1)
    step = np.abs(cells - np.round(cells))
    assert np.all(step <= (0.25 if refine == "quarter" else 0.5))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@SETTINGS
@given(hm=heatmaps(max_side=8, square=True), refine=st.sampled_from(["quarter", "gaussian"]), x1=coord, y1=coord, w=extent, h=extent,
       spec=crop_specs(), size=st.sampled_from([32, 64, 128, 256]))
def test_decode_to_image_stays_finite_and_inside_the_crop_window(hm, refine, x1, y1, w, h, spec, size):
    """Whatever the network outputs, decoded image points are finite and within the face's crop window."""
    n = hm.shape[0]
    boxes = np.tile([x1, y1, x1 + w, y1 + h], (n, 1))
    matrices = crop_matrices(boxes, size, spec)
    points, scores = decode_heatmaps(hm, size, refine)
    assert np.all(np.isfinite(points)) and points.shape == hm.shape[:2] + (2,)
    assert np.all(points >= -0.5) and np.all(points <= size - 0.5), "decoded outside the crop"
    image = crop_points_to_image(points, matrices)
    assert np.all(np.isfinite(image))
    # crop pixels -0.5 .. size - 0.5 span the window: its centre and side in image pixels.
    corners = crop_points_to_image(np.array([[[-0.5, -0.5], [size - 0.5, size - 0.5]]] * n), matrices)
    slack = 1e-6 * max(1.0, abs(x1), abs(y1), w, h, spec.window / spec.reference_scale * (w + h))
    assert np.all(image >= corners[:, :1] - slack) and np.all(image <= corners[:, 1:] + slack)


@SETTINGS
@given(pts=hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.just(2)), elements=st.floats(-1e6, 1e6)),
       stride=st.floats(0.5, 64.0))
def test_heatmap_and_crop_coordinates_invert_each_other(pts, stride):
    there = crop_to_heatmap(pts, stride)
    assert np.all(np.isfinite(there))
    np.testing.assert_allclose(heatmap_to_crop(there, stride), pts, rtol=1e-12, atol=1e-9 * max(1.0, stride))
    np.testing.assert_allclose(crop_to_heatmap(heatmap_to_crop(pts, stride), stride), pts, rtol=1e-12, atol=1e-9)


@SETTINGS
@given(x1=coord, y1=coord, w=extent, h=extent, spec=crop_specs(), size=st.sampled_from([64, 128, 192, 256]),
       pts=hnp.arrays(np.float64, st.tuples(st.integers(1, 68), st.just(2)), elements=coord))
def test_crop_round_trip_under_any_admitted_recipe(x1, y1, w, h, spec, size, pts):
    m = crop_matrix(np.array([x1, y1, x1 + w, y1 + h]), size, spec)
    inside = apply_affine(m, pts)
    back = apply_affine(invert_affine(m), inside)
    assert np.all(np.isfinite(inside)) and np.all(np.isfinite(back))
    scale = max(1.0, np.abs(pts).max(), abs(x1), abs(y1), w, h)
    np.testing.assert_allclose(back, pts, rtol=0, atol=1e-7 * scale * max(1.0, spec.reference_scale / spec.window))
    # the box centre (moved up by center_shift heights) maps to the crop centre
    centre = np.array([[x1 + w / 2, y1 + h / 2 - spec.center_shift * h]])
    np.testing.assert_allclose(apply_affine(m, centre), [[(size - 1) / 2] * 2], atol=1e-6 * scale)


@pytest.mark.parametrize("refine", ["quarter", "gaussian"])
def test_all_nan_heatmaps_decode_to_finite_points(refine):
    hm = np.full((1, 3, 8, 8), np.nan, np.float32)
    points, scores = decode_heatmaps(hm, 32, refine)
    assert np.all(np.isfinite(points)) and np.all(np.isnan(scores))
