"""The package's shape, as ARCHITECTURE.md states it: layers, no cycle, no back-edge.

Every import of a lossmap module counts, wherever it is written: at module level, inside
a function, or under ``TYPE_CHECKING``. A module may import modules of lower layers and,
inside one package (``lossmap.evaluate``, ``lossmap.cli``, ...), its siblings; the
graph of all modules must have no cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "ARCHITECTURE.md"

# Lowest first. Keep in step with the table in ARCHITECTURE.md (checked below).
LAYERS: list[tuple[str, ...]] = [
    (
        "lossmap._checks",
        "lossmap._version",
        "lossmap.vectors",
        "lossmap.results",
        "lossmap.store",
        "lossmap.linalg",
        "lossmap.models",
        "lossmap.distributed",
        "lossmap.devices",
    ),
    ("lossmap.data",),
    ("lossmap.objective",),
    ("lossmap.hvp",),
    ("lossmap.evaluate",),
    ("lossmap.landscape", "lossmap.curvature"),
    ("lossmap.hessian", "lossmap.examples", "lossmap.zoo"),
    ("lossmap.directions", "lossmap.ggn"),
    ("lossmap.slices", "lossmap.sharpness"),
    ("lossmap.trajectory", "lossmap.connect"),
    ("lossmap.plot", "lossmap.track"),
    ("lossmap.report",),  # the run's HTML page, over the figures' style
    ("lossmap",),  # the package's __init__: the public API, re-exported
    ("lossmap.cli",),  # the command uses the public API
    ("lossmap.__main__",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / "lossmap").rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The lossmap modules ``module`` imports (``from pkg import sub`` is ``pkg.sub``)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lossmap"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base.split(".")[0] != "lossmap":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {_owner(m) for m in found} - {module}


def _owner(name: str) -> str:
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def _layer(module: str) -> int:
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")
    return best


def _top_package(module: str) -> str:
    """``lossmap.evaluate.memory`` -> ``lossmap.evaluate``; a plain module is its own."""
    parts = module.split(".")
    return (
        ".".join(parts[:2]) if len(parts) > 2 or MODULES[module].name == "__init__.py" else module
    )


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    for m in MODULES:
        _layer(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_lower_layer_to_a_higher_one(module: str) -> None:
    bad = [
        t
        for t in sorted(GRAPH[module])
        if _layer(t) >= _layer(module) and _top_package(t) != _top_package(module)
    ]
    assert not bad, (
        f"{module} (layer {_layer(module)}) imports {bad} (layers "
        f"{[_layer(t) for t in bad]}): a lower module must not import a higher or equal one"
    )


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(t) :], t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_architecture_page_lists_the_same_layers() -> None:
    """ARCHITECTURE.md's layer table names the modules of each layer in this order."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|", text, flags=re.MULTILINE)
    assert rows, "ARCHITECTURE.md has no layer table (| n | modules | ... |)"
    page = [tuple(sorted(re.findall(r"`([\w.]+)`", mods))) for _, mods in rows]
    short = [tuple(sorted(p.removeprefix("lossmap.") for p in layer)) for layer in LAYERS]
    assert page == short


def test_no_reach_into_another_modules_private_names() -> None:
    """``from lossmap.x import _name`` across modules, or ``obj._name`` on a landscape or
    operator from outside its class, is a reach; private modules (``_checks``,
    ``cli._common``) may be imported by name, their public names used."""
    reaches = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lossmap"):
                reaches += [
                    f"{m}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__version__"
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and isinstance(node.value, ast.Name | ast.Attribute)
                and _names_lossmap_object(node.value)
            ):
                reaches.append(f"{m}:{node.lineno}: {ast.unparse(node)}")
    assert not reaches, "\n".join(reaches)


# Names that hold lossmap objects in the code base (landscapes, operators, modules).
_LOSSMAP_OBJECTS = re.compile(
    r"^(land|la|lb|fit_land|landscape|objective|op|self\.land|self\.objective|lm|V|H|S)$"
)


def _names_lossmap_object(node: ast.expr) -> bool:
    return bool(_LOSSMAP_OBJECTS.match(ast.unparse(node)))


MAX_FUNCTION_LINES = 100  # exclusive: every function is shorter
MAX_MODULE_LINES = 600


def test_functions_and_modules_stay_small() -> None:
    """One idea per function and per module: functions under 100 lines (docstring
    included), modules at most 600."""
    long_functions, long_modules = [], []
    for m, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        n_lines = text.count("\n")
        if n_lines > MAX_MODULE_LINES:
            long_modules.append(f"{m}: {n_lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - start + 1
                if length >= MAX_FUNCTION_LINES:
                    long_functions.append(f"{m}.{node.name}: {length} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)
