"""The engine package's shape: what it imports, what it reads, how it dispatches, and
that it keeps nothing on (or alive of) the landscape."""

from __future__ import annotations

import ast
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap.evaluate import STRATEGIES, Span, run
from lossmap.evaluate.strategies import KERNELS, Evaluator

ENGINE = Path(lm.__file__).parent / "evaluate"

# The engine's modules, each importing only those before it (and __init__ all of them).
ORDER = ["scratch", "points", "kernels", "losses", "memory", "strategies", "choice", "runner"]
# What the engine may import from lossmap outside itself: the layers below it.
BELOW = {
    "lossmap._checks",
    "lossmap.data",
    "lossmap.devices",
    "lossmap.distributed",
    "lossmap.objective",
    "lossmap.store",
    "lossmap.vectors",
}


def _lossmap_imports(path: Path) -> set[str]:
    """Every ``lossmap`` module a file imports, anywhere in it (inside functions and
    ``if TYPE_CHECKING:`` too); ``from lossmap.x import y`` counts as ``lossmap.x.y``
    where ``y`` is a module of the engine, ``from lossmap import v`` as ``lossmap.v``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "lossmap"}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            mod = node.module or ""
            if mod.split(".")[0] != "lossmap":
                continue
            if mod in ("lossmap", "lossmap.evaluate"):
                out |= {f"{mod}.{a.name}" for a in node.names}
            else:
                out.add(mod)
    return out


def test_the_package_holds_the_modules_the_order_names() -> None:
    assert sorted(p.stem for p in ENGINE.glob("*.py")) == sorted([*ORDER, "__init__"])


@pytest.mark.parametrize("name", ORDER)
def test_the_engine_imports_only_layers_below_it(name: str) -> None:
    """No import from lossmap above the engine (landscape, hessian, slices, ...), not
    even under TYPE_CHECKING, and within the engine only modules listed before."""
    earlier = {f"lossmap.evaluate.{m}" for m in ORDER[: ORDER.index(name)]}
    imports = _lossmap_imports(ENGINE / f"{name}.py")
    wrong = imports - BELOW - earlier
    assert not wrong, f"evaluate/{name}.py imports {sorted(wrong)}"


def test_the_package_init_only_re_exports_its_modules() -> None:
    imports = _lossmap_imports(ENGINE / "__init__.py")
    assert imports <= {f"lossmap.evaluate.{m}" for m in ORDER}, imports


@pytest.mark.parametrize("name", [*ORDER, "__init__"])
def test_the_engine_reads_no_private_name_of_another_module(name: str) -> None:
    """No ``from x import _y`` and no ``obj._attr`` except on ``self``: the objective is
    read through theta0, fixed, datasets and the other public accessors."""
    tree = ast.parse((ENGINE / f"{name}.py").read_text())
    reaches = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            reaches += [a.name for a in node.names if a.name.startswith("_")]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        ):
            reaches.append(f"{ast.unparse(node.value)}.{node.attr} (line {node.lineno})")
    assert not reaches, f"evaluate/{name}.py reaches into {reaches}"


def test_strategies_are_a_mapping_and_unknown_names_list_the_choices(mlp_data) -> None:
    assert STRATEGIES == ("auto", "loop", "vmap", "affine", "affine-vmap")
    assert tuple(KERNELS) == STRATEGIES[1:]
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    points = Span(land.point(), [], np.zeros((3, 0)))
    with pytest.raises(ValueError, match="unknown strategy 'fast'; choose one of auto, loop, vmap"):
        run(land, points, strategy="fast")
    with pytest.raises(ValueError, match="choose one of loop, vmap, affine, affine-vmap"):
        Evaluator(land, points, "auto")  # auto picks a strategy; it is not one


def _mlp(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 4, generator=g)
    y = torch.randint(0, 3, (50,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    return model, x, y


def _mlp_landscape(seed: int = 0) -> lm.Landscape:
    model, x, y = _mlp(seed)
    return lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))


def test_the_engine_keeps_nothing_on_the_landscape_and_lets_it_die() -> None:
    land = _mlp_landscape()
    before = set(vars(land))
    d1, d2 = lm.directions.random(land, 2, seed=0)
    surf = lm.plane(land, d1, d2, steps=(4, 3))
    assert surf.meta["engine"]["strategy"] == "affine-vmap"  # the plan and sizes were used
    assert set(vars(land)) == before
    ref = weakref.ref(land)
    del land, surf
    gc.collect()
    assert ref() is None, "the engine holds the landscape alive"


def test_a_landscape_moved_with_at_evaluates_as_one_built_there() -> None:
    """``at`` copies the objective: the copy works out the engine's plan and sizes for
    itself and gets, bit for bit, the values (and the chunks) of a landscape built at
    that point from scratch."""
    land = _mlp_landscape()
    d1, d2 = lm.directions.random(land, 2, seed=0)
    lm.plane(land, d1, d2, steps=(4, 3))  # the original's caches are filled
    state = {k: v + 0.05 for k, v in land.point().items()}
    moved = land.at(state)
    model, x, y = _mlp()
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(state[k])
    fresh = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    a = lm.plane(moved, d1, d2, steps=(5, 4))
    b = lm.plane(fresh, d1, d2, steps=(5, 4))
    assert a.meta["engine"]["strategy"] == b.meta["engine"]["strategy"]
    assert a.meta["engine"]["chunk_size"] == b.meta["engine"]["chunk_size"]
    for k in a.values:
        assert a.values[k].tobytes() == b.values[k].tobytes(), k
