import numpy as np
import pytest
import torch

from lossmap import vectors as V


def _vec(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g)}


def test_arithmetic_matches_numpy() -> None:
    a, b = _vec(0), _vec(1)
    fa, fb = V.flatten(a).numpy(), V.flatten(b).numpy()
    assert float(V.dot(a, b)) == pytest.approx(
        float(np.dot(fa.astype(float), fb.astype(float))), rel=1e-12
    )
    assert float(V.norm(a)) == pytest.approx(float(np.linalg.norm(fa.astype(float))), rel=1e-12)
    np.testing.assert_allclose(V.flatten(V.add(a, b, alpha=2.0)).numpy(), fa + 2 * fb, rtol=1e-6)
    np.testing.assert_allclose(
        V.flatten(V.combine(a, [a, b], [0.5, -1.0])).numpy(), 1.5 * fa - fb, rtol=1e-6
    )
    assert V.cosine(a, V.scale(a, -3.0)) == pytest.approx(-1.0)


def test_flatten_roundtrip() -> None:
    a = _vec(2)
    back = V.unflatten(V.flatten(a), a)
    assert all(torch.equal(back[k], a[k]) for k in a)
    with pytest.raises(ValueError, match="expected a 1-D tensor of 15"):
        V.unflatten(torch.zeros(14), a)


def test_mismatched_keys_and_types() -> None:
    with pytest.raises(ValueError, match="different keys"):
        V.add(_vec(0), {"x": torch.zeros(1)})
    with pytest.raises(TypeError, match=r"dict\[str, Tensor\]"):
        V.check_vector([torch.zeros(1)])
    with pytest.raises(ValueError, match="shape a.bias"):
        V.check_vector({"a.weight": torch.zeros(3, 4), "a.bias": torch.zeros(4)}, _vec(0))
