"""The report's figures as plotly figure specifications (plain ``dict``s of ``data`` and
``layout``, drawn by plotly.js in the page), one function per kind of result.

Every figure is a ``dict`` with ``id``, ``group`` (figures whose controls and colour
scale are shared: one result across the runs compared), ``kind``, ``data``, ``layout``
and, for the planes, ``values``: each statistic's values as plotly draws them
(``z[j][i]`` at ``(alpha[i], beta[j])``, the transpose of the result's
``indexing="ij"`` array; NaN as ``null``), so the page can switch statistic and scale.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lossmap.plot import COLORMAP, auto_log
from lossmap.report._runs import Run
from lossmap.results import Curve, Result, Spectrum, Surface

_FONT = {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 12}
# Lines and markers: the colour-blind-safe qualitative palette of Okabe & Ito (2008),
# black first for the θ0 marks.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
THETA0 = "#000000"
DENSITY_DECADES = 8.0
"""The spectral density's log axis shows this many decades below its highest value."""


def colorscale(n: int = 11) -> list[list[Any]]:
    """:data:`lossmap.plot.COLORMAP` (the figures' colour map) as a plotly colour scale:
    the same colours in the report as in the matplotlib figures."""
    from matplotlib import colormaps

    cmap = colormaps[COLORMAP]
    out = []
    for t in np.linspace(0.0, 1.0, n):
        r, g, b, _ = cmap(float(t))
        out.append([round(float(t), 4), f"rgb({round(255 * r)},{round(255 * g)},{round(255 * b)})"])
    return out


def nulls(a: np.ndarray) -> Any:
    """``a`` as nested lists with NaN/inf as ``None`` (JSON ``null``: a gap in plotly)."""
    a = np.asarray(a, dtype=np.float64)
    obj = np.where(np.isfinite(a), a, np.nan).astype(object)
    obj[~np.isfinite(a)] = None
    return obj.tolist()


def scaled(z: np.ndarray, log: bool) -> np.ndarray:
    """``log10(z)`` (values ``<= 0`` as NaN) on a log scale, ``z`` else."""
    z = np.asarray(z, dtype=np.float64)
    if not log:
        return z
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)


def stat_title(key: str, log: bool) -> str:
    name = key.replace("/", " ")
    return f"log₁₀ {name}" if log else name


def axis_label(result: Result, i: int) -> str:
    """What the i-th coordinate measures, in words (the direction's metadata)."""
    symbol = "αβ"[i] if i < 2 else f"c{i}"
    if result.meta.get("view") == "interpolate" or "barrier" in result.meta:
        return "t (0 = a, 1 = b)"
    dirs = result.meta.get("directions")
    d = dirs[i] if isinstance(dirs, list) and i < len(dirs) and isinstance(dirs[i], dict) else {}
    kind = d.get("kind")
    if kind == "random":
        norm = d.get("normalization") or "none"
        rel = {"filter": ", ‖θ‖-relative per filter", "layer": ", ‖θ‖-relative per layer"}.get(
            str(norm), ", ‖θ‖-relative" if norm == "model" else ""
        )
        return f"{symbol}: {norm}-normalised random direction {int(d.get('index', i)) + 1}{rel}"
    if kind == "axis":
        return f"{symbol}: parameter {d.get('label') or d.get('parameter')}"
    if kind == "pca":
        ev = d.get("explained_variance_ratio")
        share = f", {100 * float(ev):.1f} % of the path's variance" if ev is not None else ""
        return f"{symbol}: principal direction {int(d.get('index', i)) + 1} of the path{share}"
    if kind == "hessian":
        return f"{symbol}: Hessian eigenvector (λ = {float(d.get('eigenvalue', math.nan)):.4g})"
    if kind == "between":
        return f"{symbol}: b − a"
    return f"{symbol}: {kind}" if kind else symbol


def _layout(title: str, **more: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
        "font": _FONT,
        "margin": {"l": 90, "r": 20, "t": 50, "b": 60},
        "height": 440,
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        **more,
    }


def _theta0_index(s: Surface) -> tuple[int, int] | None:
    t0 = s.theta0
    if t0 is None:
        return None
    i, j = (int(np.argmin(np.abs(c - x))) for c, x in zip((s.alpha, s.beta), t0, strict=True))
    return i, j


def plane_group(
    runs: list[Run], name: str, group: str
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The 3-D surface and the contour of result ``name`` in each run, with one colour
    scale over all of them: ``(group settings, figures, values)``; ``values[fig["values"]]``
    maps each statistic to its values as drawn on a linear scale."""
    surfs = [(r, s) for r in runs if isinstance(s := r.results.get(name), Surface)]
    keys = list(dict.fromkeys(k for _, s in surfs for k in s.values))
    first = surfs[0][1]
    key = first.key("loss") if "loss" in first else keys[0]
    logs = {
        k: auto_log(
            np.concatenate([s.values[k].ravel() for _, s in surfs if k in s.values]),
            k.split("/")[-1],
        )
        for k in keys
    }
    lo, hi = shared_range([s.values.get(key) for _, s in surfs], logs[key])
    figs: list[dict[str, Any]] = []
    values: dict[str, dict[str, Any]] = {}
    prefix = (lambda run: f"{run}: ") if len(surfs) > 1 else (lambda run: "")
    for n, (run, s) in enumerate(surfs):
        tag = f"{group}-{n}"
        values[tag] = {k: nulls(v.T) for k, v in s.values.items()}
        ij = _theta0_index(s)
        common = {"group": group, "values": tag, "theta0_index": ij, "run": run.name}
        title = "3-D surface: " + prefix(run.name)
        figs.append(
            {
                "id": f"{tag}-3d",
                "kind": "surface3d",
                "title": title,
                **common,
                **_surface3d(s, key, logs[key], lo, hi, ij, title),
            }
        )
        title = "contours: " + prefix(run.name)
        figs.append(
            {
                "id": f"{tag}-contour",
                "kind": "contour",
                "title": title,
                **common,
                **_contour(s, key, logs[key], lo, hi, ij, title),
            }
        )
    settings = {"keys": keys, "key": key, "log": logs, "kind": "plane"}
    return settings, figs, values


def shared_range(arrays: list[np.ndarray | None], log: bool) -> tuple[float | None, float | None]:
    """The lowest and highest finite value over ``arrays`` on the scale drawn."""
    vals = [scaled(a, log) for a in arrays if a is not None]
    fin = np.concatenate([v[np.isfinite(v)] for v in vals]) if vals else np.array([])
    if fin.size == 0:
        return None, None
    return float(fin.min()), float(fin.max())


def _surface3d(
    s: Surface, key: str, log: bool, lo: Any, hi: Any, ij: Any, title: str
) -> dict[str, Any]:
    z = scaled(s.values[key].T, log)
    data: list[dict[str, Any]] = [
        {
            "type": "surface",
            "name": stat_title(key, log),
            "x": s.alpha.tolist(),
            "y": s.beta.tolist(),
            "z": nulls(z),
            "colorscale": colorscale(),
            "cmin": lo,
            "cmax": hi,
            "colorbar": {"title": {"text": stat_title(key, log)}, "len": 0.8},
            "contours": {"z": {"show": True, "usecolormap": True, "project": {"z": True}}},
        }
    ]
    if ij is not None:
        i, j = ij
        data.append(
            {
                "type": "scatter3d",
                "mode": "markers",
                "name": "θ0 (trained point)",
                "x": [float(s.alpha[i])],
                "y": [float(s.beta[j])],
                "z": nulls(np.array([z[j, i]])),
                "marker": {"color": THETA0, "size": 5, "symbol": "diamond"},
            }
        )
    scene = {
        # short titles: long ones are cut at the scene's edge (the contour spells them out)
        "xaxis": {"title": {"text": "α"}},
        "yaxis": {"title": {"text": "β"}},
        # the runs compared on one z range, as on one colour scale
        "zaxis": {
            "title": {"text": stat_title(key, log)},
            **({"range": [lo, hi]} if lo is not None else {}),
        },
        "camera": {"eye": {"x": 1.65, "y": -1.65, "z": 1.05}},
        "aspectmode": "cube",
    }
    layout = _layout(title + stat_title(key, log), scene=scene, showlegend=False, height=500)
    return {"data": data, "layout": layout}


def _contour(
    s: Surface, key: str, log: bool, lo: Any, hi: Any, ij: Any, title: str
) -> dict[str, Any]:
    z = scaled(s.values[key].T, log)
    data: list[dict[str, Any]] = [
        {
            "type": "contour",
            "name": stat_title(key, log),
            "x": s.alpha.tolist(),
            "y": s.beta.tolist(),
            "z": nulls(z),
            "colorscale": colorscale(),
            "zmin": lo,
            "zmax": hi,
            "ncontours": 25,
            "contours": {"coloring": "fill", "showlines": True},
            "line": {"width": 0.5, "color": "rgba(255,255,255,0.5)"},
            "colorbar": {"title": {"text": stat_title(key, log)}},
        }
    ]
    if ij is not None:
        t0 = s.theta0 or (0.0, 0.0)
        data.append(_marker2d([float(t0[0])], [float(t0[1])], "θ0 (trained point)"))
    traj = s.meta.get("trajectory")
    if isinstance(traj, dict) and traj.get("coords"):
        c = np.asarray(traj["coords"], dtype=np.float64)
        labels = traj.get("labels") or list(range(len(c)))
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "training trajectory",
                "x": c[:, 0].tolist(),
                "y": c[:, 1].tolist(),
                "text": [f"checkpoint {lab}" for lab in labels],
                "line": {"color": PALETTE[1], "width": 2},
                "marker": {"color": PALETTE[1], "size": 6},
            }
        )
    layout = _layout(
        title + stat_title(key, log),
        xaxis={
            "title": {"text": axis_label(s, 0)},
            "range": [float(s.alpha[0]), float(s.alpha[-1])],
        },
        # a vertical title in two lines: one is longer than the plot is high
        yaxis={
            "title": {"text": axis_label(s, 1).replace(", ", ",<br>", 1)},
            "range": [float(s.beta[0]), float(s.beta[-1])],
        },
        # the legend below the axis title, inside the figure (a wider bottom margin)
        legend={"orientation": "h", "x": 0.0, "y": -0.16, "yanchor": "top"},
        margin={"l": 90, "r": 20, "t": 50, "b": 100},
        height=500,
    )
    return {"data": data, "layout": layout}


def _marker2d(x: list[float], y: list[float], name: str) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "markers",
        "name": name,
        "x": x,
        "y": y,
        "marker": {
            "color": THETA0,
            "size": 11,
            "symbol": "x",
            "line": {"width": 1, "color": "white"},
        },
    }


def curve_group(
    runs: list[Run], name: str, group: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Result ``name`` (a line or a path) of every run in one figure: the losses on the
    left axis, the other statistics (accuracy) dashed on the right, θ0 marked."""
    curves = [(r, c) for r in runs if isinstance(c := r.results.get(name), Curve)]
    data: list[dict[str, Any]] = []
    losses: list[np.ndarray] = []
    for n, (run, c) in enumerate(curves):
        prefix = f"{run.name}: " if len(curves) > 1 else ""
        for m, (k, v) in enumerate(c.values.items()):
            is_loss = k.endswith("/loss")
            losses += [v] if is_loss else []
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": prefix + k.replace("/", " "),
                    "x": c.alpha.tolist(),
                    "y": nulls(v),
                    "yaxis": "y" if is_loss else "y2",
                    "line": {
                        "color": PALETTE[(n * 3 + m) % len(PALETTE)],
                        "dash": "solid" if is_loss else "dash",
                    },
                }
            )
        if c.theta0 is None and "loss" in c and c.alpha.min() <= 0.0 and c.alpha.max() >= 1.0:
            ends = [int(np.argmin(np.abs(c.alpha - t))) for t in (0.0, 1.0)]
            ab = _marker2d(
                [0.0, 1.0], nulls(c["loss"][ends]), prefix + "endpoints a (t = 0), b (t = 1)"
            )
            ab["marker"]["symbol"] = "circle"
            data.append(ab)
        t0 = c.theta0
        if t0 is not None and "loss" in c:
            i = int(np.argmin(np.abs(c.alpha - t0[0])))
            m0 = _marker2d(
                [float(c.alpha[i])], nulls(c["loss"][i : i + 1]), prefix + "θ0 (trained point)"
            )
            data.append(m0)
    log = bool(losses) and auto_log(np.concatenate([v.ravel() for v in losses]))
    first = curves[0][1]
    layout = _layout(
        f"{name}: {_curve_title(first)}",
        xaxis={"title": {"text": axis_label(first, 0)}, "zeroline": False},
        yaxis={
            "title": {"text": "loss"},
            "type": "log" if log else "linear",
            "exponentformat": "power",
        },
        yaxis2={
            "title": {"text": "accuracy"},
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
            "tickmode": "auto",
        },
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 70, "r": 70, "t": 50, "b": 60},
    )
    fig = {"id": f"{group}-0", "kind": "curve", "group": group, "data": data, "layout": layout}
    return {"kind": "curve", "log": log}, [fig]


def _curve_title(c: Curve) -> str:
    if "barrier" in c.meta or c.meta.get("view") == "interpolate":
        return "the loss along the path from a (t = 0) to b (t = 1)"
    return "the loss along a line through θ0"


def spectrum_group(runs: list[Run], group: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The eigenvalue densities of every run in one figure (log density), each with its
    ±2 standard-error band where it has several probes, and its extreme eigenvalues."""
    data: list[dict[str, Any]] = []
    specs = [(r, r.spectrum) for r in runs if r.spectrum is not None]
    top = max(float(np.nanmax(sp.density)) for _, sp in specs if sp is not None)
    # Gaussian tails fall to 1e-100 between separated eigenvalues: show 8 decades below
    # the highest density (the rest is below any resolution of the quadrature).
    logrange = [math.log10(top) - DENSITY_DECADES, math.log10(top) + 0.5] if top > 0 else None
    for n, (run, sp) in enumerate(specs):
        assert sp is not None
        colour = PALETTE[n % len(PALETTE)]
        prefix = f"{run.name}: " if len(specs) > 1 else ""
        data.append(_density_trace(sp, prefix, colour))
        err = sp.density_stderr
        if np.isfinite(err).any():
            band = np.concatenate([sp.density + 2 * err, (sp.density - 2 * err)[::-1]])
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": prefix + "±2 standard errors",
                    "x": np.concatenate([sp.grid, sp.grid[::-1]]).tolist(),
                    "y": nulls(np.where(band > 0, band, np.nan)),
                    "fill": "toself",
                    "line": {"width": 0},
                    "fillcolor": "rgba(0,0,0,0.12)",
                }
            )
        ext = [float(v) for v in (*sp.meta.get("top", []), *sp.meta.get("bottom", []))]
        if ext:
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": prefix + "extreme eigenvalues (Lanczos)",
                    "x": ext,
                    "y": [float(np.nanmax(sp.density)) * 1.5] * len(ext),
                    "marker": {"symbol": "line-ns-open", "size": 14, "color": colour},
                }
            )
    layout = _layout(
        "Hessian eigenvalue density (stochastic Lanczos quadrature)",
        xaxis={"title": {"text": "eigenvalue λ"}, "zeroline": False},
        yaxis={
            "title": {"text": "density"},
            "type": "log",
            "range": logrange,
            "exponentformat": "power",
        },
        legend={"orientation": "h", "y": -0.2},
    )
    fig: dict[str, Any] = {"id": f"{group}-0", "kind": "spectrum", "group": group}
    fig.update(data=data, layout=layout, logrange=logrange)
    return {"kind": "curve", "log": True}, [fig]


def _density_trace(sp: Spectrum, prefix: str, colour: str) -> dict[str, Any]:
    d = np.where(sp.density > 0, sp.density, np.nan)
    return {
        "type": "scatter",
        "mode": "lines",
        "name": prefix + f"density (σ = {sp.sigma:.3g}, {sp.matvecs} HVPs)",
        "x": sp.grid.tolist(),
        "y": nulls(d),
        "line": {"color": colour, "width": 2},
    }
