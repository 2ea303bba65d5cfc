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
device's *total* memory (never its currently free memory); a journal records both so
a resumed run repeats them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lossmap import vectors as V
from lossmap.data import Batch, batch_size, total_memory
from lossmap.objective import Objective as Landscape

if TYPE_CHECKING:
    from lossmap.store import Journal

log = logging.getLogger("lossmap")

__all__ = ["STRATEGIES", "EvalResult", "Explicit", "Span", "choose", "chunks", "run"]

STRATEGIES = ("auto", "loop", "vmap", "affine", "affine-vmap")
Progress = Callable[[int, int], None]


class _Scratch:
    """Tensors kept across chunks, one per ``key``: a request for fewer rows than the
    one held gets a slice of it, so the run's last, shorter chunk allocates nothing. On CPU, fresh multi-MB allocations per chunk (page faults
    on first touch) cost as much as the arithmetic."""

    def __init__(self) -> None:
        self._held: dict[Any, Tensor] = {}

    def get(self, key: Any, shape: tuple[int, ...], like: Tensor) -> Tensor:
        buf = self._held.get(key)
        if (
            buf is None
            or buf.shape[1:] != shape[1:]
            or buf.shape[0] < shape[0]
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = self._held[key] = like.new_empty(shape)
        return buf[: shape[0]]


# ------------------------------------------------------------------ point sets
@dataclass
class Span:
    """Points ``origin + coeffs[i] @ directions`` (``coeffs``: ``[n_points, K]``)."""

    origin: V.Vector
    directions: list[V.Vector]
    coeffs: np.ndarray
    _stacked: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _scratch: _Scratch = field(default_factory=lambda: _Scratch(), repr=False)

    def __post_init__(self) -> None:
        self.coeffs = np.asarray(self.coeffs, dtype=np.float64)
        if self.coeffs.ndim != 2 or self.coeffs.shape[1] != len(self.directions):
            raise ValueError(
                f"coeffs must have shape [n_points, {len(self.directions)}], got {self.coeffs.shape}"
            )
        self._stacked = {
            k: torch.stack([d[k].to(t.dtype) for d in self.directions])
            if self.directions
            else t[None] * 0
            for k, t in self.origin.items()
        }

    def __len__(self) -> int:
        return int(self.coeffs.shape[0])

    def coeff_tensor(self, idx: np.ndarray, like: Tensor) -> Tensor:
        return torch.as_tensor(self.coeffs[idx], dtype=like.dtype, device=like.device)

    def stacked(self, idx: np.ndarray, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The points ``idx`` as ``{name: Tensor[len(idx), *shape]}`` (only ``keys``).

        Computed elementwise, ``origin + c_0 d_0 + c_1 d_1 + ...`` in that order (each
        product rounded, then added: no fused multiply-add), so a point's parameters
        are bit-identical whichever chunk it is computed in. The tensors live in
        buffers reused by the next call with as many points: use them before asking
        for more (fresh multi-MB allocations per chunk cost more than the arithmetic).
        """
        out = {}
        n = len(idx)
        for k in keys if keys is not None else self.origin:
            t = self.origin[k]
            c = self.coeff_tensor(idx, t)
            d = self._stacked[k]
            acc = self._scratch.get((k, 0), (n, *t.shape), t)
            tmp = self._scratch.get((k, 1), (n, *t.shape), t)
            view = (n,) + (1,) * t.ndim
            torch.mul(c[:, 0].view(view), d[0], out=acc)
            acc.add_(t)  # t + c_0 d_0 (addition commutes exactly)
            for j in range(1, d.shape[0]):
                torch.mul(c[:, j].view(view), d[j], out=tmp)
                acc.add_(tmp)
            out[k] = acc
        return out


@dataclass
class Explicit:
    """An explicit list of points."""

    points: Sequence[Mapping[str, Tensor]]

    def __len__(self) -> int:
        return len(self.points)

    def stacked(self, idx: np.ndarray, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        keys = list(keys) if keys is not None else list(self.points[0].keys())
        return {k: torch.stack([self.points[int(i)][k] for i in idx]) for k in keys}


PointSet = Span | Explicit


@dataclass
class EvalResult:
    """Values ``{"<data set>/<stat>": float64 array [n_points]}`` and how they were got."""

    values: dict[str, np.ndarray]
    info: dict[str, Any]
    default_dataset: str

    def values_with_aliases(self) -> dict[str, np.ndarray]:
        out = dict(self.values)
        prefix = self.default_dataset + "/"
        for k, v in self.values.items():
            if k.startswith(prefix):
                out[k[len(prefix) :]] = v
        return out


def chunks(n: int, size: int) -> list[np.ndarray]:
    """Split ``range(n)`` into consecutive index arrays of at most ``size``.

    >>> [c.tolist() for c in chunks(5, 2)]
    [[0, 1], [2, 3], [4]]
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [np.arange(i, min(i + size, n)) for i in range(0, n, size)]


# ------------------------------------------------------------ the affine plan
@dataclass
class _AffinePlan:
    prefix: nn.Module  # parameter-free modules before the first layer
    layer: nn.Module  # the first layer with parameters (Linear / ConvNd)
    layer_keys: dict[str, str]  # full parameter name -> name inside the layer
    rest: nn.Module  # everything after
    chain: list[_Step]  # the rest, module by module

    @property
    def batched(self) -> bool:
        """Whether the rest can run on ``[P, N, features]`` without vmap: linear layers
        and elementwise activations only, on 2-D (``[N, features]``) activations."""
        return isinstance(self.layer, nn.Linear) and all(
            st.kind == "linear" or (st.kind == "free" and type(st.module) in _ELEMENTWISE)
            for st in self.chain
        )


@dataclass
class _Step:
    """One module of the chain: ``kind`` is ``"linear"`` (``F.linear`` with the point's
    weights), ``"free"`` (no parameters or buffers: called as is) or ``"call"``
    (``functional_call`` on that module alone); ``keys`` maps full names to local ones."""

    kind: str
    module: nn.Module
    keys: dict[str, str]
    weight: str = ""
    bias: str | None = None


def _chain(rest: nn.Sequential, prefix: str = "") -> list[_Step]:
    """The modules of a Sequential as a flat list the engine can run without
    ``functional_call``'s per-call overhead."""
    out: list[_Step] = []
    for name, m in rest.named_children():
        full = f"{prefix}{name}"
        if type(m) is nn.Sequential:
            out += _chain(m, prefix=f"{full}.")
            continue
        keys = {f"{full}.{p}": p for p, _ in m.named_parameters()}
        keys.update({f"{full}.{b}": b for b, _ in m.named_buffers()})
        if not keys:
            out.append(_Step("free", m, keys))
        elif type(m) is nn.Linear:
            bias = f"{full}.bias" if m.bias is not None else None
            out.append(_Step("linear", m, keys, f"{full}.weight", bias))
        else:
            out.append(_Step("call", m, keys))
    return out


_INPLACE: dict[type[nn.Module], Callable[[nn.Module, Tensor], Tensor]] = {
    nn.ReLU: lambda m, h: h.relu_(),
    nn.Tanh: lambda m, h: h.tanh_(),
    nn.Sigmoid: lambda m, h: h.sigmoid_(),
    nn.LeakyReLU: lambda m, h: torch.nn.functional.leaky_relu_(h, m.negative_slope),  # type: ignore[arg-type]
    nn.Identity: lambda m, h: h,
    nn.Dropout: lambda m, h: h,  # eval mode only (the affine plan requires it)
}


_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,  # identity in eval mode, which the affine plan requires
)


def _run_chain_batched(
    chain: list[_Step],
    tensors: Mapping[str, Tensor],
    h: Tensor,
    scratch: _Scratch,
    dest: Tensor | None = None,
) -> Tensor:
    """The chain on ``h: [P, features, N]`` (features first; a tensor the caller owns)
    with per-point weights ``[P, out, in]`` (or shared ``[out, in]``): each linear layer
    is one batched product ``W h + b`` that writes ``[P, out, N]`` into a buffer of
    ``scratch``, and activations are applied in place. Features first,
    no operand is ever transposed, and the logits come out classes-first, the layout in
    which the loss reduces over the classes along contiguous samples. The result is
    written into ``dest`` when given."""
    p = h.shape[0]
    last = len(chain) - 1
    for i, st in enumerate(chain):
        if st.kind == "free":
            inplace = _INPLACE.get(type(st.module))
            h = inplace(st.module, h) if inplace is not None else st.module(h)
            continue
        w = tensors[st.weight]
        w = w if w.ndim == 3 else w.expand(p, *w.shape)  # a frozen layer: shared weights
        b = tensors[st.bias] if st.bias is not None else None
        if b is not None and b.ndim == 1:
            b = b.expand(p, *b.shape)
        shape = (p, w.shape[1], h.shape[2])
        out = dest if dest is not None and i == last else scratch.get(i, shape, h)
        h = torch.bmm(w, h, out=out) if b is None else torch.baddbmm(b.unsqueeze(2), w, h, out=out)
    if dest is not None and h is not dest:
        dest.copy_(h)
        return dest
    return h


def _run_chain(
    chain: list[_Step],
    tensors: Mapping[str, Tensor],
    h: Tensor,
    bufs: dict[int, Tensor] | None = None,
) -> Tensor:
    """Run the chain at the point ``tensors``.

    With ``bufs`` (one point at a time, not under vmap), ``h`` must be a tensor the
    caller owns: activations are applied in place and every linear layer writes into a
    buffer kept across points, so a point allocates no large tensor. On CPU, fresh
    multi-hundred-kB allocations per layer cost as much as the matmuls themselves.
    """
    for i, st in enumerate(chain):
        if st.kind == "free":
            inplace = _INPLACE.get(type(st.module)) if bufs is not None else None
            h = inplace(st.module, h) if inplace is not None else st.module(h)
        elif st.kind == "linear":
            w = tensors[st.weight]
            b = tensors[st.bias] if st.bias is not None else None
            if bufs is not None and b is not None and h.ndim == 2:
                out = bufs.get(i)
                if out is None or out.shape != (h.shape[0], w.shape[0]) or out.dtype != h.dtype:
                    out = bufs[i] = h.new_empty(h.shape[0], w.shape[0])
                h = torch.addmm(b, h, w.t(), out=out)
            else:
                h = torch.nn.functional.linear(h, w, b)
        else:
            h = functional_call(st.module, {p: tensors[k] for k, p in st.keys.items()}, (h,))
    return h


_TILE_BYTES = 1 << 20  # the widest activation of a CPU tile of points (see _Evaluator)
_TILED_CHUNK_BYTES = 1 << 26  # a tiled CPU chunk's outputs and loss scratch

_AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def affine_plan(land: Landscape) -> _AffinePlan | None:
    """How to split the model for the affine first-layer shortcut, or ``None`` (worked
    out once per landscape: its model's structure and mode do not change)."""
    key = (land.criterion is None, land.train_mode)
    cached = getattr(land, "_affine_plan", None)
    if cached is not None and cached[0] == key:
        return cached[1]  # type: ignore[no-any-return]
    plan = _affine_plan(land)
    land._affine_plan = (key, plan)  # type: ignore[attr-defined]
    return plan


def _affine_plan(land: Landscape) -> _AffinePlan | None:
    model = land.model
    if land.criterion is None or land.train_mode:
        return None
    if type(model) in _AFFINE_LAYERS:  # the whole model is one affine layer
        keys = {p: p for p, _ in model.named_parameters()}
        if not all(k in land._params0 for k in keys):
            return None
        return _AffinePlan(nn.Sequential(), model, keys, nn.Sequential(), [])
    if not isinstance(model, nn.Sequential):
        return None
    mods = list(model.named_children())
    for i, (name, m) in enumerate(mods):
        own = list(m.parameters()) + list(m.buffers())
        if not own:
            continue
        if type(m) not in _AFFINE_LAYERS:
            return None
        keys = {f"{name}.{p}": p for p, _ in m.named_parameters()}
        if not all(k in land._params0 for k in keys):
            return None  # a frozen first layer: nothing to gain
        prefix = nn.Sequential(*[mm for _, mm in mods[:i]])
        rest = nn.Sequential()
        for n2, m2 in mods[i + 1 :]:
            rest.add_module(n2, m2)
        return _AffinePlan(prefix, m, keys, rest, _chain(rest))
    return None


# ----------------------------------------------------------------- evaluators
class _Evaluator:
    """Evaluates a chunk of points on one batch with a given strategy."""

    def __init__(self, land: Landscape, points: PointSet, strategy: str) -> None:
        self.land = land
        self.points = points
        self.strategy = strategy
        self.plan = affine_plan(land) if strategy.startswith("affine") else None
        if strategy.startswith("affine") and (self.plan is None or not isinstance(points, Span)):
            raise ValueError(
                f"strategy {strategy!r} needs an nn.Sequential model whose first layer with "
                "parameters is Linear/Conv, a criterion, eval mode and a line/plane/path; "
                "use strategy='auto'"
            )
        self._cache: dict[int, tuple[Tensor, Tensor, Any]] = {}
        self._bufs: dict[int, Tensor] = {}
        self._scratch = _Scratch()
        self._zt: dict[int, Tensor] = {}
        # The parameters each point needs (the affine strategies skip the first layer's).
        skip = self.plan.layer_keys if self.plan is not None else {}
        self.keys = [k for k in land._params0 if k not in skip]

    # affine: per batch, the first layer at the origin and along each direction
    def _affine_parts(self, batch: Batch, cache: bool) -> tuple[Tensor, Tensor, Any]:
        key = id(batch)
        if cache and key in self._cache:
            return self._cache[key]
        assert self.plan is not None and isinstance(self.points, Span)
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise TypeError("the affine strategy needs batches (X, y)")
        x = self.plan.prefix(batch[0])
        origin = {p: self.points.origin[k] for k, p in self.plan.layer_keys.items()}
        z0 = functional_call(self.plan.layer, origin, (x,))
        zs = [
            functional_call(
                self.plan.layer, {p: d[k] for k, p in self.plan.layer_keys.items()}, (x,)
            )
            for d in self.points.directions
        ]
        # Directions carry the layer's bias too: functional_call adds it once per term,
        # which is exactly the affine expansion (bias_k enters with coefficient c_k).
        z = torch.stack(zs) if zs else z0.unsqueeze(0) * 0
        parts = (z0, z, batch[1])
        if cache:
            self._cache[key] = parts
        return parts

    def _features_first(self, z0: Tensor, z: Tensor, cache: bool) -> Tensor:
        """``[K+1, F*N]``: the first layer's output ``[N, F]`` at the origin and along
        each direction, transposed to features first and flattened (cached with them)."""
        key = id(z0)
        zt = self._zt.get(key) if cache else None
        if zt is None:
            k = len(self.points.directions)  # type: ignore[union-attr]
            zt = torch.cat([z0.unsqueeze(0), z[:k]]).transpose(1, 2).reshape(k + 1, -1)
            if cache:
                self._zt[key] = zt
        return zt

    def __call__(
        self, params: dict[str, Tensor], idx: np.ndarray, batch: Batch, cache: bool
    ) -> Tensor:
        land = self.land
        s = self.strategy
        if s == "loop":
            return torch.stack(
                [
                    land.batch_stats({k: v[i] for k, v in params.items()}, batch)
                    for i in range(len(idx))
                ]
            )
        if s == "vmap":
            return torch.vmap(lambda p: land.batch_stats(p, batch))(params)
        assert self.plan is not None and isinstance(self.points, Span)
        z0, z, target = self._affine_parts(batch, cache)
        n = batch_size(batch)
        coeffs = self.points.coeff_tensor(idx, z0)
        fixed = land._fixed0
        chain = self.plan.chain
        rp = params
        if s == "affine":
            # One point at a time; the first layer's output and every later layer's
            # output live in buffers kept across points.
            rows = []
            h = self._bufs.get(-1)
            if h is None or h.shape != z0.shape:
                h = self._bufs[-1] = torch.empty_like(z0)
            cs = self.points.coeffs[idx]
            for i in range(len(idx)):
                torch.add(z0, z[0], alpha=float(cs[i, 0]), out=h)
                for k in range(1, z.shape[0]):
                    h.add_(z[k], alpha=float(cs[i, k]))
                tensors = {**fixed, **{k: v[i] for k, v in rp.items()}}
                out = _run_chain(chain, tensors, h, self._bufs)
                rows.append(land.output_stats(out, target, n))
            return torch.stack(rows)

        if self.plan.batched and z0.ndim == 2:
            # Many points as one batched computation, without vmap, features first:
            # the first layer's output for all points is one product [1, c] @ [z0; z]
            # (a K+1 matrix product beats a broadcast add plus a K-term product), then
            # [P, F, N] activations through batched products, and the loss reduced per
            # point by a known formula.
            zt = self._features_first(z0, z, cache)
            p, (m, f) = len(idx), z0.shape
            c1 = torch.cat([coeffs.new_ones(p, 1), coeffs], dim=1)
            tensors = {**fixed, **rp}
            widths = [f] + [tensors[st.weight].shape[-2] for st in chain if st.kind == "linear"]
            # On CPU the chunk runs in tiles whose widest activation fits in ~1 MB of
            # cache: the same speed in steady state, a few MB less fresh memory to fault
            # in on a first run (costly on a VM), and the chunk's output stays small.
            tile = p
            if z0.device.type == "cpu" and chain:  # (a lone layer: h is the output)
                tile = min(p, max(8, _TILE_BYTES // (max(widths) * m * zt.element_size())))
            res = self._scratch.get("out", (p, widths[-1], m), zt) if tile < p else None
            for s0 in range(0, p, tile):
                s1 = min(p, s0 + tile)
                hbuf = self._scratch.get("h", (s1 - s0, zt.shape[1]), zt)
                h = torch.mm(c1[s0:s1], zt, out=hbuf).view(s1 - s0, f, m)
                part = (
                    tensors
                    if tile == p
                    else {k: v[s0:s1] if k in rp else v for k, v in tensors.items()}
                )
                dest = None if res is None else res[s0:s1]
                r = _run_chain_batched(chain, part, h, self._scratch, dest)
                res = r if res is None else res
            assert res is not None
            out = res
            cf = land.classes_first_ok
            stats = land.batched_output_stats(
                out if cf else out.transpose(1, 2), target, n, classes_first=cf, owned=True
            )
            if stats is not None:
                return stats

            def head(o: Tensor) -> Tensor:
                return land.output_stats(o, target, n)

            return torch.vmap(head)(out.transpose(1, 2))

        def one(p: dict[str, Tensor], c: Tensor) -> Tensor:
            h = z0 + torch.tensordot(c, z, dims=1)
            return land.output_stats(_run_chain(chain, {**fixed, **p}, h), target, n)

        return torch.vmap(one)(rp, coeffs)


# -------------------------------------------------------------- memory model
def _output_sizes(land: Landscape) -> tuple[int, int, int] | None:
    """Per sample, measured with hooks on a forward pass over two samples (over the
    first batch with a custom loss, whose batches need not be sliceable): the bytes of
    all module outputs, the bytes of the model's output, and the number of dimensions
    of the first module's output (cached on the landscape). ``None`` for streamed data.
    """
    cached = getattr(land, "_out_sizes", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    ds = next(iter(land.datasets.values()))
    if not ds.in_memory or not ds.batches:
        return None
    batch = ds.batches[0]
    small: Batch = batch
    if land.criterion is not None:
        if not isinstance(batch, tuple | list):
            return None
        small = tuple(t[:2] if isinstance(t, Tensor) and t.ndim > 0 else t for t in batch)
    outs: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            outs.append(out)

    handles = [m.register_forward_hook(hook) for m in land.model.modules()]
    try:
        with land.mode(), torch.inference_mode():
            land.batch_stats(land._params0, small)
    finally:
        for h in handles:
            h.remove()
    if not outs:
        return None
    n = max(1, batch_size(small))
    total = sum(o.numel() * o.element_size() for o in outs)
    last = outs[-1]  # the model itself: its hook runs last
    first = next((o for o in outs if o is not last), last)
    sizes = (max(1, total // n), max(1, last.numel() * last.element_size() // n), first.ndim)
    land._out_sizes = sizes  # type: ignore[attr-defined]
    return sizes


def _batch_and_param_bytes(land: Landscape) -> tuple[int, int]:
    """The largest batch of the first data set (256 when streamed) and the bytes of one
    point's parameters: what the chunk sizes scale with."""
    ds = next(iter(land.datasets.values()))
    biggest = max((batch_size(b) for b in ds.batches), default=1) if ds.in_memory else 256  # type: ignore[union-attr]
    return biggest, land.num_parameters * next(iter(land._params0.values())).element_size()


def _vmap_chunk(land: Landscape, n_points: int, budget: int) -> int:
    sizes = _output_sizes(land)
    per_sample = None if sizes is None else sizes[0]
    biggest, param_bytes = _batch_and_param_bytes(land)
    per_point = 3 * param_bytes + (biggest * per_sample * 3 if per_sample else 4 * param_bytes)
    # On CPU a chunk whose activations fall out of cache gets slower per point: keep a
    # chunk's activations near 64 MB there (big chunks for tiny models, small for big).
    cap = 1024 if land.device.type == "cuda" else max(1, min(1024, 2**26 // max(1, per_point)))
    return int(max(1, min(cap, n_points, budget // max(1, per_point))))


# ---------------------------------------------------------------------- run
def _passes(
    ev: _Evaluator,
    land: Landscape,
    points: PointSet,
    idx: np.ndarray,
    dsets: Sequence[str],
    cache: bool,
) -> Tensor:
    """``[len(idx), len(dsets) * n_stats]`` float64 data-set means for the points ``idx``."""
    params = points.stacked(idx, ev.keys)
    cols = []
    for name in dsets:
        ds = land.datasets[name]
        acc = None
        count = 0
        for b in ds:
            part = ev(params, idx, b, cache and ds.in_memory).double()
            acc = part if acc is None else acc + part
            count += batch_size(b)
        if ds.size is None:
            ds.size = count
        assert acc is not None
        cols.append(acc / count)
    return torch.cat(cols, dim=1).cpu()


def _eligible(land: Landscape, points: PointSet) -> list[str]:
    out = ["loop"]
    if not land.train_mode:
        out.append("vmap")
        if isinstance(points, Span) and affine_plan(land) is not None:
            out += ["affine", "affine-vmap"]
    return out


def _chunk_size(
    land: Landscape, strategy: str, n: int, vchunk: int, budget: int, streaming: bool
) -> int:
    if strategy == "affine-vmap" and land.device.type == "cpu":
        plan, sizes = affine_plan(land), _output_sizes(land)
        if plan is not None and plan.batched and sizes is not None and sizes[2] == 2:
            # Tiled (see _Evaluator): across the chunk a point holds only its output and
            # the loss's scratch, so chunks can be larger than vmap's (fewer passes).
            biggest, param_bytes = _batch_and_param_bytes(land)
            per_point = 3 * param_bytes + biggest * sizes[1] * 4
            return int(max(1, min(1024, n, _TILED_CHUNK_BYTES // per_point, budget // per_point)))
    if strategy.endswith("vmap"):
        return vchunk
    # Loops: many points per pass when streaming, so the loader runs rarely.
    param_bytes = land.num_parameters * 4
    return int(max(1, min(n, 4096 if streaming else 64, budget // (2 * param_bytes))))


# CPU: a batch whose forward pass writes at most this many bytes of activations (all
# module outputs) is overhead-bound, and a chunk of points per call (vmap) beats one
# point per call; above it the batched products run slower than one point's (measured
# on 2 cores: vmap/loop 0.1-0.3x at 0.03-0.08 MB, 0.8-1.2x at 0.3-0.5 MB, 1.6-2.4x at
# 0.6-2.4 MB). Elsewhere (a GPU), where a call costs kernel launches, the bound is
# higher; it has not been measured there.
_SMALL_FORWARD_BYTES = {"cpu": 1 << 18}
_SMALL_FORWARD_BYTES_OTHER = 1 << 26


def _forward_bytes(land: Landscape) -> int | None:
    """Bytes of activations one forward pass over the largest batch writes, or ``None``
    where unknown (data streamed from a loader)."""
    sizes = _output_sizes(land)
    if sizes is None:
        return None
    biggest, _ = _batch_and_param_bytes(land)
    return sizes[0] * biggest


def _probe(
    land: Landscape, points: PointSet, strategy: str, dsets: Sequence[str]
) -> tuple[str, _Evaluator | None]:
    """Run ``strategy`` on the first two points and the first batch: ``("", evaluator)``
    if it runs (the run goes on with that evaluator and its per-batch caches), else
    ``(why not, None)``. Whether a model runs under vmap is a property of its code, not
    of timing: the probe's answer is the same on every run."""
    ds = land.datasets[dsets[0]]
    batch = next(iter(ds))
    idx = np.arange(min(len(points), 2))
    try:
        ev = _Evaluator(land, points, strategy)
        ev(points.stacked(idx, ev.keys), idx, batch, cache=ds.in_memory)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", None
    return "", ev


def choose(
    land: Landscape, points: PointSet, datasets: Sequence[str] | None = None
) -> tuple[str, str]:
    """``auto``'s strategy for these points, and the reason: a fixed rule, no timing.

    1. Training mode: ``loop`` (batch statistics and dropout are per call).
    2. A line/plane/path of an ``nn.Sequential`` whose first layer is ``Linear`` on
       ``[N, features]`` inputs and whose rest is linear layers and elementwise
       activations (an MLP): ``affine-vmap``, the features-first batched path; it does
       the work of ``affine`` as few large products (1.2-12x faster where measured).
    3. Otherwise a many-points-per-call strategy (``affine-vmap`` along a span of an
       affine-eligible ``nn.Sequential``, else ``vmap``) when one forward pass over the
       largest batch writes at most 256 KiB of activations on CPU (64 MiB elsewhere):
       the per-call overhead then dominates. Above that, or where the data are
       streamed (size unknown), a one-point strategy (``affine``, else ``loop``): the
       batched products of vmap run slower than one point's.
    4. A many-points strategy that cannot run the model (a probe on two points raised)
       falls back to the one-point strategy.

    The inputs are the model's structure and mode, the kind of point set, the device
    type and the data's sizes: the same command picks the same strategy on every run.

    Returns:
        ``(strategy, reason)``.
    """
    with land.mode(), torch.inference_mode():
        strategy, reason, _ = _choose(land, points, datasets)
    return strategy, reason


def _choose(
    land: Landscape, points: PointSet, datasets: Sequence[str] | None
) -> tuple[str, str, _Evaluator | None]:
    """:func:`choose`, plus the probe's evaluator where the pick was probed."""
    dsets = list(datasets) if datasets is not None else list(land.datasets)
    eligible = _eligible(land, points)
    if eligible == ["loop"]:
        return "loop", "training mode: only loop runs it", None
    span = "affine" in eligible
    many, one = ("affine-vmap", "affine") if span else ("vmap", "loop")
    plan = affine_plan(land) if span else None
    sizes = _output_sizes(land)
    if plan is not None and plan.batched and (sizes is None or sizes[2] == 2):
        reason = "an MLP along a span: the batched features-first path"
        err, ev = _probe(land, points, many, dsets)
        return (one, f"{reason} cannot run it ({err})", None) if err else (many, reason, ev)
    act = _forward_bytes(land)
    if act is None:
        why = "activation size unknown (data streamed from a loader): one point per call"
        return one, why, None
    bound = _SMALL_FORWARD_BYTES.get(land.device.type, _SMALL_FORWARD_BYTES_OTHER)
    what = f"{act / 2**20:.3g} MiB of activations per forward pass"
    if act > bound:
        return one, f"{what} > {bound / 2**20:.3g} MiB: compute-bound, one point per call", None
    err, ev = _probe(land, points, many, dsets)
    if err:
        return one, f"{what}: overhead-bound, but {many} cannot run it ({err})", None
    return many, f"{what} ≤ {bound / 2**20:.3g} MiB: overhead-bound, many points per call", ev


def _memory_budget(land: Landscape, fraction: float) -> int:
    """Bytes a chunk may use: ``fraction`` of the device's total memory, at most 1 GiB.
    Total, not free: free memory varies between runs, and chunk sizes must not (a
    batched strategy's rounding can depend on how many points share a product)."""
    return int(min(2**30, total_memory(land.device) * fraction))


def run(
    land: Landscape,
    points: PointSet,
    *,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    chunk_size: int | None = None,
    progress: Progress | None = None,
    memory_fraction: float = 0.25,
    journal: Journal | None = None,
    view: str = "points",
) -> EvalResult:
    """Evaluate every point of ``points`` on the chosen data sets.

    Args:
        land: the landscape.
        points: a :class:`Span` or :class:`Explicit` set of points.
        datasets: names of the data sets to evaluate (default: all).
        strategy: one of :data:`STRATEGIES`; ``"auto"`` applies :func:`choose`.
        chunk_size: points per chunk (default: from the model, the data and the
            device's total memory).
        progress: ``progress(done, total)`` called after each chunk.
        memory_fraction: share of the device's total memory (at most 1 GiB) a chunk
            may use.
        journal: a :class:`~lossmap.store.Journal`: points it already holds (under
            ``view``) are not recomputed, each finished chunk is recorded before the next
            starts, and the strategy and chunk size of the first attempt are reused, so
            a resumed run gives the same values, bit for bit, as an uninterrupted one.
        view: the name of this grid in the journal.

    Returns:
        :class:`EvalResult` with non-finite values stored as NaN. Two calls with the
        same arguments return the same values bit for bit: the strategy and the chunks
        do not depend on timing or on free memory (an out-of-memory error, which
        halves a chunk and is recorded as ``oom_halvings``, is the one exception).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    dsets = list(datasets) if datasets is not None else list(land.datasets)
    unknown = [d for d in dsets if d not in land.datasets]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; this landscape has {list(land.datasets)}")
    n = len(points)
    if n == 0:
        raise ValueError("no points to evaluate")
    t_start = time.perf_counter()
    budget = _memory_budget(land, memory_fraction)
    eligible = _eligible(land, points)
    info: dict[str, Any] = {"n_points": n, "eligible": eligible}
    streaming = any(not land.datasets[d].in_memory for d in dsets)
    out = np.empty((n, len(dsets) * len(land.stat_names)))
    done_mask = np.zeros(n, dtype=bool)

    width = out.shape[1]
    stored: dict[str, Any] | None = None
    if journal is not None:
        journal.start(view, n)
        stored = journal.meta(f"engine/{view}")
        idx_done, rows_done = journal.rows(view, width)
        if len(idx_done) and idx_done.max() >= n:
            raise ValueError(f"{journal.path}: holds points beyond this grid; pass --restart")
        out[idx_done] = rows_done
        done_mask[idx_done] = True
        info["resumed_points"] = len(idx_done)

    with land.mode(), torch.inference_mode():
        probed: _Evaluator | None = None
        if stored is not None:
            # Resuming: the first attempt's strategy and chunks, for identical values.
            strategy, chunk_size = str(stored["strategy"]), int(stored["chunk_size"])
            info["reason"] = f"resumed: {stored.get('reason', '')}"
        elif strategy == "auto":
            strategy, info["reason"], probed = _choose(land, points, dsets)
        elif strategy not in eligible:
            raise ValueError(
                f"strategy {strategy!r} cannot run here (eligible: {', '.join(eligible)}); "
                "use strategy='auto'"
            )
        else:
            info["reason"] = "asked for"
        if chunk_size is None:
            vchunk = _vmap_chunk(land, n, budget)
            chunk_size = _chunk_size(land, strategy, n, vchunk, budget, streaming)
        # The probe's evaluator keeps the first layer's products it computed on the data.
        ev = probed if probed is not None else _Evaluator(land, points, strategy)
        if journal is not None and stored is None:
            journal.set_meta(
                f"engine/{view}",
                {"strategy": strategy, "chunk_size": chunk_size, "reason": info["reason"]},
            )
        info["strategy"] = strategy
        info["chunk_size"] = chunk_size
        queue = [c for c in chunks(n, chunk_size) if not done_mask[c].all()]
        queue = [c[~done_mask[c]] for c in queue]
        done = int(done_mask.sum())
        if progress is not None and done:
            progress(done, n)
        while queue:
            idx = queue.pop(0)
            try:
                rows = _passes(ev, land, points, idx, dsets, cache=True).numpy()
            except torch.OutOfMemoryError:
                if len(idx) == 1:
                    raise
                half = len(idx) // 2
                queue[:0] = [idx[:half], idx[half:]]
                info["chunk_size"] = half
                info.setdefault("oom_halvings", 0)
                info["oom_halvings"] += 1
                log.warning("out of memory on %d points: halving the chunk to %d", len(idx), half)
                continue
            out[idx] = rows
            if journal is not None:
                journal.add_rows(view, idx, rows)
            done += len(idx)
            if progress is not None:
                progress(done, n)
    out[~np.isfinite(out)] = np.nan
    keys = [f"{d}/{s}" for d in dsets for s in land.stat_names]
    values = {k: out[:, j].copy() for j, k in enumerate(keys)}
    secs = time.perf_counter() - t_start
    info["seconds"] = secs
    info["ms_per_point"] = 1000 * secs / n
    info["nonfinite"] = int(np.isnan(out[:, 0 :: len(land.stat_names)]).any(axis=1).sum())
    return EvalResult(values, info, land.default_dataset)
