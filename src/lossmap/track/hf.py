"""A Hugging Face ``transformers`` ``TrainerCallback`` that runs a
:class:`~lossmap.track.Tracker`.

Importing this module imports ``transformers`` (``pip install 'lossmap[transformers]'``).
The tracker measures at ``state.global_step`` (optimizer steps done so far): at the
start of training and at each step end whose step is a multiple of the tracker's
``every``. The tracker's ``land_fn`` receives the model the ``Trainer`` passes to its
callbacks (``kwargs["model"]``). At the end of training the tracker writes its history
and figure and closes its journal (:meth:`Tracker.close`). Training on several
processes is not supported yet: the callback refuses it at the start.

::

    tracker = lm.track.Tracker(land_fn, every=100, out="runs/track")
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[LossmapTrainerCallback(tracker)])
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as e:  # pragma: no cover - the extra is installed for the tests
    raise ImportError(
        "lossmap.track.hf needs transformers: pip install 'lossmap[transformers]'"
    ) from e

from lossmap.track._tracker import Tracker

__all__ = ["LossmapTrainerCallback"]


class LossmapTrainerCallback(TrainerCallback):  # type: ignore[misc]
    """Calls ``tracker.step(model, state.global_step)`` during ``Trainer.train``.

    Args:
        tracker: the :class:`~lossmap.track.Tracker` to drive.
        at_start: also measure at the start of training.
    """

    def __init__(self, tracker: Tracker, *, at_start: bool = True) -> None:
        if not isinstance(tracker, Tracker):
            raise TypeError(
                f"tracker must be a lossmap.track.Tracker, got {type(tracker).__name__}"
            )
        self.tracker = tracker
        self.at_start = at_start

    def _step(self, state: TrainerState, model: Any) -> None:
        if model is None:
            raise ValueError("the Trainer passed no model to its callbacks; lossmap needs it")
        self.tracker.step(model, int(state.global_step))

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if args.world_size > 1:
            raise RuntimeError(
                f"LossmapTrainerCallback does not support training on {args.world_size} "
                "processes yet; track a single-process run"
            )
        if self.at_start:
            self._step(state, kwargs.get("model"))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._step(state, kwargs.get("model"))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.tracker.close()
