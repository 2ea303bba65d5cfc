"""VTK export (``Result.to_vtk``) read back with meshio, and ``lossmap export``."""

from __future__ import annotations

from pathlib import Path

import meshio
import numpy as np
import pytest
from conftest import run_cli

import lossmap as lm
from lossmap.results import Spectrum, Surface


def _surface() -> Surface:
    """A 3 x 4 surface with two data sets, a non-positive loss and a NaN."""
    alpha, beta = np.array([-1.0, 0.0, 1.5]), np.array([-2.0, -1.0, 0.5, 2.0])
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    loss = 1.0 + a**2 + 0.5 * b**2
    loss[2, 3] = np.nan
    loss[0, 1] = 0.0  # log_loss is NaN there
    return Surface(
        {"alpha": alpha, "beta": beta},
        {"train/loss": loss, "train/accuracy": 0.1 * a + b, "test/loss": 2 * loss},
        {"default_dataset": "train"},
    )


@pytest.mark.parametrize("suffix", [".vtk", ".vtu"])
def test_surface_round_trips_through_meshio(tmp_path: Path, suffix: str) -> None:
    surf = _surface()
    path = surf.to_vtk(tmp_path / f"s{suffix}")
    mesh = meshio.read(path)
    # point (i, j) is number i * len(beta) + j, at (alpha_i, beta_j, loss_ij)
    a, b = np.meshgrid(surf.alpha, surf.beta, indexing="ij")
    want = np.stack([a.ravel(), b.ravel(), surf["loss"].ravel()], axis=1)
    np.testing.assert_array_equal(mesh.points, want)
    (cells,) = mesh.cells
    assert cells.type == "quad" and cells.data.shape == (2 * 3, 4)
    # each quad is the grid cell (i, j), (i+1, j), (i+1, j+1), (i, j+1)
    assert cells.data[4].tolist() == [1 * 4 + 1, 2 * 4 + 1, 2 * 4 + 2, 1 * 4 + 2]
    assert set(mesh.point_data) == {*surf.values, "log_loss"}
    for k, v in surf.values.items():
        np.testing.assert_array_equal(mesh.point_data[k], v.ravel())
    loss = surf["loss"].ravel()
    positive = loss > 0
    log = mesh.point_data["log_loss"]
    np.testing.assert_allclose(10 ** log[positive], loss[positive], rtol=1e-14)
    assert positive.sum() == 10 and np.isnan(log[~positive]).all()  # the 0 and the NaN


def test_a_computed_plane_and_line_round_trip(tmp_path: Path) -> None:
    """A real plane of the linear example: the loss at θ0 (the grid's centre) in the
    file is the landscape's loss there; a line is a polyline ``(alpha, loss, 0)``."""
    land = lm.examples.linear_regression()
    d1, d2 = lm.directions.random(land, n=2, seed=0)
    surf = lm.plane(land, d1, d2, span=(-1, 1), steps=5)
    mesh = meshio.read(surf.to_vtk(tmp_path / "plane.vtk"))
    centre = 2 * 5 + 2
    assert mesh.points[centre, :2].tolist() == [0.0, 0.0]
    assert mesh.points[centre, 2] == pytest.approx(land.loss(), rel=1e-12)
    curve = lm.line(land, d1, span=(-1, 1), steps=7)
    mesh = meshio.read(curve.to_vtk(tmp_path / "line.vtu"))
    np.testing.assert_array_equal(mesh.points[:, 0], curve.alpha)
    np.testing.assert_array_equal(mesh.points[:, 1], curve["loss"])
    assert not mesh.points[:, 2].any()
    (cells,) = mesh.cells
    assert cells.type == "line" and cells.data.tolist() == [[i, i + 1] for i in range(6)]


def test_to_vtk_refuses_another_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"suffix \.vtk \(legacy\) or \.vtu"):
        _surface().to_vtk(tmp_path / "s.vts")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["vtk", "vtu", "csv", "npz"])
def test_export_command_writes_each_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    surf = _surface()
    h5 = surf.save(tmp_path / "surface.h5")
    code, out, err = run_cli(["export", str(h5), "--format", fmt], capsys)
    assert code == 0, err
    target = tmp_path / f"surface.{fmt}"
    assert out.strip() == f"wrote {target}"
    if fmt in ("vtk", "vtu"):
        mesh = meshio.read(target)
        np.testing.assert_array_equal(mesh.point_data["test/loss"], surf["test/loss"].ravel())
    elif fmt == "csv":
        assert target.read_text() == surf.to_csv(tmp_path / "direct.csv").read_text()
    else:
        with np.load(target) as z:
            np.testing.assert_array_equal(z["train__accuracy"], surf["accuracy"])
    other = tmp_path / "elsewhere" / f"x.{fmt}"
    code, out, err = run_cli(["export", str(h5), "--format", fmt, "--out", str(other)], capsys)
    assert code == 0 and other.is_file(), err


def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(args: list[str]) -> str:
        code, out, err = run_cli(["export", *args], capsys)
        assert code == 2 and not out and len(err.strip().splitlines()) == 1, (code, out, err)
        return err

    assert "no result file at" in error([str(tmp_path / "missing.h5")])
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    assert "is it a lossmap result" in error([str(junk)])
    grid = np.linspace(0, 1, 3)
    spec = Spectrum(grid, grid, grid[None, :], grid[None, :], 0.1, 3).save(tmp_path / "sp.h5")
    assert "holds a spectrum" in error([str(spec), "--format", "vtk"])
    h5 = _surface().save(tmp_path / "s.h5")
    assert "does not end in .vtk" in error([str(h5), "--out", str(tmp_path / "s.csv")])
    assert "invalid value" in error([str(h5), "--format", "stl"]).lower()
    assert not (tmp_path / "s.vtk").exists()
