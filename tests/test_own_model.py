"""The user's own model as it is: tied weights, wrapped and compiled models, fused
attention (issue #17, items 3, 5 and 9)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossmap as lm
from lossmap import vectors as V


class TiedLM(nn.Module):
    """A token model whose output layer is its embedding (as GPT-2's lm_head is)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(x))))


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 11, (40,), generator=g), torch.randint(0, 11, (40,), generator=g)


def test_tied_weights_are_one_parameter_and_their_state_dict_loads() -> None:
    model = TiedLM()
    x, y = _tokens()
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    assert "head.weight" not in land.theta0 and land.aliases == {"head.weight": "emb.weight"}
    # A state dict holds both names; at() folds the alias into the one parameter.
    other = TiedLM()
    with torch.no_grad():
        other.emb.weight.mul_(1.5)
    sd = other.state_dict()
    assert "head.weight" in sd
    moved = land.at(sd)
    assert torch.equal(moved.theta0["emb.weight"], other.emb.weight)
    # The loss at that point is the tied model's: the head uses the new embedding too.
    with torch.no_grad():
        expected = float(F.cross_entropy(other(x), y))
    assert moved.loss() == pytest.approx(expected, rel=1e-6)
    # The gradient is the sum over both uses of the tied tensor, as autograd gives it.
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    g = land.gradient()
    for k, p in ref.named_parameters():
        assert torch.allclose(g[k], p.grad, rtol=1e-5, atol=1e-7), k


def test_tied_keys_with_different_values_are_refused_by_name() -> None:
    land = lm.Landscape(TiedLM(), nn.CrossEntropyLoss(), data=_tokens())
    sd = {k: t.clone() for k, t in TiedLM().state_dict().items()}
    sd["head.weight"] += 1.0
    with pytest.raises(ValueError, match=r"head\.weight and emb\.weight are tied"):
        land.at(sd)


def _mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(2)
    return model, torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g)


# Importing torch.compile's machinery warns of torch.jit deprecations (torch internals).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("wrap", ["DataParallel", "compile"])
def test_wrapped_models_are_unwrapped_with_one_warning(wrap: str) -> None:
    """DataParallel refuses functional calls and a compiled module's donated buffers
    refuse double backward: lossmap evaluates the wrapped module, says so once, and
    reads the wrapper's state dict (keys prefixed ``module.`` / ``_orig_mod.``)."""
    model, x, y = _mlp()
    wrapped = nn.DataParallel(model) if wrap == "DataParallel" else torch.compile(model)
    with pytest.warns(UserWarning, match="wrapper") as record:
        land = lm.Landscape(wrapped, nn.CrossEntropyLoss(), data=(x, y))
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1
    plain = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    assert land.loss() == plain.loss()
    assert all(
        torch.equal(a, b)
        for a, b in zip(land.gradient().values(), plain.gradient().values(), strict=True)
    )
    assert lm.hessian.eigenvalues(land, 1).values[0] == lm.hessian.eigenvalues(plain, 1).values[0]
    sd = wrapped.state_dict()
    assert all(k.startswith(("module.", "_orig_mod.")) for k in sd)
    shifted = {k: t + 0.01 for k, t in sd.items()}
    assert land.at(shifted).loss() == pytest.approx(
        plain.at({k.split(".", 1)[1]: t for k, t in shifted.items()}).loss(), rel=1e-12
    )
    assert V.numel(land.theta0) == V.numel(plain.theta0)


def test_fused_attention_without_second_derivative_names_the_fix() -> None:
    """PyTorch's fused attention kernels have no double backward: the Hessian error says
    to use the eager/math attention, and the math kernel then works."""

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(4, 4)
            self.o = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.q(x).unsqueeze(1)
            return self.o(F.scaled_dot_product_attention(h, h, h).mean(dim=(1, 2)))

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    data = (torch.randn(8, 3, 4, generator=g), torch.randint(0, 2, (8,), generator=g))
    land = lm.Landscape(Attention(), nn.CrossEntropyLoss(), data=data)
    try:
        top = lm.hessian.eigenvalues(land, 1)
    except ValueError as e:
        assert 'attn_implementation="eager"' in str(e) and "SDPBackend.MATH" in str(e)
    else:  # a PyTorch whose CPU kernel has a double backward: nothing to say
        assert top.values[0] > 0
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        top = lm.hessian.eigenvalues(land, 1)
    with sdpa_kernel(SDPBackend.MATH):
        dense = lm.hessian.dense(land)
    assert top.values[0] == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-4)
