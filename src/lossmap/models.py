"""Facts about a user's ``nn.Module`` that lossmap needs: its train/eval mode (set for a
while, then restored), calls at other parameters, the wrappers around it, its tied
tensors and its normalisation layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["NORM_TYPES", "Caller", "set_mode", "tied_names", "unwrap"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = (*NORM_TYPES, nn.RMSNorm)


@contextlib.contextmanager
def set_mode(module: nn.Module, train: bool) -> Iterator[None]:
    """Set train/eval mode for the duration, then restore every submodule's own flag."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.train(train)
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class Caller:
    """Stands in for the model inside a custom ``loss(model, batch)``: calls it at θ."""

    def __init__(self, module: nn.Module, tensors: dict[str, Tensor]) -> None:
        self._module = module
        self._tensors = tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._module, self._tensors, args, kwargs)


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The module inside ``nn.DataParallel`` / ``DistributedDataParallel`` /
    ``torch.compile`` wrappers (nested too), and the prefix they add to state-dict keys.

    Functional calls cannot go through these wrappers (DataParallel refuses the
    stateless API; a compiled module's donated buffers refuse double backward), and the
    wrapped module computes the same function.
    """
    prefix = ""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model, prefix = model.module, prefix + "module."
            continue
        inner = getattr(model, "_orig_mod", None)
        if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
            model, prefix = inner, prefix + "_orig_mod."
            continue
        return model, prefix


def tied_names(model: nn.Module) -> dict[str, str]:
    """Tied parameters and buffers: ``{alias: name}`` for every name that refers to a
    tensor already listed under ``name`` (e.g. a language model's ``lm_head.weight``
    tied to its token embedding). ``named_parameters()`` lists each tensor once, under
    ``name``; a ``state_dict()`` holds both keys."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, t in named:
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases
