"""Real-size models (issue #11): ResNet-20 with BatchNorm and a GPT-style language model.

Parameter counts come from the architectures' formulas; the engine's strategies agree
on tiny versions (BatchNorm in eval mode, attention masks, a tied embedding); the
language model's loss is checked against a hand-written float64 forward pass (one
sequence at a time, no padding, no mask) and its Hessian against ``torch.func``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import hessian

import lossmap as lm
from lossmap import vectors as V
from lossmap import zoo
from lossmap.objective import tied_names

# ------------------------------------------------------------------ formulas


def resnet_parameters(width: int, blocks: int, classes: int) -> int:
    """He et al. (2016) §4.2 with option-A shortcuts: a 3×3 stem conv (no bias) and its
    BatchNorm (2 per channel); per basic block two 3×3 convs (no bias) and two
    BatchNorms; three stages of widths w, 2w, 4w; a linear head on 4w features."""
    total = 9 * 3 * width + 2 * width
    c_in = width
    for stage in range(3):
        c_out = width * 2**stage
        for _ in range(blocks):
            total += 9 * c_in * c_out + 9 * c_out * c_out + 2 * 2 * c_out
            c_in = c_out
    return total + c_in * classes + classes


def lm_parameters(vocab: int, d: int, layers: int, seq_len: int) -> int:
    """Token and position embeddings; per block two LayerNorms (4d), QKV (3d² + 3d), the
    attention projection (d² + d) and the MLP (4d² + 4d, 4d² + d); a final LayerNorm
    (2d); the head is the token embedding (no parameters of its own)."""
    per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert per_block == 12 * d * d + 13 * d
    return vocab * d + seq_len * d + layers * per_block + 2 * d


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # each tensor once


def test_resnet20_has_the_papers_parameter_count() -> None:
    # 432 + 32 (stem) + 3·4,672 (stage 1) + 13,952 + 2·18,560 (stage 2)
    # + 55,552 + 2·73,984 (stage 3) + 650 (head) = 269,722: the paper's "0.27M".
    assert resnet_parameters(16, 3, 10) == 269_722
    assert _count(zoo.resnet20_model()) == 269_722
    assert _count(zoo.resnet20_model(width=4, blocks=1, classes=3)) == resnet_parameters(4, 1, 3)
    convs = [m for m in zoo.resnet20_model().modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 * 3 + 1  # + the head: 6n + 2 weighted layers


def test_transformer_has_at_least_ten_million_parameters_with_the_head_tied() -> None:
    model = zoo.transformer_lm_model()
    expected = lm_parameters(2048, 384, 6, 128)
    assert expected == 11_483_136 >= 10_000_000
    assert _count(model) == expected
    assert model.head.weight is model.tok.weight
    assert tied_names(model) == {"head.weight": "tok.weight"}


# ------------------------------------------------------------ tiny versions


@pytest.fixture(scope="module")
def tiny_resnet() -> lm.Landscape:
    """ResNet-8 of width 4 on 40 images (the engine's checks need no accuracy)."""
    return zoo.resnet20(n=40, width=4, blocks=1, train_steps=5, batch_size=16, eval_batch_size=16)


TINY_LM = {"vocab": 11, "d_model": 8, "layers": 2, "heads": 2, "seq_len": 12}


@pytest.fixture(scope="module")
def tiny_lm() -> lm.Landscape:
    return zoo.transformer_lm(n_sequences=20, train_steps=3, eval_batch_size=6, **TINY_LM)


def test_generated_data_are_deterministic_and_leave_global_random_state_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = zoo.cifar_like_data(50, seed=3), zoo.cifar_like_data(50, seed=3)
    assert a["train"][0].shape == (40, 3, 32, 32) and a["test"][0].shape == (10, 3, 32, 32)
    assert a["train"][0].dtype == torch.float32 and a["train"][1].dtype == torch.long
    assert torch.equal(a["train"][0], b["train"][0]) and torch.equal(a["test"][1], b["test"][1])
    zoo.resnet20_model(width=4, blocks=1)
    batches = zoo.lm_data(10, seq_len=12, vocab=11, batch_size=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 2]
    ids = torch.cat([b["input_ids"] for b in batches])
    mask = torch.cat([b["attention_mask"] for b in batches])
    assert mask.dtype == torch.bool and len(set(mask.sum(1).tolist())) > 1  # varying lengths
    assert bool((ids[~mask] == 0).all()) and bool((ids[mask] > 0).all())  # 0 pads, only
    again = zoo.lm_data(10, seq_len=12, vocab=11, batch_size=4, seed=3)
    assert all(
        torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again, strict=True)
    )


def test_a_small_resnet_learns_the_generated_classes() -> None:
    land = zoo.resnet20(
        n=300, width=8, blocks=1, train_steps=60, batch_size=32, lr=1e-2, eval_batch_size=100
    )
    res = land.evaluate([land.theta0])
    assert res["train/accuracy"][0] > 0.5  # chance: 0.1
    assert res["test/accuracy"][0] > 0.25
    # Eval mode: BatchNorm uses the running statistics training left behind.
    assert not land.train_mode
    assert float(land.fixed["bn.running_var"].sub(1).abs().max()) > 1e-3


@pytest.mark.parametrize("which", ["resnet", "lm"])
def test_loop_vmap_and_auto_agree_on_lines_and_planes(
    which: str, request: pytest.FixtureRequest
) -> None:
    land: lm.Landscape = request.getfixturevalue(f"tiny_{which}")
    d1, d2 = lm.directions.random(land, 2, seed=1)
    ref_line = lm.line(land, d1, span=1.0, steps=5, strategy="loop")
    ref_plane = lm.plane(land, d1, d2, span=1.0, steps=3, strategy="loop")
    for strategy in ("vmap", "auto"):
        curve = lm.line(land, d1, span=1.0, steps=5, strategy=strategy)
        surf = lm.plane(land, d1, d2, span=1.0, steps=3, strategy=strategy)
        for key in ref_line.values:
            np.testing.assert_allclose(curve[key], ref_line[key], rtol=1e-5, err_msg=key)
            np.testing.assert_allclose(surf[key], ref_plane[key], rtol=1e-5, err_msg=key)
    engine = surf.meta["engine"]
    if which == "lm":  # tiny activations: auto batches points (its probe ran the model)
        assert engine["strategy"] == "vmap", engine["reason"]
    else:  # megabytes of activations per forward pass: one point per call on CPU
        assert engine["strategy"] == "loop", engine["reason"]


def test_the_tied_embedding_is_one_parameter_of_the_landscape(tiny_lm: lm.Landscape) -> None:
    cfg = TINY_LM
    assert tiny_lm.aliases == {"head.weight": "tok.weight"}
    assert "head.weight" not in tiny_lm.theta0
    expected = lm_parameters(cfg["vocab"], cfg["d_model"], cfg["layers"], cfg["seq_len"])
    assert tiny_lm.num_parameters == expected
    # A state dict holds both names; the landscape folds the alias into the parameter.
    state = tiny_lm.model.state_dict()
    assert "head.weight" in state
    assert tiny_lm.at(state).loss() == pytest.approx(tiny_lm.loss(), rel=1e-12)


# -------------------------------------------- the language model in float64


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """By hand: through ``F.layer_norm`` with a weight and a bias, ``torch.func.hessian``
    and ``jacrev(jacrev(f))`` (both vmapped) get the weight-input block of the Hessian
    wrong in torch 2.13 (an asymmetric Hessian); ``jvp(grad(f))``, autograd's double
    backward and its ``is_grads_batched`` (what lossmap uses) get it right."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * weight + bias


def _reference_loss(params: dict[str, Tensor], batches: list[dict[str, Tensor]]) -> Tensor:
    """The data set's per-token mean next-token cross-entropy, written out: one sequence
    at a time, its kept tokens only (no padding, no mask), causal attention by hand."""
    d = params["tok.weight"].shape[1]
    n_layers = len({k.split(".")[1] for k in params if k.startswith("blocks.")})
    heads = TINY_LM["heads"]
    dh = d // heads
    total, count = params["tok.weight"].new_zeros(()), 0
    for b in batches:
        for ids, keep in zip(b["input_ids"], b["attention_mask"].bool(), strict=True):
            x = ids[keep]
            t = len(x)
            h = params["tok.weight"][x] + params["pos.weight"][:t]
            future = torch.ones(t, t, dtype=torch.bool).triu(1)
            for i in range(n_layers):

                def p(name: str, i: int = i) -> Tensor:
                    return params[f"blocks.{i}.{name}"]

                a = _layer_norm(h, p("ln1.weight"), p("ln1.bias"))
                q, k, v = (a @ p("qkv.weight").T + p("qkv.bias")).split(d, dim=-1)
                outs = []
                for j in range(heads):
                    cols = slice(j * dh, (j + 1) * dh)
                    s = (q[:, cols] @ k[:, cols].T) / math.sqrt(dh)
                    outs.append(s.masked_fill(future, -math.inf).softmax(-1) @ v[:, cols])
                h = h + torch.cat(outs, dim=1) @ p("proj.weight").T + p("proj.bias")
                m = _layer_norm(h, p("ln2.weight"), p("ln2.bias"))
                h = h + F.gelu(m @ p("fc.weight").T + p("fc.bias")) @ p("out.weight").T
                h = h + p("out.bias")
            logits = _layer_norm(h, params["ln.weight"], params["ln.bias"])
            logits = logits @ params["tok.weight"].T
            total = total + F.cross_entropy(logits[:-1], x[1:], reduction="sum")
            count += t - 1
    return total / count


def _float64_lm(
    batches: list[dict[str, Tensor]], **cfg: int
) -> tuple[lm.Landscape, list[dict[str, Tensor]]]:
    model = zoo.transformer_lm_model(**{**TINY_LM, **cfg}, seed=2).double()
    assert model.head.weight is model.tok.weight  # .double() keeps the tie
    return lm.Landscape(model, loss=zoo.lm_loss, data=batches), batches


def _repad(batches: list[dict[str, Tensor]], width: int, left: bool) -> list[dict[str, Tensor]]:
    """The same sequences padded to ``width`` tokens, on the right or on the left, with
    token 7 (not 0) under the padding: nothing the mask drops may leak in."""
    out = []
    for b in batches:
        ids = torch.full((len(b["input_ids"]), width), 7, dtype=torch.long)
        mask = torch.zeros(len(b["input_ids"]), width, dtype=torch.long)  # LongTensor masks
        for r, (row, keep) in enumerate(zip(b["input_ids"], b["attention_mask"], strict=True)):
            x = row[keep]
            at = width - len(x) if left else 0
            ids[r, at : at + len(x)], mask[r, at : at + len(x)] = x, 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_padding_does_not_change_the_loss_and_it_equals_the_written_out_reference() -> None:
    batches = zoo.lm_data(10, seq_len=8, vocab=TINY_LM["vocab"], batch_size=4, seed=5)
    land, _ = _float64_lm(batches)
    reference = float(_reference_loss(dict(land.theta0), batches))
    assert land.loss() == pytest.approx(reference, rel=1e-12)
    for strategy in ("loop", "vmap"):
        assert land.evaluate([land.theta0], strategy=strategy)["loss"][0] == pytest.approx(
            reference, rel=1e-12
        )
    for left in (False, True):
        padded = lm.Landscape(land.model, loss=zoo.lm_loss, data=_repad(batches, 12, left))
        assert padded.loss() == pytest.approx(reference, rel=1e-12), f"left={left}"
    # One batch of all ten sequences: the exact per-token mean is the same.
    whole = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    assert lm.Landscape(land.model, loss=zoo.lm_loss, data=[whole]).loss() == pytest.approx(
        reference, rel=1e-12
    )


def test_hessian_operator_against_torch_func_hessian_of_the_reference() -> None:
    """``HessianOperator`` products (``lm.hessian.dense``) on a tiny float64 decoder equal
    ``torch.func.hessian`` of the written-out loss to 1e-10 of the largest entry."""
    batches = zoo.lm_data(6, seq_len=6, vocab=7, batch_size=4, seed=1)
    land, _ = _float64_lm(batches, vocab=7, d_model=4, layers=1, seq_len=6)
    theta = land.point()

    def f(flat: Tensor) -> Tensor:
        return _reference_loss(V.unflatten(flat, theta), batches)

    ref = hessian(f)(V.flatten(theta))
    op = lm.hessian.HessianOperator(land)
    gen = torch.Generator().manual_seed(0)
    v = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in theta.items()}
    scale = float(ref.abs().max())
    assert scale > 1e-3
    hv, hv_ref = op.hvp(V.flatten(v)), ref @ V.flatten(v)
    assert float((hv - hv_ref).abs().max()) <= 1e-10 * float(hv_ref.abs().max())
    assert float((lm.hessian.dense(land) - ref).abs().max()) <= 1e-10 * scale
