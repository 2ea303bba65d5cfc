"""The report's tables as HTML: the eigenvalues, the sharpness metrics (each with its
definition and paper), the barriers of paths, and each run's metadata. Every run is a
column, so that runs compared read side by side."""

from __future__ import annotations

import html
import math
from typing import Any

from lossmap.report._runs import Run, finite
from lossmap.results import Curve, Result, Surface
from lossmap.sharpness import ANDRIUSHCHENKO, KESKAR, KWON

JIANG = "Jiang, Neyshabur, Mobahi, Krishnan, Bengio 2020, Fantastic Generalization Measures and Where to Find Them (ICLR)"
COHEN = (
    "Cohen, Kaur, Li, Kolter, Talwalkar 2021, Gradient Descent on Neural Networks Typically "
    "Occurs at the Edge of Stability (ICLR)"
)
FRANKLE = (
    "Frankle, Dziugaite, Roy, Carbin 2020, Linear Mode Connectivity and the Lottery Ticket "
    "Hypothesis (ICML)"
)
ENTEZARI = (
    "Entezari, Sedghi, Saukh, Neyshabur 2022, The Role of Permutation Invariance in Linear "
    "Mode Connectivity of Neural Networks (ICLR)"
)

SHARPNESS: dict[str, tuple[str, str]] = {
    "lambda_max": ("λ_max: the largest eigenvalue of the Hessian of the loss at θ0", COHEN),
    "epsilon": (
        "ε-sharpness: 100 · (max L(θ0+δ) − L(θ0)) / (1 + L(θ0)) over the box |δ_i| ≤ ε(|θ0_i| + 1)",
        KESKAR,
    ),
    "adaptive": (
        "adaptive sharpness: max L(θ0+δ) − L(θ0) over ‖δ / |θ0|‖₂ ≤ ρ (invariant to "
        "rescalings of ReLU layers)",
        f"{KWON}; {ANDRIUSHCHENKO}",
    ),
    "average": ("average sharpness: E L(θ0+σz) − L(θ0), z ~ N(0, I), by Monte Carlo", JIANG),
    "average_adaptive": (
        "adaptive average sharpness: E L(θ0+σ|θ0|⊙z) − L(θ0), z ~ N(0, I)",
        ANDRIUSHCHENKO,
    ),
}


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def num(x: Any, digits: int = 4) -> str:
    """A number for a reader: 4 significant digits, thousands separated for integers,
    ``–`` for none or NaN."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        if x == int(x) and abs(x) < 1e15 and digits >= 4 and abs(x) >= 1:
            return f"{int(x):,}"
        return f"{x:.{digits}g}"
    return esc(x) if x is not None else "–"


def _exact(x: Any) -> str:
    """The number as Python writes it back exactly (``repr``), for a data attribute."""
    return repr(float(x)) if finite(x) else "nan"


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table of cells already escaped/formatted."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _run_heads(runs: list[Run]) -> list[str]:
    return [esc(r.name) for r in runs]


def eigenvalue_table(runs: list[Run]) -> str:
    """Each run's ``eigenvalues.csv`` (largest, then smallest), with residuals, and the
    trace estimate of its spectrum."""
    with_rows = [r for r in runs if r.eigenvalues]
    keys = list(
        dict.fromkeys((str(e["which"]), int(e["rank"])) for r in with_rows for e in r.eigenvalues)
    )
    rows = []
    for which, rank in keys:
        cells = [esc(which), str(rank)]
        for r in with_rows:
            e = next(
                (e for e in r.eigenvalues if (e["which"], int(e["rank"])) == (which, rank)), None
            )
            cells.append("–" if e is None else _eigen_cell(e))
        rows.append(cells)
    tr = ["trace", ""]
    for r in with_rows:
        m = r.spectrum.meta if r.spectrum is not None else {}
        tr.append(
            f"{num(m.get('trace'))} ± {num(m.get('trace_stderr'), 2)} "
            f'<span class="small">({esc(m.get("trace_method", "?"))}, {num(m.get("trace_matvecs"))} HVPs)</span>'
            if "trace" in m
            else "–"
        )
    rows.append(tr)
    return table(["end", "rank", *_run_heads(with_rows)], rows, "eig")


def _eigen_cell(e: dict[str, Any]) -> str:
    converged = "" if e.get("converged") in (True, None) else ", not converged"
    return (
        f'<span class="v" data-value="{_exact(e["eigenvalue"])}">{num(e["eigenvalue"], 6)}'
        f'</span> <span class="small">res {num(e["residual"], 2)}{converged}</span>'
    )


def sharpness_table(runs: list[Run]) -> str:
    """The sharpness metrics of every run, each with its one-line definition and paper."""
    with_rows = [r for r in runs if r.sharpness]
    metrics = list(dict.fromkeys(str(s["metric"]) for r in with_rows for s in r.sharpness))
    rows = []
    for m in metrics:
        definition, paper = SHARPNESS.get(m, (m, ""))
        cells = [f"<b>{esc(m)}</b>", f'{esc(definition)}<br><span class="cite">{esc(paper)}</span>']
        for r in with_rows:
            s = next((s for s in r.sharpness if s["metric"] == m), None)
            if s is None:
                cells.append("–")
                continue
            err = f" ± {num(s['stderr'], 2)}" if finite(s.get("stderr")) else ""
            cells.append(
                f'<span class="v" data-value="{_exact(s["value"])}">{num(s["value"])}{err}</span><br>'
                f'<span class="small">{esc(s.get("setting", ""))}</span>'
            )
        rows.append(cells)
    return table(["metric", "definition and source", *_run_heads(with_rows)], rows, "sharp")


def _barriers(b: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, barrier)`` for each statistic of a path's ``meta["barrier"]``; a fitted
    curve's holds the curve's and the straight line's, one level down."""
    out = []
    for key, v in b.items():
        if isinstance(v, dict) and "height" in v:
            out.append((key.replace("/", " "), v))
        elif isinstance(v, dict):
            out += [(f"{k} ({key})", w) for k, w in _barriers(v)]
    return out


def barrier_table(runs: list[Run]) -> str:
    """The loss barrier along each path (straight or fitted curve) of every run: the
    largest excess over the chord between the endpoints (Entezari et al. 2022) and over
    the endpoints' mean (Frankle et al. 2020)."""
    rows = []
    for r in runs:
        for name, res in r.results.items():
            b = res.meta.get("barrier") if isinstance(res, Curve) else None
            for label, v in _barriers(b) if isinstance(b, dict) else []:
                rows.append(
                    [
                        esc(r.name),
                        esc(name),
                        esc(label),
                        f'<span class="v">{num(v.get("height"))}</span>',
                        num(v.get("height_frankle")),
                        num(v.get("t_max")),
                        f"{num(v.get('start'))} → {num(v.get('end'))}",
                    ]
                )
    head = ["run", "path", "statistic", "barrier", "barrier (Frankle)", "at t", "L(0) → L(1)"]
    note = (
        "<p class='cite'>Barrier: max over t of L(t) − ((1 − t) L(0) + t L(1)), the excess "
        f"over the chord ({esc(ENTEZARI)}); Frankle: max L(t) − (L(0) + L(1)) / 2 "
        f"({esc(FRANKLE)}). Accuracies are reported as errors (1 − accuracy).</p>"
    )
    return table(head, rows, "barrier") + note


def _direction_text(res: Result) -> str:
    dirs = res.meta.get("directions") or []
    parts = []
    for i, d in enumerate(dirs):
        if not isinstance(d, dict):
            continue
        bits = [str(d.get("kind", "?"))]
        for k in ("normalization", "seed", "parameter", "which", "eigenvalue"):
            if d.get(k) is not None:
                bits.append(f"{k} {num(d[k])}")
        if d.get("ignored"):
            bits.append(f"ignored: {', '.join(map(str, d['ignored']))}")
        norms = res.meta.get("direction_norms") or []
        if i < len(norms):
            bits.append(f"‖d‖ {num(norms[i])}")
        parts.append(f"d{i + 1}: " + esc("; ".join(bits)))
    if isinstance(res, Surface) and finite(res.meta.get("cosine")):
        parts.append(f"cos(d1, d2) = {float(res.meta['cosine']):.3g}")
    return "<br>".join(parts) or "–"


def _engine_text(res: Result) -> str:
    eng = res.meta.get("engine") or {}
    if not isinstance(eng, dict) or not eng:
        return "–"
    bits = [f"<b>{esc(eng.get('strategy', '?'))}</b>"]
    if finite(eng.get("ms_per_point")):
        bits.append(f"{num(eng['ms_per_point'], 3)} ms/point")
    if finite(eng.get("seconds")):
        bits.append(f"{num(eng['seconds'], 3)} s")
    for k in ("chunk_size", "precision"):
        if eng.get(k) is not None:
            bits.append(f"{k.replace('_', ' ')} {num(eng[k])}")
    if eng.get("reason"):
        bits.append(esc(eng["reason"]))
    return "; ".join(bits)


def _first_meta(run: Run) -> dict[str, Any]:
    for res in run.results.values():
        return res.meta
    return run.spectrum.meta if run.spectrum is not None else {}


def _bytes(n: Any) -> str:
    if not finite(n):
        return "–"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return "–"


def _seconds(x: Any) -> str:
    if not finite(x):
        return "–"
    x = float(x)
    return f"{x:.3g} s" if x < 120 else f"{x / 60:.3g} min"


def _run_rows(r: Run) -> dict[str, str]:
    """The metadata of one run, by row label (formatted)."""
    rec, meta = r.record, _first_meta(r)
    versions = rec.get("versions") or meta.get("versions") or {}
    datasets = meta.get("datasets") or {}
    peak = rec.get("peak_memory")
    peak_v = peak.get("bytes") if isinstance(peak, dict) else peak
    rows = {
        "command": esc(rec.get("command", "–")),
        "command line": "<code>" + esc(" ".join(["lossmap", *rec.get("argv", [])])) + "</code>"
        if rec.get("argv") is not None
        else "–",
        "model": esc(meta.get("model", "–")),
        "parameters": num(meta.get("n_parameters")),
        "dtype, device": esc(
            f"{meta.get('dtype', '?')}, {rec.get('device', meta.get('device', '?'))}"
        ),
        "data sets (samples)": esc(", ".join(f"{k}: {v:,}" for k, v in datasets.items()) or "–"),
        "evaluated in": "train mode" if meta.get("train_mode") else "eval mode",
        "‖θ0‖": num(meta.get("theta0_norm")),
        "seeds": esc(_seeds(r)),
        "total time": _seconds(rec.get("seconds")),
        "peak memory": _bytes(peak_v),
        "versions": esc(", ".join(f"{k} {v}" for k, v in versions.items()) or "–"),
        "run id": esc(rec.get("run_id") or "–"),
        "θ0 sha256": f"<code>{esc(str(rec.get('theta0_sha256') or '–')[:16])}</code>",
    }
    for name, res in r.results.items():
        rows[f"{name}: directions"] = _direction_text(res)
        rows[f"{name}: grid"] = esc(" × ".join(str(n) for n in res.shape)) + (
            " (" + ", ".join(f"{k} {c[0]:.3g} … {c[-1]:.3g}" for k, c in res.coords.items()) + ")"
        )
        rows[f"{name}: engine"] = _engine_text(res)
    if r.spectrum is not None:
        m = r.spectrum.meta
        rows["curvature: cost"] = esc(
            f"{m.get('hvps', '?')} HVPs, {num(m.get('ms_per_hvp'), 3)} ms each, "
            f"{_seconds(m.get('seconds'))}"
        )
    return rows


def _seeds(r: Run) -> str:
    args = r.record.get("arguments") or {}
    seeds = {f"--seed {args['seed']}"} if args.get("seed") is not None else set()
    for res in r.results.values():
        for d in res.meta.get("directions") or []:
            if isinstance(d, dict) and d.get("seed") is not None:
                seeds.add(f"directions {d['seed']}")
    return ", ".join(sorted(seeds)) or "–"


def metadata_table(runs: list[Run]) -> str:
    """The runs' metadata, one column per run."""
    per_run = [_run_rows(r) for r in runs]
    labels = list(dict.fromkeys(k for rows in per_run for k in rows))
    body = [[esc(k), *(rows.get(k, "–") for rows in per_run)] for k in labels]
    return table(["", *_run_heads(runs)], body, "meta")
