"""Landmark metrics against values computed by hand on toy faces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fan_edge.data.metrics import (
    LandmarkScores,
    auc,
    ced_curve,
    failure_rate,
    landmark_boxes,
    normalisers,
    per_face_nme,
    score,
)


def _toy_faces() -> tuple[np.ndarray, np.ndarray]:
    """Two faces with hand-checkable geometry.

    Face 0: every point on the segment x in [0, 30], y in [0, 40]; the outer eye
    corners 36 = (5, 10) and 45 = (11, 18) are 10 apart; the landmark box is
    30 x 40 (corners at points 0 and 16), sqrt(w h) = sqrt(1200). The prediction
    is the ground truth shifted by (0.3, 0.4): every point is 0.5 off.

    Face 1: 36 = (100, 100), 45 = (140, 100): 40 apart; box 60 x 15 (points 0 and
    16 at (90, 95) and (150, 110)), sqrt(w h) = 30. The prediction is exact except
    point 30, which is (6, 8) = 10 off: mean error 10 / 68.
    """
    gt = np.zeros((2, 68, 2))
    gt[0, :] = (15.0, 20.0)
    gt[0, 0], gt[0, 16] = (0.0, 0.0), (30.0, 40.0)
    gt[0, 36], gt[0, 45] = (5.0, 10.0), (11.0, 18.0)
    gt[1, :] = (120.0, 100.0)
    gt[1, 0], gt[1, 16] = (90.0, 95.0), (150.0, 110.0)
    gt[1, 36], gt[1, 45] = (100.0, 100.0), (140.0, 100.0)
    pred = gt.copy()
    pred[0] += (0.3, 0.4)
    pred[1, 30] += (6.0, 8.0)
    return pred, gt


def test_landmark_boxes_and_normalisers():
    pred, gt = _toy_faces()
    np.testing.assert_allclose(landmark_boxes(gt), [[0, 0, 30, 40], [90, 95, 150, 110]])
    np.testing.assert_allclose(normalisers(gt, "inter_ocular"), [10.0, 40.0])
    np.testing.assert_allclose(normalisers(gt, "box"), [math.sqrt(1200.0), 30.0])
    with pytest.raises(ValueError):
        normalisers(gt, "pupils")  # type: ignore[arg-type]


def test_per_face_nme_by_hand():
    pred, gt = _toy_faces()
    io = per_face_nme(pred, gt, "inter_ocular")
    box = per_face_nme(pred, gt, "box")
    np.testing.assert_allclose(io, [0.5 / 10.0, (10.0 / 68) / 40.0], rtol=1e-12)
    np.testing.assert_allclose(box, [0.5 / math.sqrt(1200.0), (10.0 / 68) / 30.0], rtol=1e-12)
    # default is inter-ocular
    np.testing.assert_array_equal(per_face_nme(pred, gt), io)
    # perfect prediction is zero
    np.testing.assert_array_equal(per_face_nme(gt, gt), [0.0, 0.0])


def test_per_face_nme_rejects_bad_shapes():
    pred, gt = _toy_faces()
    with pytest.raises(ValueError):
        per_face_nme(pred[:, :67], gt)
    with pytest.raises(ValueError):
        per_face_nme(pred[0], gt[0])
    with pytest.raises(ValueError):
        per_face_nme(np.zeros((2, 68, 3)), np.zeros((2, 68, 3)))


def test_auc_exact_formula():
    errors = np.array([0.0, 0.01, 0.035, 0.07, 0.1])
    # mean of max(0, 1 - e / 0.07): 1, 6/7, 1/2, 0, 0
    expected = (1.0 + 6.0 / 7.0 + 0.5 + 0.0 + 0.0) / 5.0
    assert auc(errors) == pytest.approx(expected, rel=1e-12)
    assert auc(np.array([0.02]), limit=0.08) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.9])) == 0.0
    assert auc(np.zeros(3)) == 1.0
    assert math.isnan(auc(np.array([])))


def test_failure_rate_is_strictly_above_limit():
    errors = np.array([0.0, 0.01, 0.07, 0.0700001, 0.2])
    assert failure_rate(errors) == pytest.approx(2 / 5)
    assert failure_rate(errors, limit=0.1) == pytest.approx(1 / 5)
    assert failure_rate(np.array([0.01])) == 0.0
    assert math.isnan(failure_rate(np.array([])))


def test_ced_curve_values():
    errors = np.array([0.05, 0.0105, 0.0305, 0.09])
    thresholds, fractions = ced_curve(errors)
    assert thresholds.shape == fractions.shape == (701,)
    assert thresholds[0] == 0.0 and thresholds[-1] == pytest.approx(0.07)
    np.testing.assert_allclose(np.diff(thresholds), 0.0001)
    at = {round(t, 4): f for t, f in zip(thresholds, fractions)}
    assert at[0.0] == 0.0
    assert at[0.01] == 0.0
    assert at[0.0106] == 0.25
    assert at[0.03] == 0.25
    assert at[0.031] == 0.5
    assert at[0.05] == 0.75  # "at or below": the face with error exactly 0.05 counts
    assert at[0.07] == 0.75  # 0.09 never counts below 7%
    assert np.all(np.diff(fractions) >= 0)
    # coarse curve on a custom limit
    t, f = ced_curve(np.array([0.1, 0.3]), limit=0.4, steps=5)
    np.testing.assert_allclose(t, [0.0, 0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(f, [0.0, 0.5, 0.5, 1.0, 1.0])
    # empty input: a zero curve, not a division by zero
    _, f = ced_curve(np.array([]))
    assert not f.any()


def test_auc_agrees_with_integrating_the_ced_curve():
    rng = np.random.default_rng(0)
    errors = rng.uniform(0, 0.1, size=200)
    t, f = ced_curve(errors, steps=7001)
    integral = np.trapezoid(f, t) / 0.07
    assert auc(errors) == pytest.approx(integral, abs=2e-4)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(0.0, 1.0)))
def test_property_auc_and_failure_rate_bounds(errors):
    a, fr = auc(errors), failure_rate(errors)
    assert 0.0 <= a <= 1.0 and 0.0 <= fr <= 1.0
    # every face counted in the area is not a failure
    assert a <= 1.0 - fr + 1e-12
    assert a == pytest.approx(np.mean([max(0.0, 1 - e / 0.07) for e in errors]), rel=1e-9, abs=1e-12)


def test_score_by_hand():
    pred, gt = _toy_faces()
    s = score(pred, gt)
    assert isinstance(s, LandmarkScores)
    io = [0.05, (10.0 / 68) / 40.0]
    box = [0.5 / math.sqrt(1200.0), (10.0 / 68) / 30.0]
    assert s.faces == 2
    assert s.nme_io == pytest.approx(np.mean(io), rel=1e-12)
    assert s.nme_box == pytest.approx(np.mean(box), rel=1e-12)
    assert s.auc7 == pytest.approx(np.mean([1 - e / 0.07 for e in box]), rel=1e-12)
    assert s.fr7 == 0.0
    pct = s.as_percent()
    assert pct["faces"] == 2
    assert pct["nme_io"] == pytest.approx(100 * s.nme_io)
    assert pct["auc7"] == pytest.approx(100 * s.auc7)


def test_score_failure_uses_box_normalisation():
    pred, gt = _toy_faces()
    # Face 1: move every point by 2.4 px: box NME 2.4 / 30 = 0.08 > 0.07, IO NME 2.4 / 40 = 0.06.
    pred[1] = gt[1] + (2.4, 0.0)
    s = score(pred, gt)
    assert s.fr7 == 0.5
    assert s.auc7 == pytest.approx(0.5 * (1 - (0.5 / math.sqrt(1200.0)) / 0.07), rel=1e-12)
    assert s.nme_io == pytest.approx(np.mean([0.05, 0.06]), rel=1e-12)
