"""The evaluation engine: the loss and metrics at many points, fast.

Every view of the landscape (lines, planes, paths) ends here. Points are either a
*span* ``θ = origin + Σ_k c_k d_k`` (lines, planes, interpolation) or an explicit
list. The engine never writes into the model: points are passed to
:func:`torch.func.functional_call`. Data are held on the device once (or a loader is
streamed once per chunk of points, each batch serving every point of the chunk).

Strategies (``strategy=``):

- ``"loop"``: one point at a time; the fallback that runs any model.
- ``"vmap"``: a chunk of points per call with :func:`torch.vmap`; wins where the
  per-call overhead dominates (small models, small data).
- ``"affine"``: for spans of ``nn.Sequential`` models whose first layer with
  parameters is ``Linear``/``ConvNd``: the layer is affine in its parameters, so
  ``layer(X; W0 + Σ c_k D_k) = layer(X; W0) + Σ c_k layer(X; D_k)`` is computed once
  per batch and every point only runs the rest of the network; wins where compute
  dominates.
- ``"affine-vmap"``: both. Where the rest is linear layers and elementwise
  activations on ``[N, features]`` inputs (MLPs), it runs without vmap, features
  first: the first layer for a chunk of points is one ``[1, c] @ [z0; z]`` product,
  every later layer one batched ``W h + b``, the logits come out ``[P, C, N]``, and
  known losses reduce by formula; on CPU the chunk runs in tiles of points whose
  widest activation fits in ~1 MB of cache.
- ``"auto"``: a fixed rule, no timing (see :func:`choose`): the choice is a pure
  function of the model's structure, the kind of point set, the device type and the
  data's sizes, so two runs of one command compute the same chunks with the same
  strategy and agree bit for bit whatever the machine's load. The choice and the
  reason are recorded in the result's metadata.

Strategies compute the same values up to rounding, not bit for bit (their products
group the sums differently). Within one strategy a run's values depend only on the
points and the chunk size, and the chunk size comes from the model, the data and the
device's *total* memory (free memory only caps it where it is short, and the cap is
recorded as ``memory_capped``); a journal records both so a resumed run repeats them.

The modules, each importing only those above it: :mod:`~lossmap.evaluate.scratch`
(buffers kept across chunks), :mod:`~lossmap.evaluate.points` (point sets, chunks,
results), :mod:`~lossmap.evaluate.kernels` (the affine plan and its layer chain),
:mod:`~lossmap.evaluate.losses` (known losses over many points by formula),
:mod:`~lossmap.evaluate.memory` (chunk sizes), :mod:`~lossmap.evaluate.strategies`
(the strategies by name), :mod:`~lossmap.evaluate.choice` (``auto``'s rule),
:mod:`~lossmap.evaluate.runner` (:func:`run`).
"""

from lossmap.evaluate.choice import choose
from lossmap.evaluate.kernels import AffinePlan, affine_plan
from lossmap.evaluate.points import EvalResult, Explicit, PointSet, Progress, Span, chunks
from lossmap.evaluate.runner import run
from lossmap.evaluate.strategies import STRATEGIES

__all__ = [
    # evaluating points
    "run",
    "STRATEGIES",
    "choose",
    # point sets and results
    "Span",
    "Explicit",
    "PointSet",
    "EvalResult",
    "Progress",
    "chunks",
    # the affine plan
    "AffinePlan",
    "affine_plan",
]
