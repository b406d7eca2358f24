"""Shared test fixtures.

Data that cannot live in the repository (the official state-dict listing, the
300-W images) sits in ``../shared`` beside the checkout. Tests that need it
skip with a clear reason when it is absent, unless ``FAN_EDGE_REQUIRE_DATA=1``
is set (CI with data mounted), in which case they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def _require(path: Path, what: str, is_file: bool = False) -> Path:
    present = path.is_file() if is_file else path.is_dir()
    if not present:
        reason = f"{what} not found at {path}"
        if os.environ.get("FAN_EDGE_REQUIRE_DATA") == "1":
            pytest.fail(f"{reason} (FAN_EDGE_REQUIRE_DATA=1)", pytrace=False)
        pytest.skip(f"{reason}; set FAN_EDGE_REQUIRE_DATA=1 to make this a failure")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository (design notes, fixtures, data)."""
    return _require(SHARED_DIR, "shared folder ../shared")


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    """``../shared/fixtures`` (reference listings such as the official state dict)."""
    return _require(shared_dir / "fixtures", "shared fixtures ../shared/fixtures")


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    """``../shared/data/300w``: the 300-W images and .pts annotations."""
    return _require(shared_dir / "data" / "300w", "300-W data ../shared/data/300w")


@pytest.fixture(scope="session")
def require_shared():
    """``require_shared(path, what, is_file=False)``: the same skip/fail rule for one file or folder."""
    return _require
