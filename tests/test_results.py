import csv

import numpy as np
import pytest

import lossmap as lm
from lossmap.results import Curve, Surface


def _surface() -> Surface:
    a, b = np.linspace(-1, 1, 3), np.linspace(0, 2, 4)
    loss = np.add.outer(a, b)
    loss[0, 0] = np.inf
    return Surface(
        {"alpha": a, "beta": b},
        {"train/loss": loss, "train/accuracy": loss / 10, "test/loss": 2 * loss},
        {"default_dataset": "train", "note": "x"},
    )


def test_hdf5_roundtrip_is_exact(tmp_path) -> None:
    s = _surface()
    assert np.isnan(s["loss"][0, 0])  # non-finite stored as NaN
    s.save(tmp_path / "s.h5")
    r = lm.load(tmp_path / "s.h5")
    assert isinstance(r, Surface) and r.meta == s.meta
    assert list(r.values) == list(s.values)
    for k in s.values:
        np.testing.assert_array_equal(r.values[k], s.values[k])
    np.testing.assert_array_equal(r.beta, s.beta)
    c = Curve({"alpha": np.arange(3.0)}, {"train/loss": np.ones(3)})
    c.save(tmp_path / "c.h5")
    assert isinstance(lm.load(tmp_path / "c.h5"), Curve)


def test_csv_is_tidy(tmp_path) -> None:
    s = _surface()
    s.to_csv(tmp_path / "s.csv")
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["alpha", "beta", "loss", "accuracy", "test/loss"]
    assert len(rows) == 1 + 12
    assert rows[1][2] == "nan"
    # Row order: alpha outer, beta inner (indexing="ij").
    assert float(rows[2][0]) == -1.0 and float(rows[2][1]) == pytest.approx(2 / 3)
    assert float(rows[2][4]) == pytest.approx(2 * (-1 + 2 / 3))


def test_npz_and_bad_files(tmp_path) -> None:
    s = _surface()
    s.to_npz(tmp_path / "s.npz")
    z = np.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(z["test__loss"], s["test/loss"])
    with pytest.raises(FileNotFoundError):
        lm.load(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot read"):
        lm.load(tmp_path / "junk.h5")
    with pytest.raises(KeyError, match="available"):
        s["nope"]


def test_spectrum_roundtrip(tmp_path) -> None:
    from lossmap.results import Spectrum, broaden

    nodes = np.array([[0.0, 1.0, 3.0], [0.5, 1.0, 2.0]])
    weights = np.array([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]])
    grid = np.linspace(-1, 4, 501)
    sp = Spectrum(grid, broaden(nodes, weights, grid, 0.1), nodes, weights, 0.1, 6, {"trace": 1.5})
    assert np.trapezoid(sp.density, grid) == pytest.approx(1.0, rel=1e-4)
    assert sp.moments(1)[0] == pytest.approx(((0.5 + 0.9) + (0.05 + 0.6 + 0.6)) / 2)
    sp.save(tmp_path / "sp.h5")
    back = lm.load(tmp_path / "sp.h5")
    assert isinstance(back, Spectrum) and back.meta == {"trace": 1.5} and back.matvecs == 6
    np.testing.assert_array_equal(back.nodes, nodes)
    np.testing.assert_array_equal(back.density, sp.density)
