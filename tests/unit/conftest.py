"""Fixtures shared by the unit tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.mlops_core import reproducibility


def clear_source_caches() -> None:
    reproducibility.source_hash.cache_clear()
    reproducibility.source_digests.cache_clear()
    reproducibility.code_version.cache_clear()


@pytest.fixture
def package_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The ML package copied outside any git checkout, and the source caches cleared around
    the test: edit the copy to change "the training code"."""
    copy = tmp_path / "mlops"
    shutil.copytree(reproducibility.PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(reproducibility, "PACKAGE_ROOT", copy)
    clear_source_caches()
    yield copy
    clear_source_caches()
