"""Results: values on a 1-D or 2-D grid of coordinates, with metadata and files.

``Curve`` (a line or a path: coordinates ``alpha``) and ``Surface`` (a plane:
``alpha``, ``beta``; values ``[len(alpha), len(beta)]``, ``indexing="ij"``). Values
are keyed ``"<data set>/<statistic>"``; the bare statistic (``"loss"``) means the
first data set. Non-finite values are stored as NaN.

Files: HDF5 (``save`` / :func:`load`), a tidy CSV (``alpha,beta,loss,...``), NPZ,
VTK for ParaView (``to_vtk``, through ``meshio``).
A line or plane made by :func:`lossmap.line` / :func:`lossmap.plane` also keeps its
direction tensors (``Result.directions``, one ``{parameter name: array}`` per axis, in
the dtype they had), saved in the HDF5 file's group ``directions`` so that
:func:`lossmap.directions.load` can reuse them; files without the group load with
``directions = None``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = ["Curve", "Result", "Spectrum", "Surface", "broaden", "load"]

FORMAT_VERSION = 1


def jsonable(x: Any) -> Any:
    """``x`` with numpy/torch scalars and arrays, tuples and non-string keys turned into
    what :func:`json.dumps` writes (metadata of results and run folders)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


@dataclass
class Result:
    """Common part of :class:`Curve` and :class:`Surface`."""

    kind: ClassVar[str] = "result"
    coords: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    directions: list[dict[str, np.ndarray]] | None = None
    """The tensors of the axes' directions (``None``: not kept, e.g. a path)."""

    def __post_init__(self) -> None:
        if self.directions is not None:
            self.directions = [{k: np.asarray(v) for k, v in d.items()} for d in self.directions]
        self.coords = {k: np.asarray(v, dtype=np.float64) for k, v in self.coords.items()}
        shape = self.shape
        vals = {}
        for k, v in self.values.items():
            a = np.asarray(v, dtype=np.float64)
            if a.shape != shape:
                raise ValueError(
                    f"values {k!r} have shape {a.shape}, expected {shape} "
                    f"({' x '.join(self.coords)}, indexing='ij')"
                )
            vals[k] = np.where(np.isfinite(a), a, np.nan)
        self.values = vals

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords.values())

    @property
    def theta0(self) -> tuple[float, ...] | None:
        """Coordinates of the trained point θ0 (0 along direction axes, θ0's own value
        along raw parameter axes); ``None`` for paths between two points."""
        if self.meta.get("view") == "interpolate":
            return None
        coords = self.meta.get("theta0_coords")
        if coords is None:
            dirs = self.meta.get("directions") or []
            if any(isinstance(d, Mapping) and d.get("kind") == "axis" for d in dirs):
                return None  # raw parameter axes, and θ0's values were not recorded
            return tuple(0.0 for _ in self.coords)
        return tuple(float(c) for c in coords)

    @property
    def default_dataset(self) -> str:
        return str(self.meta.get("default_dataset") or next(iter(self.values)).split("/")[0])

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(k.split("/")[0] for k in self.values))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(k.split("/", 1)[1] for k in self.values))

    def key(self, name: str) -> str:
        """The full ``"<data set>/<statistic>"`` key for ``name``."""
        full = name if "/" in name else f"{self.default_dataset}/{name}"
        if full not in self.values:
            raise KeyError(f"no values {name!r}; available: {', '.join(self.values)}")
        return full

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[self.key(name)]

    def __contains__(self, name: object) -> bool:
        try:
            self.key(str(name))
        except KeyError:
            return False
        return True

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an HDF5 file (atomically: a temporary file renamed into place), with
        the direction tensors when the result holds them."""
        return _write_h5(
            Path(path),
            self.kind,
            self.meta,
            {"coords": self.coords, "values": self.values},
            directions=self.directions,
        )

    def to_npz(self, path: str | os.PathLike[str]) -> Path:
        """Write coordinates and values (keys with ``/`` as ``__``) to ``.npz``."""
        path = Path(path)
        arrays = {**self.coords, **{k.replace("/", "__"): v for k, v in self.values.items()}}
        arrays["meta"] = np.array(json.dumps(jsonable(self.meta)))
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        return path

    def columns(self) -> list[str]:
        """CSV value columns: bare names for the first data set, ``set/stat`` for others."""
        d = self.default_dataset + "/"
        return [k[len(d) :] if k.startswith(d) else k for k in self.values]

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """A tidy CSV: one row per grid point, coordinates first (``alpha,beta,loss,...``)."""
        path = Path(path)
        grids = np.meshgrid(*self.coords.values(), indexing="ij")
        cols = [g.ravel() for g in grids] + [v.ravel() for v in self.values.values()]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*self.coords, *self.columns()])
            for row in zip(*cols, strict=True):
                w.writerow(["nan" if not np.isfinite(x) else repr(float(x)) for x in row])
        return path

    def to_vtk(self, path: str | os.PathLike[str]) -> Path:
        """Write the result as a VTK mesh that ParaView opens (through ``meshio``).

        A :class:`Surface` becomes the quad mesh of its grid, point ``(i, j)`` at
        ``(alpha[i], beta[j], loss[i, j])`` (the first data set's loss as height, so
        the file shows the landscape as it is drawn); a :class:`Curve` the polyline
        ``(alpha[i], loss[i], 0)``. Every value is a point-data field under its
        ``"<data set>/<statistic>"`` key, plus ``log_loss`` = ``log10(loss)`` (NaN
        where the loss is not positive). Points are numbered ``i * len(beta) + j``
        (``indexing="ij"``, as :meth:`to_csv` writes its rows). A non-finite loss is
        a NaN height.

        The format follows the suffix: ``.vtk`` (legacy VTK, binary) or ``.vtu``
        (VTK XML unstructured grid); ParaView reads both. Written atomically.

        Raises:
            ValueError: another suffix, or a result with more than two axes.
        """
        import meshio

        path = Path(path)
        if path.suffix.lower() not in (".vtk", ".vtu"):
            raise ValueError(
                f"{path.name}: a VTK file needs the suffix .vtk (legacy) or .vtu (XML)"
            )
        loss = self[self.key("loss")] if "loss" in self else next(iter(self.values.values()))
        grids = np.meshgrid(*self.coords.values(), indexing="ij")
        if len(grids) == 2:
            points = np.stack([grids[0].ravel(), grids[1].ravel(), loss.ravel()], axis=1)
            cells = [("quad", _grid_quads(*self.shape))]
        elif len(grids) == 1:
            n = self.shape[0]
            points = np.stack([grids[0], loss, np.zeros(n)], axis=1)
            cells = [("line", np.stack([np.arange(n - 1), np.arange(1, n)], axis=1))]
        else:
            raise ValueError(f"to_vtk writes curves and surfaces, not {len(grids)}-D grids")
        with np.errstate(divide="ignore", invalid="ignore"):
            log_loss = np.where(loss > 0, np.log10(np.where(loss > 0, loss, 1.0)), np.nan)
        fields = {k: v.ravel() for k, v in self.values.items()}
        fields["log_loss"] = log_loss.ravel()
        mesh = meshio.Mesh(points, cells, point_data=fields)
        with atomic_path(path) as tmp:
            meshio.write(tmp, mesh)
        return path

    def summary(self, name: str = "loss") -> dict[str, Any]:
        """Value at θ0 (when θ0 is a grid point), min/max and where, non-finite count."""
        v = self[name]
        out: dict[str, Any] = {"key": self.key(name), "nonfinite": int(np.isnan(v).sum())}
        t0 = self.theta0
        if t0 is not None:
            idx = tuple(
                int(np.argmin(np.abs(c - x))) for c, x in zip(self.coords.values(), t0, strict=True)
            )
            on_grid = all(
                abs(c[i] - x) <= 1e-9 * max(1.0, float(np.ptp(c)))
                for c, i, x in zip(self.coords.values(), idx, t0, strict=True)
            )
            if on_grid:
                out["at_theta0"] = float(v[idx])
        if np.isfinite(v).any():
            imin, imax = np.nanargmin(v), np.nanargmax(v)
            for tag, flat in (("min", imin), ("max", imax)):
                where = np.unravel_index(flat, v.shape)
                out[tag] = float(v[where])
                out[f"arg{tag}"] = [
                    float(c[i]) for c, i in zip(self.coords.values(), where, strict=True)
                ]
        return out


@dataclass
class Curve(Result):
    """Values along one coordinate ``alpha`` (a line through θ0, or a path)."""

    kind: ClassVar[str] = "curve"

    @property
    def alpha(self) -> np.ndarray:
        return self.coords["alpha"]


@dataclass
class Surface(Result):
    """Values on a plane: ``values[k][i, j]`` at ``(alpha[i], beta[j])``."""

    kind: ClassVar[str] = "surface"

    @property
    def alpha(self) -> np.ndarray:
        return self.coords["alpha"]

    @property
    def beta(self) -> np.ndarray:
        return self.coords["beta"]


def _grid_quads(n_alpha: int, n_beta: int) -> np.ndarray:
    """The quads ``[(n_alpha-1)(n_beta-1), 4]`` of a grid whose point ``(i, j)`` is
    number ``i * n_beta + j``, each counter-clockwise in the (alpha, beta) plane.

    >>> _grid_quads(2, 3).tolist()
    [[0, 3, 4, 1], [1, 4, 5, 2]]
    """
    idx = np.arange(n_alpha * n_beta).reshape(n_alpha, n_beta)
    a, b = idx[:-1, :-1], idx[1:, :-1]
    quads = np.stack([a, b, idx[1:, 1:], idx[:-1, 1:]], axis=-1)
    return quads.reshape(-1, 4).astype(np.int64)


def broaden(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``(1/P) Σ_p Σ_i w_pi N(grid; node_pi, σ²)`` for ``nodes``/``weights`` ``[P, m]``."""
    w = np.atleast_2d(weights)
    d = (np.asarray(grid)[:, None] - np.atleast_2d(nodes).reshape(-1)[None, :]) / sigma
    dens: np.ndarray = (np.exp(-0.5 * d**2) / (sigma * math.sqrt(2 * math.pi))) @ (
        w / w.shape[0]
    ).reshape(-1)
    return dens


@dataclass
class Spectrum:
    """A Hessian eigenvalue density (stochastic Lanczos quadrature).

    ``density`` on ``grid`` integrates to 1; ``nodes`` / ``weights`` (``[n_probes, m]``)
    are the Ritz values and quadrature weights of each probe, to re-broaden; ``meta``
    may hold extreme eigenvalues and a trace estimate of the same run.
    """

    kind: ClassVar[str] = "spectrum"
    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    matvecs: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def density_stderr(self) -> np.ndarray:
        """The standard error of ``density`` at each grid point, from the probes.

        Each probe's own broadened density ``ρ_p`` (the same σ and normalisation as
        ``density``, whose value is their mean) gives ``std_p(ρ_p) / √P`` (``ddof=1``):
        a band ``density ± 2·density_stderr`` over ``grid``. All NaN with one probe.
        Computed from ``nodes`` and ``weights``, so files saved before it existed have it.

        >>> grid = np.linspace(-1.0, 3.0, 5)
        >>> sp = Spectrum(grid, grid * 0, np.array([[0.0, 2.0], [0.0, 2.0]]),
        ...               np.full((2, 2), 0.5), 0.5, 4)
        >>> sp.density_stderr.round(12).tolist()   # two identical probes: no spread
        [0.0, 0.0, 0.0, 0.0, 0.0]
        """
        nodes, weights = np.atleast_2d(self.nodes), np.atleast_2d(self.weights)
        probes = nodes.shape[0]
        if probes < 2:
            return np.full(np.shape(self.grid), np.nan)
        each = np.stack(
            [broaden(nodes[p], weights[p], self.grid, self.sigma) for p in range(probes)]
        )
        area = float(np.trapezoid(each.mean(axis=0), self.grid))
        scale = 1.0 / area if area > 0 else 1.0
        stderr: np.ndarray = each.std(axis=0, ddof=1) / math.sqrt(probes) * scale
        return stderr

    def moments(self, k: int = 2) -> list[float]:
        """``E[λ^j]`` for j = 1..k under the quadrature (exact for low degrees)."""
        w = self.weights / self.weights.shape[0]
        return [float(np.sum(w * self.nodes**j)) for j in range(1, k + 1)]

    def broaden(self, sigma: float, grid: np.ndarray | None = None) -> np.ndarray:
        """The density re-broadened with a Gaussian of width ``sigma`` on ``grid``."""
        return broaden(
            self.nodes, self.weights, self.grid if grid is None else np.asarray(grid), sigma
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an HDF5 file (atomically)."""
        arrays = {
            "grid": self.grid,
            "density": self.density,
            "nodes": self.nodes,
            "weights": self.weights,
        }
        attrs = {"sigma": self.sigma, "matvecs": self.matvecs}
        return _write_h5(Path(path), self.kind, self.meta, {"arrays": arrays}, attrs)


# The names atomic_path gives its temporary files: "<name>.<8 random>.tmp<suffix>"
# (tempfile.mkstemp's random part is 8 characters of [a-z0-9_]).
_TEMPORARY = re.compile(r"^.+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """The temporary files :func:`atomic_path` left in ``folder`` (not below it) when
    its process was killed before the rename: regular files only, never links."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        try:
            regular = stat.S_ISREG(os.lstat(p).st_mode)
        except OSError:
            continue
        if regular and _TEMPORARY.match(p.name):
            out.append(p)
    return out


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto it when the block succeeds and
    removed when it fails: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp" + path.suffix, dir=path.parent)
    mask = os.umask(0o022)  # os has no getter: set it and put it back
    os.umask(mask)
    try:  # mkstemp makes it 0600; a result file gets the mode open() would give it
        os.chmod(tmp, 0o666 & ~mask)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = str(path)  # a full disk is reported with the file it was writing
        raise


def _write_h5(
    path: Path,
    kind: str,
    meta: Mapping[str, Any],
    groups: Mapping[str, Mapping[str, np.ndarray]],
    attrs: Mapping[str, Any] | None = None,
    *,
    directions: list[dict[str, np.ndarray]] | None = None,
) -> Path:
    """Write groups of arrays and JSON metadata to ``path`` via a temporary file + rename,
    so a reader never sees a half-written file."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["lossmap_kind"] = kind
        f.attrs["lossmap_format"] = FORMAT_VERSION
        f.attrs["meta"] = json.dumps(jsonable(meta))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for gname, arrays in groups.items():
            g = f.create_group(gname)
            for k, v in arrays.items():
                g.create_dataset(k, data=v)
            f.attrs[f"{gname}_order"] = json.dumps(list(arrays))
        if directions is not None:
            _write_directions(f, directions)
    return path


def _write_directions(f: Any, directions: list[dict[str, np.ndarray]]) -> None:
    """Group ``directions``: one subgroup per axis (``"0"``, ``"1"``), one dataset per
    parameter (``"p0"``, ``"p1"``... : a parameter's name may hold any character), the
    names in the attribute ``names``. Arrays are stored as they are (float32 stays
    float32, float64 stays float64)."""
    top = f.create_group("directions")
    top.attrs["count"] = len(directions)
    for i, d in enumerate(directions):
        g = top.create_group(str(i))
        g.attrs["names"] = json.dumps(list(d))
        for j, a in enumerate(d.values()):
            g.create_dataset(f"p{j}", data=a)


def _read_directions(f: Any, path: Path) -> list[dict[str, np.ndarray]] | None:
    """The direction tensors of a file written by :func:`_write_directions` (``None``
    when it has none), checked like the values: hard-linked numeric datasets held in the
    file itself, the same names and shapes on every axis, a bounded total size."""
    import h5py

    if "directions" not in f:
        return None

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid lossmap result ({why}); was it altered?")

    top = f["directions"]
    count = top.attrs.get("count")
    if not isinstance(top, h5py.Group) or not isinstance(count, int | np.integer):
        raise bad("its directions group has no count")
    out: list[dict[str, np.ndarray]] = []
    total = 0
    for i in range(int(count)):
        g = top.get(str(i))
        try:
            names = json.loads(g.attrs["names"]) if isinstance(g, h5py.Group) else None
        except (KeyError, TypeError, ValueError):
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad(f"direction {i} has no readable list of parameter names")
        datasets = []
        for j in range(len(names)):
            link = g.get(f"p{j}", getlink=True)
            ds = g.get(f"p{j}")
            if not isinstance(link, h5py.HardLink) or not isinstance(ds, h5py.Dataset):
                raise bad(f"directions/{i}/p{j} is missing or a link")
            if ds.dtype.kind != "f" or ds.external or ds.is_virtual:
                raise bad(f"directions/{i}/p{j} is not a floating-point dataset of the file")
            total += math.prod(ds.shape)
            datasets.append(ds)
        if total > _MAX_DIRECTION_VALUES:
            raise bad(f"its directions hold more than {_MAX_DIRECTION_VALUES:,} numbers")
        shapes = {n: ds.shape for n, ds in zip(names, datasets, strict=True)}
        if out and shapes != {k: a.shape for k, a in out[0].items()}:
            raise bad(f"direction {i} has other parameters or shapes than direction 0")
        out.append({n: ds[()] for n, ds in zip(names, datasets, strict=True)})
    return out


_KINDS: dict[str, type[Result]] = {"curve": Curve, "surface": Surface}

# The largest grid lossmap computes (lossmap.slices.MAX_POINTS), and a bound on all the
# values a file may make load() read: a small compressed file can declare a huge
# dataset, so shapes are checked against the grid before anything is read.
_MAX_GRID = 10_000_000
_MAX_VALUES = 100_000_000
# The direction tensors a file may make load() read: two directions of a model of
# two billion parameters.
_MAX_DIRECTION_VALUES = 4_000_000_000


def _checked_shapes(f: Any, kind: str, path: Path) -> dict[str, dict[str, Any]]:
    """The datasets load() will read, after checking that each is a numeric dataset whose
    shape is the one the result's own grid (coordinate axes) implies.

    Raises ValueError naming the first dataset that does not fit."""
    import h5py

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid lossmap result ({why}); was it altered?")

    groups: dict[str, dict[str, Any]] = {}
    for g in ("coords", "values", "arrays"):
        if g not in f:
            continue
        try:
            order = json.loads(f.attrs[f"{g}_order"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"no readable list of {g!r}") from None
        if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
            raise bad(f"the list of {g!r} is not a list of names")
        groups[g] = {}
        for k in order:
            link = f[g].get(k, getlink=True) if k in f[g] else None
            if not isinstance(link, h5py.HardLink):  # no links into other files
                raise bad(f"{g}/{k} is missing or a link")
            ds = f[g][k]
            if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiub":
                raise bad(f"{g}/{k} is not a numeric dataset")
            if ds.external or ds.is_virtual:  # data kept in other files
                raise bad(f"{g}/{k} stores its data in another file")
            groups[g][k] = ds
    if kind == "spectrum":
        a = groups.get("arrays", {})
        if not {"sigma", "matvecs"} <= set(f.attrs):
            raise bad("a spectrum needs its sigma and matvecs")
        if set(a) != {"grid", "density", "nodes", "weights"}:
            raise bad("a spectrum needs grid, density, nodes and weights")
        n = a["grid"].shape
        if len(n) != 1 or a["density"].shape != n or n[0] > _MAX_GRID:
            raise bad(f"density {a['density'].shape} does not match its grid {n}")
        m = a["nodes"].shape
        if len(m) != 2 or a["weights"].shape != m or math.prod(m) > _MAX_GRID:
            raise bad(f"weights {a['weights'].shape} do not match the nodes {m}")
        return groups
    coords, values = groups.get("coords", {}), groups.get("values", {})
    if not coords or not values:
        raise bad("no coordinates or no values")
    for k, ds in coords.items():
        if len(ds.shape) != 1 or ds.shape[0] > _MAX_GRID:
            raise bad(f"coordinate {k!r} has shape {ds.shape}, not one axis of a grid")
    grid = tuple(ds.shape[0] for ds in coords.values())
    if math.prod(grid) > _MAX_GRID or math.prod(grid) * len(values) > _MAX_VALUES:
        raise bad(f"a grid of {' x '.join(map(str, grid))} with {len(values)} values is too large")
    for k, ds in values.items():
        if ds.shape != grid:
            raise bad(f"values {k!r} have shape {ds.shape}, but the grid is {grid}")
    return groups


def load(path: str | os.PathLike[str]) -> Result | Spectrum:
    """Read a result written by ``save`` (an HDF5 file): Curve, Surface or Spectrum.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a lossmap result (or is damaged).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no result file at {path}")
    try:
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("lossmap_kind")
            if isinstance(kind, bytes):
                kind = kind.decode()
            if kind not in (*_KINDS, "spectrum"):
                raise ValueError(f"{path} is not a lossmap result file (no known 'lossmap_kind')")
            try:
                meta = json.loads(f.attrs["meta"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path} has no readable metadata; was it altered?") from None
            if not isinstance(meta, dict):
                raise ValueError(f"{path}: its metadata is not a mapping; was it altered?")
            checked = _checked_shapes(f, kind, path)
            groups = {g: {k: ds[()] for k, ds in arrays.items()} for g, arrays in checked.items()}
            extra = {k: f.attrs[k] for k in ("sigma", "matvecs") if k in f.attrs}
            directions = _read_directions(f, path) if kind != "spectrum" else None
    except OSError as e:
        raise ValueError(f"cannot read {path} as HDF5 ({e}); is it a lossmap result?") from None
    if kind == "spectrum":
        a = groups["arrays"]
        return Spectrum(
            a["grid"],
            a["density"],
            a["nodes"],
            a["weights"],
            float(extra["sigma"]),
            int(extra["matvecs"]),
            meta,
        )
    return _KINDS[kind](groups["coords"], groups["values"], meta, directions)
