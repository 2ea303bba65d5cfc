"""``Tracker``: sharpness measured every N steps of the user's own training loop."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from lossmap.landscape import Landscape
from lossmap.results import atomic_path
from lossmap.store import Journal, JournalMismatch, hash_tensors
from lossmap.track._measures import MEASURES, Context, check_measures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

JOURNAL = "journal.sqlite"
HISTORY = "history.csv"
FIGURE = "track.png"


def _trainable(model: nn.Module) -> dict[str, Any]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _check_tensorboard(tensorboard: object) -> None:
    if isinstance(tensorboard, bool):
        return
    if not (hasattr(tensorboard, "add_scalar") and hasattr(tensorboard, "add_figure")):
        raise TypeError(
            "tensorboard must be True, False or a torch.utils.tensorboard.SummaryWriter, "
            f"got {type(tensorboard).__name__}"
        )


class Tracker:
    """Sharpness during training: λ_max, the trace, or any sharpness measure, recorded
    every ``every`` steps of a training loop, journaled, plotted.

    The loop calls ``tracker.step(model, step)`` after each update (``step``: the
    number of updates done so far; call it with 0 before the first for θ0); at the
    steps that are multiples of ``every`` the tracker builds ``land_fn(model)`` (a
    :class:`~lossmap.landscape.Landscape` of the model as it is then: the landscape
    snapshots its parameters) and measures it. The model is never written to.

    λ_max is :func:`lossmap.hessian.eigenvalues` (relative ``tol`` 1e-4), each
    measurement after the first warm-started from the last top eigenvector by
    :func:`lossmap.trajectory.warm_lambda_max`, the code
    :func:`lossmap.trajectory.gradient_descent` uses, so a plain loop of the same
    gradient descent records the same series. Near the edge of stability λ_max hovers
    at ``2/η`` (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically
    Occurs at the Edge of Stability", ICLR): give ``lr`` and the figure draws that line.

    With ``out`` each measurement is committed to ``out/journal.sqlite``
    (:class:`lossmap.store.Journal`) as it finishes. Running the same training again
    with the same ``out`` resumes: a step already measured is not measured again; its
    values come back from the journal, after a check that the model at that step is
    the one measured (a hash of its trainable parameters). A training that does not
    replay bit for bit (nondeterministic GPU kernels) fails that check: pass
    ``restart=True`` or another ``out``.

    Args:
        land_fn: ``land_fn(model) -> Landscape``; e.g.
            ``lambda m: lm.Landscape(m, criterion, data=(X, y))``.
        every: measure at the steps that are multiples of this.
        measures: names from ``lossmap.track.MEASURES``: ``"lambda_max"``, ``"trace"``
            (Hutch++, 90 products), ``"loss"``, ``"sharpness.average"``,
            ``"sharpness.epsilon"``, ``"sharpness.adaptive"``.
        out: a folder for the journal, ``history.csv`` and ``track.png``; ``None``:
            in memory only.
        lr: the learning rate η, for the ``2/η`` line; ``None``: no line.
        seed: seeds Lanczos starts, trace probes and sharpness samples.
        options: ``{measure: {option: value}}``, e.g.
            ``{"lambda_max": {"tol": 1e-3}, "sharpness.average": {"sigma": 0.05}}``.
        tensorboard: ``True`` (a ``SummaryWriter`` in ``out/tensorboard``), a
            ``SummaryWriter`` of your own, or ``False``: scalars ``lossmap/<measure>``
            at each measurement (and ``lossmap/lambda_max_over_threshold``,
            λ_max/(2/η), when ``lr`` is given) and the figure at :meth:`save`.
        restart: discard a journal in ``out`` that another run left.

    Raises:
        ValueError, TypeError: bad arguments (before any training step).

    >>> import torch, lossmap as lm
    >>> from torch import nn
    >>> X, y = torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(32, 1)
    >>> tracker = Tracker(lambda m: lm.Landscape(m, nn.MSELoss(), data=(X, y)), every=2)
    >>> model = nn.Linear(3, 1)
    >>> for t in range(5):
    ...     _ = tracker.step(model, t)  # a training step would go here
    >>> tracker.history["step"]
    [0, 2, 4]
    >>> A = torch.cat([X, torch.ones(32, 1)], dim=1)  # the weights' inputs, and the bias's
    >>> H = 2 * A.T @ A / 32  # the Hessian of the mean squared error
    >>> bool(abs(tracker.history["lambda_max"][0] - torch.linalg.eigvalsh(H)[-1]) < 1e-3)
    True
    """

    def __init__(
        self,
        land_fn: Callable[[nn.Module], Landscape],
        *,
        every: int = 100,
        measures: Sequence[str] = ("lambda_max",),
        out: str | os.PathLike[str] | None = None,
        lr: float | None = None,
        seed: int = 0,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        tensorboard: Any = False,
        restart: bool = False,
    ) -> None:
        if not callable(land_fn) or isinstance(land_fn, nn.Module):
            raise TypeError(
                "land_fn must be a function model -> Landscape, e.g. "
                f"lambda m: lm.Landscape(m, criterion, data=(X, y)); got {land_fn!r}"
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (steps), got {every!r}")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0):
            raise ValueError(f"lr must be a positive number or None, got {lr!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.measures, self.options = check_measures(measures, options)
        _check_tensorboard(tensorboard)
        if tensorboard is True and out is None:
            raise ValueError("tensorboard=True writes into out/tensorboard: give out= too")
        self.land_fn = land_fn
        self.every = every
        self.out = None if out is None else Path(out)
        self.lr = None if lr is None else float(lr)
        self.seed = seed
        self.restart = restart
        self.history: dict[str, list[Any]] = {"step": [], **{m: [] for m in self.measures}}
        self.restored = 0  # measurements read back from the journal
        self._tensorboard = tensorboard
        self._writer: Any = None
        self._journal: Journal | None = None
        self._ctx = Context(seed=seed, step=0)
        self._done: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------ the loop
    def step(self, model: nn.Module, step: int) -> dict[str, float] | None:
        """Measure ``model`` if ``step`` is a multiple of ``every``.

        Returns the values measured (or read back from the journal, or already
        recorded at this step by an earlier call), ``None`` between measurements.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        if step % self.every:
            return None
        if step in self._done:
            return self._done[step]
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        params = _trainable(model)
        journal = self._open(params) if self.out is not None else None
        digest = hash_tensors(params) if journal is not None else ""
        values = self._restore(journal, step, digest) if journal is not None else None
        if values is None:
            values = self._measure(model, step)
            if journal is not None:
                self._record(journal, step, digest, values)
        else:
            self.restored += 1
        self._done[step] = values
        self.history["step"].append(step)
        for m in self.measures:
            self.history[m].append(values[m])
        self._scalars(step, values)
        return values

    def _measure(self, model: nn.Module, step: int) -> dict[str, float]:
        land = self.land_fn(model)
        if not isinstance(land, Landscape):
            raise TypeError(
                f"land_fn(model) must return a lossmap.Landscape, got {type(land).__name__}"
            )
        self._ctx.step = step
        return {m: MEASURES[m](land, self._ctx, **self.options.get(m, {})) for m in self.measures}

    # ------------------------------------------------------------------ journal
    def _fingerprint(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "what": "lossmap.track.Tracker",
            "measures": list(self.measures),
            "options": {m: {k: repr(v) for k, v in o.items()} for m, o in self.options.items()},
            "every": self.every,
            "seed": self.seed,
            "parameters": {n: list(p.shape) for n, p in params.items()},
        }

    def _open(self, params: Mapping[str, Any]) -> Journal:
        if self._journal is None:
            assert self.out is not None
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                self._journal = Journal(
                    self.out / JOURNAL, self._fingerprint(params), restart=self.restart
                )
            except JournalMismatch as e:
                found = re.search(r"\((.*)\); re-run", str(e))
                why = found.group(1) if found else "other arguments"
                raise JournalMismatch(
                    f"{self.out} holds the journal of a tracker with other settings ({why}); "
                    "pass restart=True to discard it, or choose another out"
                ) from None
        return self._journal

    def _restore(self, journal: Journal, step: int, digest: str) -> dict[str, float] | None:
        got = journal.get(f"track/{step}")
        if got is None:
            return None
        held = journal.get(f"track/{step}/params")
        if held is None or held.tobytes().decode() != digest:
            raise ValueError(
                f"the model at step {step} is not the one {journal.path} measured at "
                "that step: this training differs from the journaled one (other data, seed "
                "or nondeterministic kernels); pass restart=True or choose another out"
            )
        vector = journal.get("track/vector")
        if vector is not None and int(vector[0]) == step:
            self._ctx.state["vector"] = vector[1:]
        return {m: float(v) for m, v in zip(self.measures, got, strict=True)}

    def _record(
        self, journal: Journal, step: int, digest: str, values: Mapping[str, float]
    ) -> None:
        journal.put(f"track/{step}/params", np.frombuffer(digest.encode(), dtype=np.uint8))
        journal.put(f"track/{step}", np.array([values[m] for m in self.measures]))
        vector = self._ctx.state.get("vector")
        if vector is not None:  # the warm start of the next measurement, on a resume
            journal.put("track/vector", np.concatenate([[float(step)], vector]))

    # ------------------------------------------------------------------ output
    def _scalars(self, step: int, values: Mapping[str, float]) -> None:
        writer = self.writer
        if writer is None:
            return
        for m, v in values.items():
            writer.add_scalar(f"lossmap/{m}", v, step)
        if self.lr is not None and "lambda_max" in values:
            writer.add_scalar(
                "lossmap/lambda_max_over_threshold", values["lambda_max"] * self.lr / 2, step
            )

    @property
    def writer(self) -> Any:
        """The TensorBoard ``SummaryWriter`` (opened on first use), or ``None``."""
        if self._tensorboard is False:
            return None
        if self._writer is None:
            if self._tensorboard is True:
                from torch.utils.tensorboard import SummaryWriter

                assert self.out is not None
                self._writer = SummaryWriter(log_dir=str(self.out / "tensorboard"))
            else:
                self._writer = self._tensorboard
        return self._writer

    @property
    def threshold(self) -> float | None:
        """``2/η``, the stability limit of gradient descent, when ``lr`` was given."""
        return None if self.lr is None else 2.0 / self.lr

    def figure(self) -> Figure:
        """The recorded measures against the step, one panel each; λ_max with the
        dashed ``2/η`` line when ``lr`` was given."""
        from matplotlib.figure import Figure

        n = len(self.measures)
        fig = Figure(figsize=(6.4, 1.2 + 2.2 * n), layout="constrained")
        axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
        steps = self.history["step"]
        for ax, m in zip(axes, self.measures, strict=True):
            ax.plot(steps, self.history[m], marker=".", label=m)
            if m == "lambda_max" and self.threshold is not None:
                ax.axhline(
                    self.threshold, color="k", ls="--", lw=1, label=f"2/η = {self.threshold:.3g}"
                )
                ax.legend(loc="best", fontsize="small")
            ax.set_ylabel(m.replace("lambda_max", "λ_max"))
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
        return fig

    def save(self) -> list[Path]:
        """Write ``out/history.csv`` and ``out/track.png`` (atomically), and the figure to
        TensorBoard; returns the files written (none without ``out``)."""
        fig = self.figure() if self.history["step"] else None
        if fig is not None and self.writer is not None:
            self.writer.add_figure("lossmap/track", fig, self.history["step"][-1], close=False)
            self.writer.flush()
        if self.out is None:
            return []
        self.out.mkdir(parents=True, exist_ok=True)
        files = [self.out / HISTORY]
        with atomic_path(files[0]) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", *self.measures])
            for i, s in enumerate(self.history["step"]):
                w.writerow([s, *(repr(float(self.history[m][i])) for m in self.measures)])
        if fig is not None:
            files.append(self.out / FIGURE)
            with atomic_path(files[1]) as tmp:
                fig.savefig(tmp, dpi=120)
        return files

    def close(self) -> list[Path]:
        """:meth:`save`, then close the journal and a writer the tracker opened."""
        files = self.save()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._writer is not None and self._tensorboard is True:
            self._writer.close()
            self._writer = None
        return files

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Tracker(every={self.every}, measures={self.measures}, out={self.out}, "
            f"measured={len(self.history['step'])})"
        )
