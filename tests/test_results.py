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
