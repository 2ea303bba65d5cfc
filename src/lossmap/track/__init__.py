"""Sharpness during training: a tracker that the user's own training loop calls.

``Tracker(land_fn, every=100, measures=("lambda_max", "trace"), out="runs/track")``
measures the model every ``every`` steps (``tracker.step(model, step)``): λ_max by
warm-started Lanczos (as :func:`lossmap.trajectory.gradient_descent`), the Hessian
trace, the loss, or a sharpness measure of :mod:`lossmap.sharpness`; it journals each
measurement (a rerun with the same ``out`` resumes), plots the series (λ_max with the
``2/η`` line of Cohen et al. 2021 when the learning rate is given) and writes
TensorBoard scalars and figures when asked.

Adapters where users train, each importing its framework only when imported itself:

- :mod:`lossmap.track.lightning`: ``LossmapCallback``, a PyTorch Lightning ``Callback``;
- :mod:`lossmap.track.hf`: ``LossmapTrainerCallback``, a Hugging Face ``transformers``
  ``TrainerCallback``.

Implementation: ``_measures`` (the measures by name, the warm start), ``_tracker``.
"""

from lossmap.track._measures import MEASURES
from lossmap.track._tracker import Tracker

__all__ = ["MEASURES", "Tracker"]
