"""The 300-W .pts format: 1-based files, 0-based points in memory, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fan_edge.files.pts import MAX_PTS_BYTES, format_pts, parse_pts, read_pts, write_pts
from fan_edge.errors import DataError, FanEdgeError


def _points(k: int = 68, seed: int = 0) -> np.ndarray:
    return np.round(np.random.default_rng(seed).uniform(0, 350, size=(k, 2)), 6)


def _body(points_1based: np.ndarray) -> str:
    return "\n".join(f"{x:.6f} {y:.6f}" for x, y in points_1based)


def _assert_one_line_data_error(excinfo) -> None:
    assert isinstance(excinfo.value, FanEdgeError)
    message = str(excinfo.value)
    assert message and "\n" not in message and "\r" not in message


def test_standard_header_is_read_and_made_zero_based(tmp_path):
    pts = _points()
    path = tmp_path / "face.pts"
    path.write_text(f"version: 1\nn_points:  68\n{{\n{_body(pts + 1)}\n}}\n")
    got = read_pts(path)
    assert got.shape == (68, 2) and got.dtype == np.float64
    np.testing.assert_allclose(got, pts, atol=1e-9)


def test_headerless_is_read(tmp_path):
    pts = _points(seed=1)
    path = tmp_path / "bare.pts"
    path.write_text(_body(pts + 1) + "\n")
    np.testing.assert_allclose(read_pts(path), pts, atol=1e-9)
    # headerless with braces, comments, blank lines, CRLF and commas
    text = "# exported by a tool\r\n{\r\n\r\n" + "\r\n".join(f"{x + 1}, {y + 1}" for x, y in pts) + "\r\n}\r\n"
    np.testing.assert_allclose(parse_pts(text), pts, atol=1e-9)


def test_one_one_is_the_origin(tmp_path):
    path = tmp_path / "origin.pts"
    path.write_text("version: 1\nn_points: 1\n{\n1 1\n}\n")
    np.testing.assert_array_equal(read_pts(path, expected=1), [[0.0, 0.0]])
    lines = ["1 1"] + [f"{i + 2} {i + 3}" for i in range(67)]
    got = parse_pts("\n".join(lines))
    np.testing.assert_array_equal(got[0], [0.0, 0.0])
    np.testing.assert_array_equal(got[1], [1.0, 2.0])


def test_write_then_read_returns_the_same_points(tmp_path):
    pts = np.random.default_rng(2).uniform(-20, 400, size=(68, 2))
    path = tmp_path / "sub" / "out.pts"
    write_pts(path, pts)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[:3] == ["version: 1", "n_points: 68", "{"] and lines[-1] == "}" and len(lines) == 72
    # 1-based on disk
    x, y = (float(v) for v in lines[3].split())
    assert x == pytest.approx(pts[0, 0] + 1, abs=1e-6) and y == pytest.approx(pts[0, 1] + 1, abs=1e-6)
    np.testing.assert_allclose(read_pts(path), pts, atol=1e-6)
    # no temporary files left beside it
    assert [p.name for p in path.parent.iterdir()] == ["out.pts"]


def test_expected_none_accepts_any_count():
    pts = _points(5)
    np.testing.assert_allclose(parse_pts(format_pts(pts), expected=None), pts, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 80), st.just(2)),
        elements=st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False),
    )
)
def test_property_format_parse_round_trip(points):
    got = parse_pts(format_pts(points), expected=None)
    assert got.shape == points.shape
    # six decimals on disk
    np.testing.assert_allclose(got, points, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(67) + 1) + "\n}\n", id="header-68-file-67"),
        pytest.param("version: 1\nn_points: 67\n{\n" + _body(_points(67) + 1) + "\n}\n", id="67-points-expected-68"),
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(69) + 1) + "\n}\n", id="header-68-file-69"),
        pytest.param(_body(_points(67) + 1), id="headerless-67"),
        pytest.param("", id="empty"),
        pytest.param("version: 1\nn_points: 0\n{\n}\n", id="no-points"),
        pytest.param("hello world\nthis is not a pts file\n", id="garbage"),
        pytest.param("<html><body>404</body></html>", id="html"),
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(67) + 1) + "\nnan 3.0\n}\n", id="nan"),
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(67) + 1) + "\n1e999 3.0\n}\n", id="inf"),
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(68) + 1) + "\n", id="no-closing-brace"),
        pytest.param("version: 1\nn_points: 68\n" + _body(_points(68) + 1) + "\n}\n", id="no-opening-brace"),
        pytest.param("version: 1\nn_points: many\n{\n" + _body(_points(68) + 1) + "\n}\n", id="n-points-not-int"),
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(67) + 1) + "\n1 2 3\n}\n", id="three-values"),
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(67) + 1) + "\n12\n}\n", id="one-value"),
        pytest.param("\x00\x01\x02\x03 \x04\x05\n" * 68, id="control-chars"),
    ],
)
def test_bad_text_raises_one_line_data_error(text):
    with pytest.raises(DataError) as excinfo:
        parse_pts(text, source="bad.pts")
    _assert_one_line_data_error(excinfo)
    assert "bad.pts" in str(excinfo.value)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd" * 10, id="png-bytes"),
        pytest.param(bytes(range(256)) * 4, id="all-bytes"),
        pytest.param(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(500), id="jpeg-bytes"),
    ],
)
def test_binary_junk_file_raises_one_line_data_error(tmp_path, payload):
    path = tmp_path / "junk.pts"
    path.write_bytes(payload)
    with pytest.raises(DataError) as excinfo:
        read_pts(path)
    _assert_one_line_data_error(excinfo)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(67) + 1) + "\n}\n", id="wrong-count"),
        pytest.param("nan nan\n" * 68, id="nan"),
        pytest.param("version: 1\nn_points: 68\n{\n" + _body(_points(68) + 1) + "\n", id="no-closing-brace"),
        pytest.param("lorem ipsum\n" * 68, id="garbage"),
    ],
)
def test_bad_files_raise_one_line_data_error(tmp_path, text):
    path = tmp_path / "bad.pts"
    path.write_text(text)
    with pytest.raises(DataError) as excinfo:
        read_pts(path)
    _assert_one_line_data_error(excinfo)


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_pts(tmp_path / "nope.pts")
    _assert_one_line_data_error(excinfo)
    big = tmp_path / "big.pts"
    big.write_bytes(b" " * (MAX_PTS_BYTES + 1))
    with pytest.raises(DataError) as excinfo:
        read_pts(big)
    _assert_one_line_data_error(excinfo)


@pytest.mark.data
def test_real_file_from_the_data(data_dir):
    path = sorted((data_dir / "afw").glob("*.pts"))[0]
    pts = read_pts(path)
    assert pts.shape == (68, 2)
    # the first coordinate line, minus one
    first = [ln for ln in path.read_text().splitlines() if ln.strip()][3]
    x, y = (float(v) for v in first.split())
    np.testing.assert_allclose(pts[0], [x - 1, y - 1])
