"""A PyTorch Lightning callback that runs a :class:`~lossmap.track.Tracker`.

Importing this module imports ``pytorch_lightning`` (``pip install 'lossmap[lightning]'``).
The tracker measures at ``trainer.global_step`` (optimizer steps done so far): once at
the start of training (step 0, θ0) and after each batch whose step is a multiple of
the tracker's ``every``; with gradient accumulation a step is measured once. The
tracker's ``land_fn`` receives the ``LightningModule`` (its model:
``land_fn=lambda module: lm.Landscape(module.model, ...)`` if it wraps one). At the end
of training the tracker writes its history and figure and closes its journal
(:meth:`Tracker.close`; a later ``fit`` reopens it). Training on several processes is
not supported yet (a landscape built inside the process group would wait for the
collectives of ranks that do not measure): the callback refuses it at the start.

::

    tracker = lm.track.Tracker(land_fn, every=100, out="runs/track", lr=0.1)
    trainer = pl.Trainer(max_steps=1000, callbacks=[LossmapCallback(tracker)])
"""

from __future__ import annotations

from typing import Any

try:
    import pytorch_lightning as pl
except ImportError as e:  # pragma: no cover - the extra is installed for the tests
    raise ImportError(
        "lossmap.track.lightning needs PyTorch Lightning: pip install 'lossmap[lightning]'"
    ) from e

from lossmap.track._tracker import Tracker

__all__ = ["LossmapCallback"]


class LossmapCallback(pl.Callback):
    """Calls ``tracker.step(pl_module, trainer.global_step)`` during ``fit``.

    Args:
        tracker: the :class:`~lossmap.track.Tracker` to drive.
        at_start: also measure at the start of training (the step training starts from).
    """

    def __init__(self, tracker: Tracker, *, at_start: bool = True) -> None:
        if not isinstance(tracker, Tracker):
            raise TypeError(
                f"tracker must be a lossmap.track.Tracker, got {type(tracker).__name__}"
            )
        self.tracker = tracker
        self.at_start = at_start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise RuntimeError(
                f"LossmapCallback does not support training on {trainer.world_size} processes "
                "yet; track a single-process run"
            )
        if self.at_start:
            self.tracker.step(pl_module, int(trainer.global_step))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.tracker.step(pl_module, int(trainer.global_step))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tracker.close()
