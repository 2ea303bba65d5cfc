"""Results: values on a 1-D or 2-D grid of coordinates, with metadata and files.

``Curve`` (a line or a path: coordinates ``alpha``) and ``Surface`` (a plane:
``alpha``, ``beta``; values ``[len(alpha), len(beta)]``, ``indexing="ij"``). Values
are keyed ``"<data set>/<statistic>"``; the bare statistic (``"loss"``) means the
first data set. Non-finite values are stored as NaN.

Files: HDF5 (``save`` / :func:`load`), a tidy CSV (``alpha,beta,loss,...``), NPZ.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = ["Curve", "Result", "Surface", "load"]

FORMAT_VERSION = 1


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
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

    def __post_init__(self) -> None:
        self.coords = {k: np.asarray(v, dtype=np.float64) for k, v in self.coords.items()}
        shape = self.shape
        vals = {}
        for k, v in self.values.items():
            a = np.asarray(v, dtype=np.float64).reshape(shape)
            vals[k] = np.where(np.isfinite(a), a, np.nan)
        self.values = vals

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords.values())

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
        """Write an HDF5 file (atomically: a temporary file renamed into place)."""
        import h5py

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["lossmap_kind"] = self.kind
                f.attrs["lossmap_format"] = FORMAT_VERSION
                f.attrs["meta"] = json.dumps(_jsonable(self.meta))
                g = f.create_group("coords")
                for k, v in self.coords.items():
                    g.create_dataset(k, data=v)
                g = f.create_group("values")
                for k, v in self.values.items():
                    g.create_dataset(k, data=v)
                f.attrs["value_order"] = json.dumps(list(self.values))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def to_npz(self, path: str | os.PathLike[str]) -> Path:
        """Write coordinates and values (keys with ``/`` as ``__``) to ``.npz``."""
        path = Path(path)
        arrays = {**self.coords, **{k.replace("/", "__"): v for k, v in self.values.items()}}
        arrays["meta"] = np.array(json.dumps(_jsonable(self.meta)))
        np.savez(path, **arrays)  # type: ignore[arg-type]
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
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*self.coords, *self.columns()])
            for row in zip(*cols, strict=True):
                w.writerow(["nan" if not np.isfinite(x) else repr(float(x)) for x in row])
        return path

    def summary(self, name: str = "loss") -> dict[str, Any]:
        """Value at θ0 (the grid point at coordinate 0, if any), min/max and where, NaNs."""
        v = self[name]
        out: dict[str, Any] = {"key": self.key(name), "nonfinite": int(np.isnan(v).sum())}
        origin = tuple(int(np.argmin(np.abs(c))) for c in self.coords.values())
        if all(np.isclose(c[i], 0.0) for c, i in zip(self.coords.values(), origin, strict=True)):
            out["at_origin"] = float(v[origin])
        if np.isfinite(v).any():
            imin, imax = np.nanargmin(v), np.nanargmax(v)
            for tag, flat in (("min", imin), ("max", imax)):
                idx = np.unravel_index(flat, v.shape)
                out[tag] = float(v[idx])
                out[f"arg{tag}"] = [
                    float(c[i]) for c, i in zip(self.coords.values(), idx, strict=True)
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


_KINDS: dict[str, type[Result]] = {"curve": Curve, "surface": Surface}


def load(path: str | os.PathLike[str]) -> Result:
    """Read a result written by ``save`` (an HDF5 file).

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
            if kind not in _KINDS:
                raise ValueError(f"{path} is not a lossmap result file (no known 'lossmap_kind')")
            meta = json.loads(f.attrs["meta"])
            coords = {k: f["coords"][k][()] for k in f["coords"]}
            order = json.loads(f.attrs["value_order"])
            values = {k: f["values"][k][()] for k in order}
    except OSError as e:
        raise ValueError(f"cannot read {path} as HDF5 ({e}); is it a lossmap result?") from None
    # Keep the coordinate order of the kind (HDF5 lists members alphabetically).
    names = ["alpha", "beta"] if kind == "surface" else ["alpha"]
    return _KINDS[kind]({k: coords[k] for k in names}, values, meta)
