"""Devices: which one a run uses.

A pure function of the figures it is given (how many GPUs, the ``LOCAL_RANK`` torchrun
set), so that every branch, CUDA's included, is exercised on a machine without a GPU;
the command line passes the machine's own figures (``torch.cuda.device_count()``,
``os.environ``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "DEVICE_FORMS",
    "local_rank",
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
