"""The page's own script and style sheet, as text (no file to ship beside the package).

The script unpacks the embedded plotly.js (gzip, base64) with the browser's
``DecompressionStream``, draws every figure, and wires the controls (statistic, log
scale) of each group of figures, whose colour scale is shared.
"""

SCRIPT = r"""
// The report's own script: unpack the embedded plotly.js (gzip, base64) with the
// browser's DecompressionStream, draw every figure, and wire the controls (statistic,
// log scale) of each group of figures, whose colour scale is shared.
(function () {
  "use strict";
  const status = document.getElementById("lossmap-status");
  function fail(msg) {
    status.textContent = msg;
    status.className = "status error";
    console.error(msg);
  }
  async function loadPlotly() {
    const b64 = document.getElementById("lossmap-plotly").textContent.trim();
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const code = await new Response(stream).text();
    const s = document.createElement("script");
    s.textContent = code;
    document.head.appendChild(s);
    if (typeof window.Plotly === "undefined") throw new Error("plotly.js did not load");
  }
  function transform(z, log) {
    return z.map((row) => row.map((v) => (v === null ? null : log ? (v > 0 ? Math.log10(v) : null) : v)));
  }
  function range(zs) {
    let lo = Infinity, hi = -Infinity;
    for (const z of zs) for (const row of z) for (const v of row) {
      if (v !== null && Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    }
    return lo <= hi ? [lo, hi] : [null, null];
  }
  function statTitle(key, log) {
    const name = key.split("/").join(" ");
    return log ? "log\u2081\u2080 " + name : name;
  }
  function updatePlane(spec, gid) {
    const sel = document.querySelector('select[data-group="' + gid + '"]');
    const box = document.querySelector('input.log[data-group="' + gid + '"]');
    const key = sel.value, log = box.checked;
    const figs = spec.figures.filter((f) => f.group === gid && spec.values[f.values][key]);
    const zs = figs.map((f) => transform(spec.values[f.values][key], log));
    const [lo, hi] = range(zs);
    const t = statTitle(key, log);
    figs.forEach((f, n) => {
      const div = document.getElementById(f.id), z = zs[n];
      if (f.kind === "surface3d") {
        Plotly.restyle(div, { z: [z], cmin: lo, cmax: hi, name: t, "colorbar.title.text": t }, [0]);
        if (f.theta0_index) {
          const [i, j] = f.theta0_index;
          Plotly.restyle(div, { z: [[z[j][i]]] }, [1]);
        }
        const lay = { "scene.zaxis.title.text": t, "title.text": f.title + t };
        if (lo !== null) lay["scene.zaxis.range"] = [lo, hi];
        Plotly.relayout(div, lay);
      } else {
        Plotly.restyle(div, { z: [z], zmin: lo, zmax: hi, name: t, "colorbar.title.text": t }, [0]);
        Plotly.relayout(div, { "title.text": f.title + t });
      }
    });
  }
  function updateCurve(spec, gid) {
    const box = document.querySelector('input.log[data-group="' + gid + '"]');
    for (const f of spec.figures.filter((f) => f.group === gid)) {
      const lay = { "yaxis.type": box.checked ? "log" : "linear" };
      if (box.checked && f.logrange) lay["yaxis.range"] = f.logrange;
      else lay["yaxis.autorange"] = true;
      Plotly.relayout(document.getElementById(f.id), lay);
    }
  }
  function wire(spec) {
    for (const [gid, g] of Object.entries(spec.groups)) {
      const sel = document.querySelector('select[data-group="' + gid + '"]');
      const box = document.querySelector('input.log[data-group="' + gid + '"]');
      if (g.kind === "plane") {
        sel.addEventListener("change", () => { box.checked = !!g.log[sel.value]; updatePlane(spec, gid); });
        box.addEventListener("change", () => updatePlane(spec, gid));
      } else if (box) {
        box.addEventListener("change", () => updateCurve(spec, gid));
      }
    }
  }
  async function main() {
    if (typeof DecompressionStream === "undefined") {
      fail("This browser cannot unpack the report's embedded plotly.js (it lacks " +
           "DecompressionStream: use Chrome/Edge 80+, Firefox 113+ or Safari 16.4+).");
      return;
    }
    await loadPlotly();
    const spec = JSON.parse(document.getElementById("lossmap-data").textContent);
    const config = { responsive: true, displaylogo: false, toImageButtonOptions: { format: "svg" } };
    for (const f of spec.figures) {
      await Plotly.newPlot(document.getElementById(f.id), f.data, f.layout, config);
    }
    wire(spec);
    status.textContent = "";
    status.className = "status";
    document.body.dataset.rendered = String(spec.figures.length);
  }
  main().catch((e) => fail("The report could not be drawn: " + e));
})();
"""

STYLE = """
:root { --fg: #1b1b1b; --muted: #5a5a5a; --rule: #d9d9d9; --accent: #0072B2; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       margin: 0 auto; padding: 1.5rem 2rem 4rem; max-width: 1500px; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .6rem; padding-top: .6rem; border-top: 1px solid var(--rule); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
p.lead { color: var(--muted); margin: 0 0 1rem; }
nav.toc { background: #f6f6f6; padding: .6rem 1rem; border-radius: 6px; display: inline-block; }
nav.toc ol { margin: .2rem 0; padding-left: 1.3rem; }
a { color: var(--accent); }
.status { color: var(--muted); font-style: italic; }
.status.error { color: #b00020; font-style: normal; font-weight: 600; }
.row { display: grid; gap: 1rem; grid-template-columns: repeat(var(--cols, 1), minmax(0, 1fr)); }
.plot { min-height: 440px; border: 1px solid #eee; border-radius: 4px; }
.controls { margin: .3rem 0 .6rem; display: flex; gap: 1.2rem; align-items: center; flex-wrap: wrap; }
.controls select { font: inherit; padding: .1rem .3rem; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .92rem; }
th, td { border-bottom: 1px solid var(--rule); padding: .3rem .7rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td .v, .v { font-variant-numeric: tabular-nums; font-weight: 600; white-space: nowrap; }
.small, .cite { color: var(--muted); font-size: .85em; }
table.meta td:first-child { white-space: nowrap; color: var(--muted); }
code { font-size: .88em; background: #f4f4f4; padding: 0 .2em; border-radius: 3px; word-break: break-all; }
.note { color: var(--muted); font-size: .9rem; max-width: 70rem; }
"""
