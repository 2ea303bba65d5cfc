"""Devices: which one a run uses, the precision it evaluates in, the memory it may use
and the memory it took.

Each decision is a pure function of the figures it is given (how many GPUs, the
``LOCAL_RANK`` torchrun set, total and free bytes), so that every branch, CUDA's
included, is exercised on a machine without a GPU; the callers pass the machine's own
figures (``torch.cuda.device_count()``, ``os.environ``, :func:`free_memory`).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import torch

__all__ = [
    "DEVICE_FORMS",
    "FREE_MEMORY_SHARE",
    "Budget",
    "Precision",
    "chunk_budget",
    "free_memory",
    "local_rank",
    "peak_memory",
    "precision_context",
    "reset_peak_memory",
    "resolve_device",
]

DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N from 0), mps"
"""The spellings :func:`resolve_device` accepts, as its errors list them."""

_CUDA_N = re.compile(r"cuda:(\d+)")


def local_rank(environ: Mapping[str, str]) -> int | None:
    """The ``LOCAL_RANK`` torchrun gives each process on a node, ``None`` when unset.

    >>> local_rank({}), local_rank({"LOCAL_RANK": "1"})
    (None, 1)

    Raises:
        ValueError: a value that is not a non-negative integer.
    """
    text = environ.get("LOCAL_RANK")
    if text is None:
        return None
    if not text.strip().isdigit():
        raise ValueError(
            f"LOCAL_RANK={text!r} is not a non-negative integer; start the processes with "
            "torchrun, which sets it, or unset it"
        )
    return int(text)


def resolve_device(
    spec: str, *, cuda_count: int, local_rank: int | None, mps_available: bool = False
) -> str:
    """The device ``--device spec`` names on a machine with ``cuda_count`` GPUs.

    ``auto`` is the GPU where there is one, else the CPU (never MPS, which must be
    asked for). Under torchrun (``local_rank`` set) ``auto`` and ``cuda`` mean each
    process's own GPU, ``cuda:{local_rank}``; ``cuda:N`` names one GPU as given.

    >>> resolve_device("auto", cuda_count=0, local_rank=None)
    'cpu'
    >>> resolve_device("cuda", cuda_count=2, local_rank=None)
    'cuda'
    >>> resolve_device("auto", cuda_count=2, local_rank=1)
    'cuda:1'
    >>> resolve_device("CUDA:1", cuda_count=2, local_rank=None)
    'cuda:1'

    Raises:
        ValueError: one line: a spelling that is not a device (listing
            :data:`DEVICE_FORMS`), a GPU asked for where there is none or not that many,
            ``LOCAL_RANK`` beyond the GPUs, MPS where torch has none.
    """
    text = str(spec).strip().lower()
    gpus = f"{cuda_count} GPU{'s' if cuda_count != 1 else ''}"
    if text == "cpu":
        return "cpu"
    if text == "mps":
        if not mps_available:
            raise ValueError(
                "--device mps was given but this torch has no MPS backend (Apple GPUs only); "
                "use --device cpu"
            )
        return "mps"
    m = _CUDA_N.fullmatch(text)
    if text not in ("auto", "cuda") and m is None:
        raise ValueError(f"--device {spec!r} is not a device; use one of {DEVICE_FORMS}")
    if cuda_count <= 0:
        if text == "auto":
            return "cpu"
        raise ValueError(
            f"--device {text} was given but no GPU is available "
            "(torch.cuda.device_count() is 0); use --device cpu"
        )
    if m is not None:
        n = int(m.group(1))
        if n >= cuda_count:
            raise ValueError(
                f"--device {text}: this machine has {gpus} (cuda:0 to cuda:{cuda_count - 1}); "
                "name one of them, or --device cuda"
            )
        return f"cuda:{n}"
    if local_rank is None:
        return "cuda"
    if local_rank >= cuda_count:
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this machine has {gpus}: one process per GPU "
            f"(torchrun --nproc-per-node {cuda_count}), or --device cpu"
        )
    return f"cuda:{local_rank}"


# ----------------------------------------------------------------- precision
class Precision(str, enum.Enum):
    """The precision the engine evaluates points in: ``float32``, the parameters' own
    dtype (no autocast); ``bfloat16`` or ``float16``, the model's forward pass under
    :func:`torch.autocast` to that dtype."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


_AUTOCAST_DTYPES = {Precision.bfloat16: torch.bfloat16, Precision.float16: torch.float16}


def precision_context(
    precision: str, *, device: torch.device | str, dtype: torch.dtype
) -> Callable[[], AbstractContextManager[Any]]:
    """A maker of the context a forward pass at ``precision`` runs in, checked now:
    ``torch.autocast(device type, dtype)`` for ``bfloat16``/``float16``, nothing for
    ``float32``. ``dtype``: the parameters' dtype.

    Raises:
        ValueError: an unknown precision (listing the valid ones); float64 parameters
            with a lower precision (autocast leaves float64 as it is); a device type
            or dtype torch's autocast does not support here (it would otherwise only
            warn and run in full precision).
    """
    try:
        p = Precision(precision)
    except ValueError:
        valid = ", ".join(m.value for m in Precision)
        raise ValueError(f"unknown precision {precision!r}; choose one of {valid}") from None
    low = _AUTOCAST_DTYPES.get(p)
    if low is None:
        return contextlib.nullcontext
    kind = torch.device(device).type
    if dtype != torch.float32:
        raise ValueError(
            f"precision {p.value!r} autocasts float32 tensors, but the parameters are "
            f"{str(dtype).removeprefix('torch.')}; use precision 'float32' or a float32 model"
        )
    if not torch.amp.is_autocast_available(kind):
        raise ValueError(
            f"precision {p.value!r}: torch.autocast does not support device type {kind!r}; "
            "use precision 'float32'"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autocast(kind, dtype=low):
                enabled = torch.is_autocast_enabled(kind)
        except RuntimeError as e:  # e.g. bfloat16 on a GPU older than Ampere
            raise ValueError(f"precision {p.value!r} on {kind}: {e}") from None
    if not enabled:
        why = "; ".join(str(w.message) for w in caught) or "autocast stayed disabled"
        raise ValueError(f"precision {p.value!r} is not supported on {kind} ({why})")
    return functools.partial(torch.autocast, kind, dtype=low)


# ----------------------------------------------------------------- memory
FREE_MEMORY_SHARE = 0.5
"""Where memory is short, a chunk plans for at most this share of what is free when the
run starts (the rest: what the chunk estimates miss, the allocator's slack)."""


class Budget(NamedTuple):
    """Bytes a chunk may use, and ``capped``: ``None``, or the figures that made free
    memory cut the budget (``{"free": ..., "budget": ...}``, bytes)."""

    bytes: int
    capped: dict[str, int] | None


def chunk_budget(*, total: int, free: int | None, fraction: float, most: int) -> Budget:
    """The bytes a chunk may use: ``fraction`` of ``total`` memory, at most ``most``;
    cut to :data:`FREE_MEMORY_SHARE` of ``free`` only where that is less.

    The budget comes from total memory so that two runs cut the same chunks (and so
    agree bit for bit) whatever else runs on the machine; free memory only caps it
    where the device is nearly full (another process holds most of it), and the cap is
    reported, since the chunks, and with them the last bits of batched values, may then
    differ from an uncapped run's. ``free=None`` (unknown): no cap.

    >>> chunk_budget(total=8 << 30, free=6 << 30, fraction=0.25, most=1 << 30).bytes == 1 << 30
    True
    >>> chunk_budget(total=8 << 30, free=1 << 30, fraction=0.25, most=1 << 30).capped
    {'free': 1073741824, 'budget': 1073741824}
    """
    budget = int(min(most, total * fraction))
    if free is None:
        return Budget(budget, None)
    room = int(max(0, free) * FREE_MEMORY_SHARE)
    if room >= budget:
        return Budget(budget, None)
    return Budget(max(1, room), {"free": int(free), "budget": budget})


def free_memory(device: torch.device | str) -> int | None:
    """Bytes ``device`` can still give: CUDA's free memory, on Linux the kernel's
    ``MemAvailable`` (free pages plus the cache it can drop, not ``MemFree``, which a
    full page cache makes small); ``None`` where unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return _mem_available(f.read())
    except OSError:
        return None


def _mem_available(meminfo: str) -> int | None:
    """``MemAvailable`` of a ``/proc/meminfo`` text, in bytes (``None`` if absent).

    >>> _mem_available("MemTotal: 100 kB\\nMemAvailable:  2 kB\\n")
    2048
    """
    m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, flags=re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


# ----------------------------------------------------------------- peak memory
def reset_peak_memory() -> None:
    """Start counting peak memory afresh on every GPU this process has used (a process
    that has not initialised CUDA has no count to reset)."""
    if torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def peak_memory(device: torch.device | str) -> dict[str, Any]:
    """The most memory this run held on ``device``, as run.json records it:
    ``{"device", "bytes", "how"}``.

    On a GPU, :func:`torch.cuda.max_memory_allocated` since :func:`reset_peak_memory`
    (tensors only: the allocator's cache and the CUDA context come on top). Elsewhere,
    the process's largest resident set (``ru_maxrss``: every run in this process so
    far, and the interpreter and libraries with them); ``bytes`` is ``None`` where the
    platform has no such count.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_initialized():
            return {"device": str(dev), "bytes": 0, "how": "torch.cuda.max_memory_allocated"}
        return {
            "device": str(dev),
            "bytes": int(torch.cuda.max_memory_allocated(dev)),
            "how": "torch.cuda.max_memory_allocated",
        }
    try:
        import resource
    except ImportError:  # Windows
        return {"device": str(dev), "bytes": None, "how": "unavailable"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return {
        "device": str(dev),
        "bytes": int(rss if sys.platform == "darwin" else rss * 1024),
        "how": "ru_maxrss",
    }
