"""The page: sections (one per kind of result, a table of contents), the figures' JSON,
plotly.js embedded gzip-compressed, the script that draws them."""

from __future__ import annotations

import base64
import functools
import gzip
import json
from importlib import resources
from typing import Any

from lossmap.report._assets import SCRIPT, STYLE
from lossmap.report._figures import axis_label, curve_group, plane_group, spectrum_group
from lossmap.report._runs import Run
from lossmap.report._tables import (
    barrier_table,
    eigenvalue_table,
    esc,
    metadata_table,
    sharpness_table,
)
from lossmap.results import Curve, Surface


@functools.lru_cache(maxsize=1)
def plotly_js() -> tuple[str, str, int]:
    """plotly.js as shipped with the ``plotly`` package, gzip-compressed (level 9, no
    time stamp: the same bytes every run) and base64-encoded: ``(text, version, size of
    the original)``. 4.8 MB of JavaScript becomes about 1.4 MB of page."""
    import plotly

    src = resources.files("plotly") / "package_data" / "plotly.min.js"
    raw = src.read_bytes()
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    return base64.b64encode(packed).decode("ascii"), str(plotly.__version__), len(raw)


def _json_script(obj: Any) -> str:
    """JSON for a ``<script type="application/json">``: no NaN, and no ``</`` that could
    end the element early."""
    return json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":")).replace(
        "</", "<\\/"
    )


def _plot_row(figs: list[dict[str, Any]], cols: int) -> str:
    divs = "".join(f'<div class="plot plotly-graph-div" id="{esc(f["id"])}"></div>' for f in figs)
    return f'<div class="row" style="--cols:{cols}">{divs}</div>'


def _controls(gid: str, g: dict[str, Any]) -> str:
    log = g.get("log")
    parts = []
    if g["kind"] == "plane":
        opts = "".join(
            f'<option value="{esc(k)}"{" selected" if k == g["key"] else ""}>'
            f"{esc(k.replace('/', ' '))}</option>"
            for k in g["keys"]
        )
        parts.append(f'<label>statistic <select data-group="{esc(gid)}">{opts}</select></label>')
        log = g["log"][g["key"]]
    checked = " checked" if log else ""
    parts.append(
        f'<label><input type="checkbox" class="log" data-group="{esc(gid)}"{checked}> '
        "log₁₀ scale</label>"
    )
    return f'<div class="controls">{"".join(parts)}</div>'


class Page:
    """Sections accumulated in order, then :meth:`html`."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
        self.figures: list[dict[str, Any]] = []
        self.groups: dict[str, dict[str, Any]] = {}
        self.values: dict[str, Any] = {}

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    def _names(self, kind: type) -> list[str]:
        """The names of the runs' results of ``kind``, in first-seen order."""
        found = (n for r in self.runs for n, v in r.results.items() if isinstance(v, kind))
        return list(dict.fromkeys(found))

    def planes(self) -> None:
        names = self._names(Surface)
        for name in names:
            gid = f"plane-{name}"
            settings, figs, values = plane_group(self.runs, name, gid)
            self.groups[gid], self.values = settings, {**self.values, **values}
            self.figures += figs
            n = len(figs) // 2
            traj = any("trajectory" in r.results[name].meta for r in self.runs if name in r.results)
            rows = (
                _plot_row(figs, 2)
                if n == 1
                else _plot_row(figs[0::2], n) + _plot_row(figs[1::2], n)
            )
            note = (
                "<p class='note'>The loss on the plane θ0 + α d1 + β d2, θ0 (the trained point) "
                "marked; the colour scale is shared by every panel"
                + (" and the runs compared" if n > 1 else "")
                + ". Log scale: contours of log₁₀ of the statistic (values ≤ 0 left out)."
                + (" The line is the training trajectory projected on the plane." if traj else "")
                + "</p>"
            )
            first = next(r.results[name] for r in self.runs if name in r.results)
            axes = f"<p class='note'>{esc(axis_label(first, 0))}<br>{esc(axis_label(first, 1))}</p>"
            title = "Plane with the training trajectory" if traj else f"Plane: {name}"
            self.add(gid, title, note + _controls(gid, settings) + rows + axes)

    def curves(self) -> None:
        names = self._names(Curve)
        for name in names:
            gid = f"curve-{name}"
            settings, figs = curve_group(self.runs, name, gid)
            self.groups[gid] = settings
            self.figures += figs
            metas = [r.results[name].meta for r in self.runs if name in r.results]
            is_path = any("barrier" in m or m.get("view") == "interpolate" for m in metas)
            kind = "Path" if is_path else "Line"
            self.add(gid, f"{kind}: {name}", _controls(gid, settings) + _plot_row(figs, 1))
        if any("barrier" in v.meta for r in self.runs for v in r.results.values()):
            self.add("barriers", "Barriers along paths", barrier_table(self.runs))

    def curvature(self) -> None:
        body = ""
        if any(r.eigenvalues for r in self.runs):
            body += "<h3>Extreme eigenvalues (Lanczos) and trace</h3>" + eigenvalue_table(self.runs)
        if any(r.spectrum is not None for r in self.runs):
            gid = "spectrum"
            settings, figs = spectrum_group(self.runs, gid)
            self.groups[gid] = settings
            self.figures += figs
            body += "<h3>Spectral density</h3>" + _controls(gid, settings) + _plot_row(figs, 1)
        if body:
            self.add("curvature", "Curvature: the Hessian at θ0", body)

    def sharpness(self) -> None:
        if any(r.sharpness for r in self.runs):
            self.add("sharpness", "Sharpness", sharpness_table(self.runs))

    def html(self, title: str) -> str:
        js, version, raw = plotly_js()
        toc = "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t, _ in self.sections)
        body = "".join(
            f'<section id="{esc(a)}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in self.sections
        )
        data = {"figures": self.figures, "groups": self.groups, "values": self.values}
        names = ", ".join(esc(r.name) for r in self.runs)
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<meta name='generator' content='lossmap, plotly.js {esc(version)}'>"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class='lead'>{names} · "
            f"{len(self.figures)} interactive figures (drag to rotate or zoom; double-click "
            "to reset) · works offline</p>"
            "<p id='lossmap-status' class='status'>Drawing the figures…</p>"
            f"<nav class='toc'><b>Contents</b><ol>{toc}</ol></nav>{body}"
            f"<script id='lossmap-data' type='application/json'>{_json_script(data)}</script>"
            f"<script id='lossmap-plotly' type='application/octet-stream' "
            f"data-plotly-version='{esc(version)}' data-bytes='{raw}'>{js}</script>"
            f"<script>{SCRIPT}</script></body></html>\n"
        )


def build(runs: list[Run]) -> str:
    """The whole page for ``runs`` (one run, or several side by side)."""
    page = Page(runs)
    page.planes()
    page.curves()
    page.curvature()
    page.sharpness()
    page.add("metadata", "Runs: model, data, directions, engine, versions", metadata_table(runs))
    what = runs[0].record.get("command", "run") if len(runs) == 1 else "comparison"
    return page.html(f"lossmap report: {what} ({', '.join(r.name for r in runs)})")
