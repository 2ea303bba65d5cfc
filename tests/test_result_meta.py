"""The shared result metadata (slices.result_meta) and the version it records."""

from __future__ import annotations

import importlib.metadata

import lossmap as lm
from lossmap import slices
from lossmap._version import __version__


def test_versions_come_from_the_installed_package_or_the_leaf_module() -> None:
    assert lm.__version__ == __version__
    assert slices.versions()["lossmap"] == importlib.metadata.version("lossmap") == __version__


def test_versions_fall_back_to_the_leaf_module(monkeypatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    slices._own_version.cache_clear()  # read once per process: read it again here
    try:
        assert slices.versions()["lossmap"] == __version__
        assert slices._own_version.cache_info().misses == 1
    finally:
        slices._own_version.cache_clear()


def test_every_view_records_the_same_landscape_metadata() -> None:
    land = lm.examples.linear_regression()
    meta = lm.line(land, "bias", span=(1, 3), steps=3).meta
    shared = slices.result_meta(land, land.point(), [], {"strategy": "loop"})
    for key in ("default_dataset", "datasets", "model", "n_parameters", "device", "dtype"):
        assert meta[key] == shared[key], key
    assert shared["engine"] == {"strategy": "loop"} and shared["directions"] == []
