"""Figure files: :func:`save` writes one figure atomically, :func:`figures` draws and
saves a result's standard set."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lossmap.plot._style import log_scales, scale_for
from lossmap.plot.curves import curve, spectrum
from lossmap.plot.planes import contour, heatmap, surface3d
from lossmap.results import Curve, Result, Spectrum, Surface, atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pooled(result: Result, stat: str) -> np.ndarray:
    """Every value of ``stat`` in ``result``, over all its data sets."""
    vs = [v.ravel() for k, v in result.values.items() if k.split("/", 1)[-1] == stat]
    return np.concatenate(vs) if vs else np.zeros(0)


def save(
    fig: Figure, path_stem: str | os.PathLike[str], formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write ``fig`` as ``path_stem.<format>`` for each format (PNG at 150 dpi).

    Parent folders are created; the figure is left open. A ``path_stem`` that already
    ends in one of the formats (``"contour.png"``) loses that suffix.

    Args:
        fig: the figure.
        path_stem: file name without the suffix, e.g. ``"runs/p/train_loss_contour"``.
        formats: file formats matplotlib writes (``"png"``, ``"pdf"``, ``"svg"``, ...).

    Returns:
        The paths written.
    """
    if isinstance(formats, str):
        formats = (formats,)
    supported = fig.canvas.get_supported_filetypes()
    bad = [f for f in formats if f not in supported]
    if bad or not formats:
        raise ValueError(
            f"formats {list(formats)!r}: choose from {sorted(supported)}, e.g. ('png', 'pdf')"
        )
    stem = Path(path_stem)
    if stem.suffix.lstrip(".") in formats:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = stem.parent / f"{stem.name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150 if fmt == "png" else "figure", bbox_inches="tight")
        out.append(path)
    return out


def _file_part(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "set"


def figures(
    result: Result | Spectrum,
    out_dir: str | os.PathLike[str],
    *,
    log: bool | Mapping[str, bool] | None = None,
    prefix: str = "",
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Draw and save the standard figures of a result into ``out_dir``.

    A curve: ``curve.<fmt>`` (every statistic and data set). A plane, for each data set:
    ``<set>_loss_contour``, ``<set>_loss_heatmap``, ``<set>_loss_surface3d``, and a
    contour of every other statistic (``<set>_accuracy_contour``). A spectrum:
    ``spectrum.<fmt>``. Each figure is closed after saving.

    Args:
        result: a :class:`~lossmap.results.Curve`, :class:`~lossmap.results.Surface` or
            :class:`~lossmap.results.Spectrum`.
        out_dir: folder for the files (created).
        log: log scale for the loss (``None``: automatic, decided once from all the
            values of the loss in ``result``, every data set, so that all its figures
            agree); other statistics stay linear. A mapping ``{statistic: log?}``
            (:func:`lossmap.plot.log_scales` of every result of a run) gives the whole
            run one scale per quantity.
        prefix: put before every file name (e.g. ``"surface_"``).
        formats: file formats, as in :func:`save`.

    Returns:
        The paths written.
    """
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Callable[[], Figure]]] = []
    if isinstance(result, Curve | Surface):
        # One decision per quantity for all of this result's figures (every data set).
        scales = log_scales(result) if log is None else log
        loss_log = scale_for(scales, "loss", _pooled(result, "loss"))
    if isinstance(result, Curve):
        left = "loss" if "loss" in result.metrics else result.metrics[0]
        logy = scale_for(scales, left, _pooled(result, left))
        jobs.append(("curve", lambda: curve(result, logy=logy)))
    elif isinstance(result, Spectrum):
        jobs.append(("spectrum", lambda: spectrum(result, logy=log is not False)))
    elif isinstance(result, Surface):
        for ds in result.datasets:
            for stat in result.metrics:
                key = f"{ds}/{stat}"
                if key not in result.values:
                    continue
                stem = f"{_file_part(ds)}_{_file_part(stat)}"
                if stat == "loss":
                    kw = {"log": loss_log}
                    jobs.append((f"{stem}_contour", _bind(contour, result, key, **kw)))
                    jobs.append((f"{stem}_heatmap", _bind(heatmap, result, key, **kw)))
                    jobs.append((f"{stem}_surface3d", _bind(surface3d, result, key, **kw)))
                else:
                    jobs.append((f"{stem}_contour", _bind(contour, result, key, log=False)))
    else:
        raise TypeError(
            f"figures() needs a Curve, Surface or Spectrum, got {type(result).__name__}"
        )
    paths: list[Path] = []
    for stem, draw in jobs:
        fig = draw()
        try:
            paths += save(fig, out / f"{prefix}{stem}", formats)
        finally:
            plt.close(fig)
    return paths


def _bind(
    func: Callable[..., Figure], result: Surface, key: str, **kw: Any
) -> Callable[[], Figure]:
    return lambda: func(result, key, **kw)
