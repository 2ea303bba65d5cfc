"""The engine's precision: float32 as before, bit for bit; bfloat16/float16 the model's
forward passes under torch.autocast, plausibly far from float32; never the gradients
or Hessian-vector products; recorded in the result and the journal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

import lossmap as lm
from lossmap.evaluate import Span, run
from lossmap.evaluate.strategies import Evaluator
from lossmap.store import Journal

# Unit roundoffs: bfloat16 keeps 8 significant bits, float16 11.
U_BF16 = 2.0**-8
U_F16 = 2.0**-11


def _landscape(kind: str) -> lm.Landscape:
    """A small MLP, or a small CNN with BatchNorm (eval mode), on random data."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "mlp":
            x = torch.randn(60, 8, generator=g)
            model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        else:
            x = torch.randn(60, 2, 6, 6, generator=g)
            model = nn.Sequential(
                nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
            )
            model.train()
            with torch.no_grad():
                model(x)
        model.eval()
    y = torch.randint(0, 3, (60,), generator=g)
    return lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))


def _rel(a: lm.Surface, b: lm.Surface, key: str = "train/loss") -> np.ndarray:
    return np.abs(a.values[key] / b.values[key] - 1)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_float32_is_the_default_bit_for_bit(kind: str) -> None:
    land = _landscape(kind)
    d1, d2 = lm.directions.random(land, 2, seed=0)
    plain = lm.plane(land, d1, d2, steps=(7, 5))
    f32 = lm.plane(land, d1, d2, steps=(7, 5), precision="float32")
    assert f32.meta["engine"]["strategy"] == plain.meta["engine"]["strategy"] != "loop"
    assert plain.meta["engine"]["precision"] == f32.meta["engine"]["precision"] == "float32"
    for k in plain.values:
        np.testing.assert_array_equal(plain.values[k], f32.values[k], err_msg=k)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_lower_precisions_differ_from_float32_by_their_rounding(kind: str) -> None:
    """Relative to float32 (the same strategy, loop), the loss moves by more than 0 and
    less than a few unit roundoffs: autocast rounds the inputs, the weights and every
    matmul/conv output once each (about 2-3 roundings per layer, of either sign), while
    the cross-entropy runs in float32 on the rounded logits; 8 u bounds the largest
    point's difference and 2 u the median on these two-layer models (measured: the
    largest is about 1 u). float16 keeps 3 more bits than bfloat16: its median
    difference is the smaller, which also shows each precision was applied."""
    land = _landscape(kind)
    d1, d2 = lm.directions.random(land, 2, seed=0)
    ref = lm.plane(land, d1, d2, steps=(7, 5), strategy="loop")
    bf16 = lm.plane(land, d1, d2, steps=(7, 5), precision="bfloat16")
    f16 = lm.plane(land, d1, d2, steps=(7, 5), precision="float16")
    for res, u in ((bf16, U_BF16), (f16, U_F16)):
        rel = _rel(res, ref)
        assert 0 < rel.max() < 8 * u, (res.meta["engine"]["precision"], rel.max() / u)
        assert np.median(rel) < 2 * u
    assert np.median(_rel(f16, ref)) < np.median(_rel(bf16, ref))
    eng = bf16.meta["engine"]
    assert eng["precision"] == "bfloat16" and eng["strategy"] == "loop"
    assert eng["eligible"] == ["loop"] and "autocast" in eng["reason"]
    # the values are float64 sums, as at float32
    assert bf16.values["train/loss"].dtype == np.float64


def test_lower_precision_runs_the_models_forward_only() -> None:
    """Below float32 only loop runs: under vmap autocast leaves nn.Linear's bias add in
    float32 (pytorch/pytorch#192617), and the affine strategies run their own products."""
    land = _landscape("mlp")
    (d,) = lm.directions.random(land, 1, seed=0)
    for strategy in ("vmap", "affine", "affine-vmap"):
        with pytest.raises(ValueError, match="eligible: loop"):
            lm.line(land, d, steps=3, strategy=strategy, precision="bfloat16")
        pts = Span(land.point(), [d], np.zeros((1, 1)))
        with pytest.raises(ValueError, match="cannot run at precision 'bfloat16'"):
            Evaluator(land, pts, strategy, precision="bfloat16")
    assert evaluate_choice(land, d) == "loop"
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        lm.line(land, d, steps=3, precision="half")


def evaluate_choice(land: lm.Landscape, d: lm.vectors.Vector) -> str:
    from lossmap.evaluate import choose

    pts = Span(land.point(), [d], np.zeros((2, 1)))
    strategy, reason = choose(land, pts, precision="bfloat16")
    assert "precision bfloat16" in reason
    return strategy


def test_float64_models_refuse_a_lower_precision() -> None:
    land = lm.examples.quadratic(np.eye(2))
    with pytest.raises(ValueError, match="float64"):
        lm.line(land, "theta[0]", steps=3, precision="bfloat16")


def test_gradients_and_hessian_vector_products_ignore_the_engines_precision() -> None:
    """A bfloat16 plane leaves no autocast behind, and the Hessian-vector products and
    eigenvalues after it are those before it, bit for bit, in float32; none runs under
    autocast (the spy reads the autocast state inside the product)."""
    land = _landscape("mlp")
    d1, d2 = lm.directions.random(land, 2, seed=0)
    before_hv = land.hvp(None, d1)
    before_eig = lm.hessian.eigenvalues(land, k=2, seed=0).values
    before_grad = land.gradient()
    lm.plane(land, d1, d2, steps=(5, 5), precision="bfloat16")
    assert not torch.is_autocast_enabled("cpu")
    seen: list[bool] = []
    backward = torch.autograd.grad

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        seen.append(torch.is_autocast_enabled("cpu"))
        return backward(*args, **kw)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.autograd, "grad", spy)
        after_hv = land.hvp(None, d1)
    after_eig = lm.hessian.eigenvalues(land, k=2, seed=0).values
    after_grad = land.gradient()
    assert seen and not any(seen)
    for k in before_hv:
        assert after_hv[k].dtype == torch.float32
        assert torch.equal(before_hv[k], after_hv[k]), k
        assert torch.equal(before_grad[k], after_grad[k]), k
    np.testing.assert_array_equal(before_eig, after_eig)


def test_a_journal_refuses_to_mix_precisions(tmp_path: Path) -> None:
    land = _landscape("mlp")
    (d,) = lm.directions.random(land, 1, seed=0)
    with Journal(tmp_path / "j.sqlite", {"what": "line"}) as journal:
        first = lm.line(land, d, steps=5, precision="bfloat16", journal=journal)
    with Journal(tmp_path / "j.sqlite", {"what": "line"}) as journal:
        again = lm.line(land, d, steps=5, precision="bfloat16", journal=journal)
        assert again.meta["engine"]["resumed_points"] == 5
        np.testing.assert_array_equal(first.values["train/loss"], again.values["train/loss"])
        with pytest.raises(ValueError, match="precision bfloat16, not float32"):
            lm.line(land, d, steps=5, journal=journal)


def test_the_engine_run_takes_the_precision_too() -> None:
    land = _landscape("mlp")
    (d,) = lm.directions.random(land, 1, seed=0)
    pts = Span(land.point(), [d], np.linspace(-1, 1, 4)[:, None])
    res = run(land, pts, precision=lm.devices.Precision.bfloat16)
    assert res.info["precision"] == "bfloat16" and res.info["strategy"] == "loop"


def test_cli_precision(tmp_path: Path, factories: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--precision reaches the plane, run.json and the journal's fingerprint: the same
    command at another precision is refused unless --restart; a float64 model is
    refused in one line."""
    code, _, err = run_cli(
        ["line", "--example", "logistic", "--precision", "float16", "--out", str(tmp_path / "l")],
        capsys,
    )
    assert code == 2 and "float64" in err and len(err.strip().splitlines()) == 1, err
    out = tmp_path / "p"
    base = ["plane", "--model", "userfactories:good", "--steps", "5", "--out", str(out)]
    code, _, err = run_cli([*base, "--precision", "bfloat16"], capsys)
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["arguments"]["precision"] == "bfloat16"
    assert record["fingerprint"]["precision"] == "bfloat16"
    assert record["results"]["surface"]["meta"]["engine"]["precision"] == "bfloat16"
    code, _, err = run_cli([*base, "--precision", "float32"], capsys)
    assert code == 2 and "precision" in err and "--restart" in err, err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli([*base, "--precision", "float32", "--restart"], capsys)
    assert code == 0, err
    engine = json.loads((out / "run.json").read_text())["results"]["surface"]["meta"]["engine"]
    assert engine["precision"] == "float32" and engine["strategy"] != "loop"


def test_cli_precision_choices_are_the_engines() -> None:
    from lossmap.cli._common import Precision

    assert [p.value for p in Precision] == [p.value for p in lm.devices.Precision]
