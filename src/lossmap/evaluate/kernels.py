"""The affine plan: a model split at its first layer, and the rest run as a chain.

For spans of ``nn.Sequential`` models whose first layer with parameters is
``Linear``/``ConvNd``, that layer is affine in its parameters:
``layer(X; W0 + Σ c_k D_k) = layer(X; W0) + Σ c_k layer(X; D_k)``. The engine computes
the right-hand terms once per batch; every point then runs only the rest of the
network, as a flat chain of steps without ``functional_call``'s per-call overhead.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lossmap.evaluate.scratch import Scratch
from lossmap.objective import Objective

__all__ = [
    "AFFINE_LAYERS",
    "FLAT_NDIM",
    "AffinePlan",
    "Step",
    "affine_plan",
    "chain",
    "run_chain",
    "run_chain_batched",
]

AFFINE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""First layers whose output is affine in their parameters."""

FLAT_NDIM = 2
"""Dimensions of a flat activation, ``[N, features]``: what the features-first
(batched) path runs on."""

# Activations applied in place on a tensor the engine owns (not under vmap).
_INPLACE: dict[type[nn.Module], Callable[[nn.Module, Tensor], Tensor]] = {
    nn.ReLU: lambda m, h: h.relu_(),
    nn.Tanh: lambda m, h: h.tanh_(),
    nn.Sigmoid: lambda m, h: h.sigmoid_(),
    nn.LeakyReLU: lambda m, h: torch.nn.functional.leaky_relu_(h, m.negative_slope),  # type: ignore[arg-type]
    nn.Identity: lambda m, h: h,
    nn.Dropout: lambda m, h: h,  # eval mode only (the affine plan requires it)
}

# Modules that act elementwise: the batched path runs them on [P, features, N].
_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,  # identity in eval mode, which the affine plan requires
)


@dataclass
class Step:
    """One module of the chain: ``kind`` is ``"linear"`` (``F.linear`` with the point's
    weights), ``"free"`` (no parameters or buffers: called as is) or ``"call"``
    (``functional_call`` on that module alone); ``keys`` maps full names to local ones."""

    kind: str
    module: nn.Module
    keys: dict[str, str]
    weight: str = ""
    bias: str | None = None


@dataclass
class AffinePlan:
    """A model split for the affine first-layer shortcut."""

    prefix: nn.Module  # parameter-free modules before the first layer
    layer: nn.Module  # the first layer with parameters (Linear / ConvNd)
    layer_keys: dict[str, str]  # full parameter name -> name inside the layer
    rest: nn.Module  # everything after
    chain: list[Step]  # the rest, module by module

    @property
    def batched(self) -> bool:
        """Whether the rest can run on ``[P, N, features]`` without vmap: linear layers
        and elementwise activations only, on 2-D (``[N, features]``) activations."""
        return isinstance(self.layer, nn.Linear) and all(
            st.kind == "linear" or (st.kind == "free" and type(st.module) in _ELEMENTWISE)
            for st in self.chain
        )


def chain(rest: nn.Sequential, prefix: str = "") -> list[Step]:
    """The modules of a Sequential as a flat list the engine can run without
    ``functional_call``'s per-call overhead."""
    out: list[Step] = []
    for name, m in rest.named_children():
        full = f"{prefix}{name}"
        if type(m) is nn.Sequential:
            out += chain(m, prefix=f"{full}.")
            continue
        keys = {f"{full}.{p}": p for p, _ in m.named_parameters()}
        keys.update({f"{full}.{b}": b for b, _ in m.named_buffers()})
        if not keys:
            out.append(Step("free", m, keys))
        elif type(m) is nn.Linear:
            bias = f"{full}.bias" if m.bias is not None else None
            out.append(Step("linear", m, keys, f"{full}.weight", bias))
        else:
            out.append(Step("call", m, keys))
    return out


def run_chain_batched(
    steps: list[Step],
    tensors: Mapping[str, Tensor],
    h: Tensor,
    scratch: Scratch,
    dest: Tensor | None = None,
) -> Tensor:
    """The chain on ``h: [P, features, N]`` (features first; a tensor the caller owns)
    with per-point weights ``[P, out, in]`` (or shared ``[out, in]``): each linear layer
    is one batched product ``W h + b`` that writes ``[P, out, N]`` into a buffer of
    ``scratch``, and activations are applied in place. Features first,
    no operand is ever transposed, and the logits come out classes-first, the layout in
    which the loss reduces over the classes along contiguous samples. The result is
    written into ``dest`` when given."""
    p = h.shape[0]
    last = len(steps) - 1
    for i, st in enumerate(steps):
        if st.kind == "free":
            inplace = _INPLACE.get(type(st.module))
            h = inplace(st.module, h) if inplace is not None else st.module(h)
            continue
        w = tensors[st.weight]
        w = w if w.ndim == 3 else w.expand(p, *w.shape)  # a frozen layer: shared weights
        b = tensors[st.bias] if st.bias is not None else None
        if b is not None and b.ndim == 1:
            b = b.expand(p, *b.shape)
        shape = (p, w.shape[1], h.shape[2])
        out = dest if dest is not None and i == last else scratch.get(i, shape, h)
        h = torch.bmm(w, h, out=out) if b is None else torch.baddbmm(b.unsqueeze(2), w, h, out=out)
    if dest is not None and h is not dest:
        dest.copy_(h)
        return dest
    return h


def run_chain(
    steps: list[Step],
    tensors: Mapping[str, Tensor],
    h: Tensor,
    bufs: dict[int, Tensor] | None = None,
) -> Tensor:
    """Run the chain at the point ``tensors``.

    With ``bufs`` (one point at a time, not under vmap), ``h`` must be a tensor the
    caller owns: activations are applied in place and every linear layer writes into a
    buffer kept across points, so a point allocates no large tensor. On CPU, fresh
    multi-hundred-kB allocations per layer cost as much as the matmuls themselves.
    """
    for i, st in enumerate(steps):
        if st.kind == "free":
            inplace = _INPLACE.get(type(st.module)) if bufs is not None else None
            h = inplace(st.module, h) if inplace is not None else st.module(h)
        elif st.kind == "linear":
            w = tensors[st.weight]
            b = tensors[st.bias] if st.bias is not None else None
            if bufs is not None and b is not None and h.ndim == 2:
                out = bufs.get(i)
                if out is None or out.shape != (h.shape[0], w.shape[0]) or out.dtype != h.dtype:
                    out = bufs[i] = h.new_empty(h.shape[0], w.shape[0])
                h = torch.addmm(b, h, w.t(), out=out)
            else:
                h = torch.nn.functional.linear(h, w, b)
        else:
            h = functional_call(st.module, {p: tensors[k] for k, p in st.keys.items()}, (h,))
    return h


# Plans worked out per objective, held only as long as the objective lives (keyed by
# what the plan depends on that can change: whether there is a criterion, the mode).
_PLANS: weakref.WeakKeyDictionary[Objective, tuple[tuple[bool, bool], AffinePlan | None]] = (
    weakref.WeakKeyDictionary()
)


def affine_plan(land: Objective) -> AffinePlan | None:
    """How to split the model for the affine first-layer shortcut, or ``None`` (worked
    out once per objective: its model's structure and mode do not change)."""
    key = (land.criterion is None, land.train_mode)
    cached = _PLANS.get(land)
    if cached is not None and cached[0] == key:
        return cached[1]
    plan = _affine_plan(land)
    _PLANS[land] = (key, plan)
    return plan


def _affine_plan(land: Objective) -> AffinePlan | None:
    model = land.model
    if land.criterion is None or land.train_mode:
        return None
    if type(model) in AFFINE_LAYERS:  # the whole model is one affine layer
        keys = {p: p for p, _ in model.named_parameters()}
        if not all(k in land.theta0 for k in keys):
            return None
        return AffinePlan(nn.Sequential(), model, keys, nn.Sequential(), [])
    if not isinstance(model, nn.Sequential):
        return None
    mods = list(model.named_children())
    for i, (name, m) in enumerate(mods):
        own = list(m.parameters()) + list(m.buffers())
        if not own:
            continue
        if type(m) not in AFFINE_LAYERS:
            return None
        keys = {f"{name}.{p}": p for p, _ in m.named_parameters()}
        if not all(k in land.theta0 for k in keys):
            return None  # a frozen first layer: nothing to gain
        prefix = nn.Sequential(*[mm for _, mm in mods[:i]])
        rest = nn.Sequential()
        for n2, m2 in mods[i + 1 :]:
            rest.add_module(n2, m2)
        return AffinePlan(prefix, m, keys, rest, chain(rest))
    return None
