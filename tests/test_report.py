"""The HTML report (issue #13): one self-contained page per run folder, or several runs
side by side. The page's figure specifications are parsed and checked against the
result files; then the demo's page is opened in headless Chromium (Debian's package,
driven by Selenium with Debian's chromium-driver): no console error, every figure drawn
with its traces, the shared colour scale recomputed by the page's own script."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli

import lossmap as lm
from lossmap import report
from lossmap.plot import auto_log
from lossmap.report._runs import read_rows
from lossmap.results import Surface


def _spec(page: Path) -> dict[str, Any]:
    text = page.read_text(encoding="utf-8")
    m = re.search(r"<script id='lossmap-data' type='application/json'>(.*?)</script>", text, re.S)
    assert m, "the page holds no figure data"
    return json.loads(m.group(1).replace("<\\/", "</"))


def _z(values: np.ndarray) -> list[list[float | None]]:
    """What the page must hold for a plane's values: plotly's z[beta][alpha], NaN as null."""
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in values.T]


@pytest.fixture
def demo(demo_run: tuple[Path, str]) -> tuple[Path, str]:
    """The demo's run folder (``conftest.demo_run``, built once: a smaller plane than the
    default, the same results) and what the command printed."""
    return demo_run


def test_every_command_writes_the_report_and_names_it(demo: tuple[Path, str]) -> None:
    """The demo (like every command writing a run folder) writes report.html, lists it
    in run.json and prints its path; the page is under 5 MB."""
    out, stdout = demo
    assert f"  report: {out}/report.html" in stdout.splitlines()
    record = json.loads((out / "run.json").read_text())
    assert "report.html" in record["files"]
    page = out / "report.html"
    assert page.is_file() and page.stat().st_size < 5_000_000  # the limit


def test_the_default_demos_page_is_under_5_mb(demo: tuple[Path, str], tmp_path: Path) -> None:
    """`make demo`'s plane is 41 × 41 (the fixture's is smaller, to be quick): the same
    run with a 41 × 41 plane of full-precision values (the longest numbers) in its place
    still makes a page under the issue's 5 MB."""
    out, _ = demo
    folder = tmp_path / "demo41"
    shutil.copytree(out, folder)
    small = lm.load(out / "surface.h5")
    grid = np.linspace(-1.0, 1.0, 41)
    rng = np.random.default_rng(0)
    values = {k: rng.uniform(0.001, 3.0, (41, 41)) for k in small.values}
    Surface({"alpha": grid, "beta": grid}, values, dict(small.meta)).save(folder / "surface.h5")
    page = report.write(folder, tmp_path / "demo41.html")
    assert len(_spec(page)["values"]["plane-surface-0"]) == 4
    assert page.stat().st_size < 5_000_000


def test_the_demo_report_shows_every_result_with_the_files_values(demo: tuple[Path, str]) -> None:
    """The planes' values are the .h5 values (every statistic, exactly), θ0 is marked
    at its value, the trace counts are those of each kind, the spectrum is the file's."""
    out, _ = demo
    spec = _spec(out / "report.html")
    figs = {f["id"]: f for f in spec["figures"]}
    surf = lm.load(out / "surface.h5")
    assert isinstance(surf, Surface)
    three, contour = figs["plane-surface-0-3d"], figs["plane-surface-0-contour"]
    values = spec["values"][three["values"]]
    assert (
        set(values)
        == set(surf.values)
        == {"train/loss", "train/accuracy", "test/loss", "test/accuracy"}
    )
    for k, v in surf.values.items():
        assert values[k] == _z(v), k
    # The first statistic drawn: the train loss, on the scale the figures' rule picks.
    log = auto_log(surf["loss"])
    assert spec["groups"]["plane-surface"]["log"]["train/loss"] == log
    drawn = np.log10(surf["loss"].T) if log else surf["loss"].T
    np.testing.assert_array_equal(np.array(three["data"][0]["z"], dtype=float), drawn)
    np.testing.assert_array_equal(np.array(contour["data"][0]["z"], dtype=float), drawn)
    # θ0 marked where it is, at its value (the grid's centre: odd steps over ±1)
    i = int(np.argmin(np.abs(surf.alpha)))
    assert three["data"][1]["name"].startswith("θ0") and contour["data"][1]["name"].startswith("θ0")
    assert (three["data"][1]["x"], three["data"][1]["y"]) == ([0.0], [0.0])
    assert three["data"][1]["z"] == [float(drawn[i, i])]
    assert (contour["data"][1]["x"], contour["data"][1]["y"]) == ([0.0], [0.0])
    # trace counts: surface + θ0; contour + θ0; a line's 4 statistics + θ0; the path's
    # 4 statistics + its endpoints; the density + the extreme eigenvalues (one probe: no band)
    counts = {k: len(f["data"]) for k, f in figs.items()}
    assert counts == {
        "plane-surface-0-3d": 2,
        "plane-surface-0-contour": 2,
        "curve-line-0": 5,
        "curve-path-0": 5,
        "spectrum-0": 2,
    }
    line = lm.load(out / "line.h5")
    for trace, (k, v) in zip(figs["curve-line-0"]["data"], line.values.items(), strict=False):
        assert trace["name"] == k.replace("/", " ")
        np.testing.assert_array_equal(np.array(trace["y"], dtype=float), v)
    sp = lm.load(out / "spectrum.h5")
    dens = np.array(figs["spectrum-0"]["data"][0]["y"], dtype=float)
    np.testing.assert_array_equal(dens, np.where(sp.density > 0, sp.density, np.nan))
    assert figs["spectrum-0"]["data"][1]["x"] == [*sp.meta["top"], *sp.meta["bottom"]]


def test_the_tables_hold_the_csv_values(demo: tuple[Path, str]) -> None:
    """The eigenvalue table is eigenvalues.csv and the sharpness table sharpness.csv, to
    the last digit, each metric with its definition and paper; the metadata names the
    model's size, the data sizes and the directions' cosine."""
    out, _ = demo
    text = (out / "report.html").read_text(encoding="utf-8")
    eig = re.search(r'<table class="eig">(.*?)</table>', text, re.S)
    assert eig
    shown = re.findall(
        r'<tr><td>(largest|smallest)</td><td>(\d+)</td><td><span class="v" data-value="([^"]+)"',
        eig.group(1),
    )
    rows = read_rows(out / "eigenvalues.csv")
    assert [(w, int(r), float(v)) for w, r, v in shown] == [
        (e["which"], int(e["rank"]), e["eigenvalue"]) for e in rows
    ]
    sharp = re.search(r'<table class="sharp">(.*?)</table>', text, re.S)
    assert sharp
    shown_s = re.findall(
        r"<td><b>([a-z_]+)</b></td><td>([^<]+)<br><span class=\"cite\">([^<]+)</span></td>"
        r'<td><span class="v" data-value="([^"]+)"',
        sharp.group(1),
    )
    rows_s = read_rows(out / "sharpness.csv")
    assert [(m, float(v)) for m, _, _, v in shown_s] == [(r["metric"], r["value"]) for r in rows_s]
    assert all(d.strip() and re.search(r"(19|20)\d\d", c) for _, d, c, _ in shown_s)
    meta = re.search(r'<table class="meta">(.*?)</table>', text, re.S)
    assert meta
    surf = lm.load(out / "surface.h5")
    assert f"{surf.meta['n_parameters']:,}" in meta.group(1)
    assert "train: 1,437, test: 360" in meta.group(1)
    assert f"cos(d1, d2) = {surf.meta['cosine']:.3g}" in meta.group(1)
    assert "affine-vmap" in meta.group(1) or surf.meta["engine"]["strategy"] in meta.group(1)


def test_the_page_needs_no_network(demo: tuple[Path, str]) -> None:
    """No script, style or link from elsewhere; the embedded plotly.js unpacks to the
    plotly package's own file, byte for byte."""
    out, _ = demo
    text = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""<(script|link|img|iframe)[^>]*\s(src|href)\s*=""", text, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert "@import" not in text
    m = re.search(r"<script id='lossmap-plotly'[^>]*>([A-Za-z0-9+/=]+)</script>", text)
    assert m
    shipped = (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    assert gzip.decompress(base64.b64decode(m.group(1))) == shipped


def _other_run(demo_out: Path, folder: Path, scale: float) -> Surface:
    """A second run folder: the demo's plane with its losses multiplied by ``scale``."""
    surf = lm.load(demo_out / "surface.h5")
    assert isinstance(surf, Surface)
    vals = {k: v * scale if k.endswith("/loss") else v for k, v in surf.values.items()}
    other = Surface(surf.coords, vals, dict(surf.meta))
    folder.mkdir()
    other.save(folder / "surface.h5")
    (folder / "run.json").write_text(json.dumps({"command": "plane", "files": ["surface.h5"]}))
    return other


def test_runs_side_by_side_share_one_colour_scale(
    demo: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lossmap report A B`: each plane of both runs on one colour scale, the lowest and
    highest value over both runs (on the scale drawn)."""
    out, _ = demo
    other = _other_run(out, tmp_path / "other", 4.0)
    page = tmp_path / "both.html"
    code, stdout, _ = run_cli(
        ["report", str(out), str(tmp_path / "other"), "--out", str(page)], capsys
    )
    assert code == 0 and str(page) in stdout
    spec = _spec(page)
    mine = lm.load(out / "surface.h5")
    log = spec["groups"]["plane-surface"]["log"]["train/loss"]
    assert log == auto_log(np.concatenate([mine["loss"].ravel(), other["loss"].ravel()]))
    both = np.concatenate([mine["loss"].ravel(), other["loss"].ravel()])
    lo, hi = (np.log10(both.min()), np.log10(both.max())) if log else (both.min(), both.max())
    figs = {f["id"]: f["data"][0] for f in spec["figures"]}
    for n in (0, 1):
        assert (
            figs[f"plane-surface-{n}-contour"]["zmin"],
            figs[f"plane-surface-{n}-contour"]["zmax"],
        ) == (lo, hi)
        assert (figs[f"plane-surface-{n}-3d"]["cmin"], figs[f"plane-surface-{n}-3d"]["cmax"]) == (
            lo,
            hi,
        )
    assert page.stat().st_size < 5_000_000


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No such folder, a folder without results: one line, exit status 2."""
    code, _, err = run_cli(["report", str(tmp_path / "none")], capsys)
    assert code == 2 and "no run folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "holds no lossmap results" in err


def test_a_failed_report_keeps_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report cannot be written: one line of warning, the results and run.json stay."""

    def broken(*a: Any, **k: Any) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(report, "write", broken)
    out = tmp_path / "line"
    code, stdout, err = run_cli(
        ["line", "--example", "linear", "--steps", "3", "--out", str(out)], capsys
    )
    assert code == 0
    warnings = [line for line in err.splitlines() if "report.html" in line]
    assert len(warnings) == 1 and "disk full" in warnings[0] and "lossmap report" in warnings[0]
    record = json.loads((out / "run.json").read_text())
    assert "report.html" not in record["files"] and "line.h5" in record["files"]
    assert not (out / "report.html").exists() and "report:" not in stdout


def test_trajectory_and_paths_in_their_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lossmap trajectory`: the path is drawn over the contours at its recorded PCA
    coordinates; `lossmap connect`: the barrier table holds each path's barrier."""
    import torch

    model = lm.examples.linear_regression().model
    cps = []
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        sd = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
        cps.append(str(tmp_path / f"c{i}.pt"))
        torch.save(sd, cps[-1])
    out = tmp_path / "traj"
    args = ["trajectory", *cps, "--example", "linear", "--steps", "5", "--out", str(out)]
    assert run_cli(args, capsys)[0] == 0
    surf = lm.load(out / "surface.h5")
    contour = next(f for f in _spec(out / "report.html")["figures"] if f["kind"] == "contour")
    path = next(t for t in contour["data"] if t["name"] == "training trajectory")
    coords = np.asarray(surf.meta["trajectory"]["coords"])
    assert (path["x"], path["y"]) == (coords[:, 0].tolist(), coords[:, 1].tolist())
    out = tmp_path / "connect"
    args = ["connect", cps[0], cps[1], "--example", "linear", "--steps", "5", "--epochs", "1"]
    assert run_cli([*args, "--out", str(out)], capsys)[0] == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    table = re.search(r'<table class="barrier">(.*?)</table>', text, re.S)
    assert table
    path = lm.load(out / "path.h5").meta["barrier"]["train/loss"]
    curve = lm.load(out / "curve.h5").meta["barrier"]["curve"]["train/loss"]
    for name, stat, b in (("path", "train loss", path), ("curve", "train loss (curve)", curve)):
        row = f'<td>{name}</td><td>{stat}</td><td><span class="v">{b["height"]:.4g}</span>'
        assert row in table.group(1), name


# ------------------------------------------------------------------ the browser
def _browser() -> tuple[str, str]:
    """Debian's chromium and chromedriver, or a skip saying what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(make test does it as root where apt-get works)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[dev]'")
    return chromium, driver


def _open(page: Path, shot: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    chromium, driver_path = _browser()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        # WebGL (the 3-D surfaces) in software: no GPU here
        "--enable-unsafe-swiftshader",
        "--use-angle=swiftshader",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver_path))
    d.set_page_load_timeout(300)
    d.get(page.resolve().as_uri())
    return d


_DRAWN = """return Array.from(document.querySelectorAll('.plotly-graph-div')).map(g => ({
    id: g.id, traces: (g.data || []).length, svg: g.querySelectorAll('.main-svg').length,
    canvas: Array.from(g.querySelectorAll('canvas')).filter(c => c.width > 0 && c.height > 0).length,
    points: (g._fullData || []).map(t => (t.z || t.y || []).length)}))"""


def _wait_drawn(d: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, 300, poll_frequency=0.5).until(
        lambda d: d.execute_script(
            "return document.body.dataset.rendered || "
            "(document.getElementById('lossmap-status').className.includes('error') && 'error')"
        )
    )


def test_the_demo_report_renders_in_a_browser(
    demo: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headless Chromium: no console error, every figure drawn (an SVG, a WebGL canvas
    for the 3-D surface) with the traces of its specification; a screenshot is kept."""
    out, _ = demo
    page = out / "report.html"
    spec = _spec(page)
    d = _open(page, tmp_path / "demo.png", monkeypatch)
    try:
        _wait_drawn(d)
        status = d.execute_script("return document.getElementById('lossmap-status').textContent")
        assert status == "", status
        drawn = {g["id"]: g for g in d.execute_script(_DRAWN)}
        d.set_window_size(1400, d.execute_script("return document.body.scrollHeight"))
        d.save_screenshot(str(tmp_path / "demo.png"))
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        d.quit()
    assert errors == []
    assert set(drawn) == {f["id"] for f in spec["figures"]}
    for f in spec["figures"]:
        g = drawn[f["id"]]
        assert g["traces"] == len(f["data"]) and g["svg"] > 0, g
        assert all(n > 0 for n in g["points"][:1]), g
        if f["kind"] == "surface3d":
            assert g["canvas"] > 0, g
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_the_page_rescales_two_runs_together(
    demo: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Choosing another statistic in the page: both runs' contours take the lowest and
    highest test loss over the two runs (the page's own script computes them)."""
    out, _ = demo
    other = _other_run(out, tmp_path / "other", 4.0)
    page = report.write([out, tmp_path / "other"], tmp_path / "both.html")
    mine = lm.load(out / "surface.h5")
    d = _open(page, tmp_path / "both.png", monkeypatch)
    try:
        _wait_drawn(d)
        d.execute_script(
            "const s = document.querySelector('select[data-group=\"plane-surface\"]');"
            "s.value = 'test/loss'; s.dispatchEvent(new Event('change'));"
        )
        ranges = d.execute_script(
            "return [0, 1].map(n => { const t = document.getElementById("
            "'plane-surface-' + n + '-contour').data[0]; return [t.zmin, t.zmax]; })"
        )
        log = d.execute_script(
            "return document.querySelector('input.log[data-group=\"plane-surface\"]').checked"
        )
        d.save_screenshot(str(tmp_path / "both.png"))
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        d.quit()
    assert errors == []
    both = np.concatenate([mine["test/loss"].ravel(), other["test/loss"].ravel()])
    assert log == auto_log(both)
    lo, hi = (np.log10(both.min()), np.log10(both.max())) if log else (both.min(), both.max())
    for zmin, zmax in ranges:
        assert zmin == pytest.approx(lo, rel=1e-12) and zmax == pytest.approx(hi, rel=1e-12)
