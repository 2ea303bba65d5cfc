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


# ---------------------------------------------------------------- a tiny GPT-2
GPT_VOCAB, GPT_T = 37, 8


def _gpt2(attn: str | None = None) -> nn.Module:
    """GPT-2 from a config (no download): 2 layers, 2 heads, width 32, seeded, no dropout."""
    transformers = pytest.importorskip("transformers")
    extra = {} if attn is None else {"attn_implementation": attn}
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=GPT_VOCAB,
        n_positions=GPT_T,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=1,
        **extra,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double()


def _gpt2_batches() -> list[dict[str, torch.Tensor]]:
    """Two padded batches (3 and 2 sequences, 4 to 8 tokens), labels -100 at padding."""
    g = torch.Generator().manual_seed(2)
    out = []
    for lengths in ([8, 5, 4], [6, 7]):
        ids = torch.zeros(len(lengths), GPT_T, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            ids[i, :n] = torch.randint(1, GPT_VOCAB, (n,), generator=g)
            mask[i, :n] = 1
        out.append(
            {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        )
    return out


def gpt2_token_loss(model, batch):  # type: ignore[no-untyped-def]
    """``(sum, count)`` of the next-token losses of a padded batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    total = F.cross_entropy(
        logits[:, :-1].reshape(-1, GPT_VOCAB),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return total, (labels != -100).sum()


def test_tiny_gpt2_tied_head_token_mean_and_hessian() -> None:
    model = _gpt2("eager")
    batches = _gpt2_batches()
    land = lm.Landscape(model, loss=gpt2_token_loss, data=batches)
    # lm_head is tied to the token embedding: one parameter, and GPT-2's own state dict
    # (both names) is accepted.
    assert land.aliases == {"lm_head.weight": "transformer.wte.weight"}
    assert "lm_head.weight" not in land.theta0
    fresh = _gpt2("eager")
    with torch.no_grad():
        for p in fresh.parameters():
            p.mul_(0.9)
    other = land.at(fresh.state_dict())
    # The per-token mean over both batches, by hand: every token counted once.
    losses, n = [], 0
    with torch.no_grad():
        for b in batches:
            logits = fresh(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for i in range(b["input_ids"].shape[0]):
                for t in range(GPT_T - 1):
                    if b["labels"][i, t + 1] != -100:
                        losses.append(float(F.cross_entropy(logits[i, t], b["labels"][i, t + 1])))
                        n += 1
    assert n == 7 + 4 + 3 + 5 + 6
    assert other.loss() == pytest.approx(sum(losses) / n, rel=1e-12)
    # The Hessian-vector product against a dense Hessian of a small parameter subset
    # (the last layer norm's scale and shift: 64 entries), by torch.func in float64.
    names = ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    theta = land.point()

    def mean_loss(sub: dict[str, torch.Tensor]) -> torch.Tensor:
        params = {**theta, **sub}
        s, c = zip(*(gpt2_token_loss_functional(model, params, b) for b in batches), strict=True)
        return sum(s) / sum(c)

    sub = {k: theta[k] for k in names}
    H = torch.func.hessian(lambda flat: mean_loss(V.unflatten(flat, sub)))(V.flatten(sub))
    g = torch.Generator().manual_seed(4)
    v = {
        k: torch.randn(t.shape, generator=g, dtype=t.dtype) if k in sub else torch.zeros_like(t)
        for k, t in theta.items()
    }
    hv = land.hvp(None, v)
    expect = H @ V.flatten({k: v[k] for k in names})
    got = V.flatten({k: hv[k] for k in names})
    assert torch.allclose(got, expect, rtol=1e-8, atol=1e-10)


def gpt2_token_loss_functional(model, params, batch):  # type: ignore[no-untyped-def]
    return gpt2_token_loss(_Bound(model, params), batch)


class _Bound:
    """``model`` called with ``params`` (torch.func.functional_call), tied weights kept."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]) -> None:
        self.model, self.params = model, params

    def __call__(self, **kw):  # type: ignore[no-untyped-def]
        from torch.func import functional_call

        return functional_call(self.model, self.params, (), kw, tie_weights=True)


def test_tiny_gpt2_with_fused_attention_names_eager() -> None:
    model = _gpt2()  # transformers' default attention: PyTorch's fused SDPA
    assert model.config._attn_implementation == "sdpa"
    land = lm.Landscape(model, loss=gpt2_token_loss, data=_gpt2_batches())
    try:
        land.hvp(None, land.point())
    except ValueError as e:
        msg = str(e)
        assert 'attn_implementation="eager"' in msg and "\n" not in msg
    else:
        pytest.skip("this PyTorch's CPU SDPA kernel has a double backward: nothing to say")
