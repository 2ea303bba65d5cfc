"""Shared by the commands: the typer app, option types, and the pieces of a run folder
(progress bars, JSON and CSV files, summaries), which :mod:`lossmap.cli._run` puts together."""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Loss landscape analysis: lines, planes and paths through parameter space.",
)


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


# What main() needs to report an interruption and what run.json records of the call.
CURRENT_RUN: dict[str, Any] = {"argv": [], "journal": None, "run_id": None}


def secondary_rank() -> bool:
    """Whether this process is a rank other than 0 of a ``torchrun`` job: it computes
    its share and writes nothing (rank 0 writes the run folder and talks)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


class Example(str, enum.Enum):
    digits = "digits"
    linear = "linear"
    logistic = "logistic"
    resnet20 = "resnet20"
    transformer = "transformer"


class Norm(str, enum.Enum):
    filter = "filter"
    layer = "layer"
    model = "model"
    unit = "unit"
    none = "none"


class Strategy(str, enum.Enum):
    """The engine's strategies (``lossmap.evaluate.STRATEGIES``), checked by typer."""

    auto = "auto"
    loop = "loop"
    vmap = "vmap"
    affine = "affine"
    affine_vmap = "affine-vmap"


# ---------------------------------------------------------------- options
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="'package.module:factory' returning a Landscape or (model, criterion, data).",
    ),
]


ExampleOpt = Annotated[
    Example | None, typer.Option("--example", help="A built-in problem instead of --model.")
]


CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="A state dict to take θ0 from (weights_only).")
]


_SPAN_HELP = (
    "Coordinate range: R for -R..R, or LO,HI; e.g. --span 1, --span -0.5,1.5 "
    "(--span LO HI also works)."
)
SpanOpt = Annotated[str, typer.Option("--span", metavar="R|LO,HI", help=_SPAN_HELP)]


SpanBetaOpt = Annotated[
    str | None,
    typer.Option(
        "--span-beta",
        metavar="R|LO,HI",
        help="The β axis's range, spelled as --span, e.g. --span 1 --span-beta 0.5 "
        "(default: --span).",
    ),
]


StepsBetaOpt = Annotated[
    int | None,
    typer.Option(
        "--steps-beta",
        min=2,
        help="Points on the β axis, e.g. --steps 41 --steps-beta 21 (default: --steps).",
    ),
]


_SPAN_OPTIONS = ("--span", "--span-beta")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def join_span_pairs(argv: list[str]) -> list[str]:
    """``--span LO HI`` (two words, as earlier versions took it) becomes ``--span LO,HI``,
    so ``--span 1`` and ``--span -1,1`` can be one option's value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if (
            a in _SPAN_OPTIONS
            and i + 2 < len(argv)
            and _is_number(argv[i + 1])
            and _is_number(argv[i + 2])
        ):
            out += [a, f"{argv[i + 1]},{argv[i + 2]}"]
            i += 3
            continue
        out.append(a)
        i += 1
    return out


def parse_span_text(text: str, option: str = "--span") -> tuple[float, float]:
    """``"R"`` -> ``(-R, R)``; ``"LO,HI"`` -> ``(LO, HI)``, checked as the library does.

    >>> parse_span_text("1"), parse_span_text("-0.5,1.5")
    ((-1.0, 1.0), (-0.5, 1.5))
    """
    from lossmap.slices import parse_span

    parts = [p.strip() for p in str(text).split(",")]
    if not (1 <= len(parts) <= 2 and all(_is_number(p) for p in parts)):
        raise CliError(
            f"{option} {text!r} must be R (for -R..R) or LO,HI; e.g. {option} 1 or "
            f"{option} -0.5,1.5"
        )
    nums = [float(p) for p in parts]
    pair = (-nums[0], nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    ((lo, hi),) = parse_span([pair], 1)
    return lo, hi


NormOpt = Annotated[
    Norm, typer.Option("--normalization", help="Direction normalisation (Li et al. 2018).")
]


IgnoreOpt = Annotated[
    str,
    typer.Option(
        "--ignore", help="Comma-separated: bias, norm, or parameter-name globs; '' for none."
    ),
]


def seed_option(what: str) -> Any:
    """``--seed``'s option, its help saying what it seeds on this command:
    ``Annotated[int, seed_option("...")]``."""
    return typer.Option("--seed", min=0, max=2**63 - 1, help=f"Seeds {what}.")


SeedOpt = Annotated[int, seed_option("the random directions")]


DatasetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset",
        help="A data set to evaluate, by the name the factory gives it (repeat for several; "
        "default: all), e.g. --dataset test.",
    ),
]


TrainModeOpt = Annotated[
    bool,
    typer.Option(
        "--train-mode",
        help="Evaluate in train mode (BatchNorm uses each batch's statistics); default: eval.",
    ),
]


def machine_device(spec: str) -> str:
    """The device ``--device spec`` names on this machine (its GPUs, torchrun's
    ``LOCAL_RANK``): :func:`lossmap.devices.resolve_device`, its error as one line."""
    import torch

    from lossmap.devices import local_rank, resolve_device

    try:
        return resolve_device(
            spec,
            cuda_count=torch.cuda.device_count(),
            local_rank=local_rank(os.environ),
            mps_available=torch.backends.mps.is_available(),
        )
    except ValueError as e:
        raise CliError(str(e)) from None


def _check_device(spec: str) -> str:
    """Checked as the command line is read, before anything runs; kept as typed (run.json
    records ``auto``, which another machine resolves its own way)."""
    machine_device(spec)
    return spec


DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="auto|cpu|cuda|cuda:N|mps",
        callback=_check_device,
        help="auto: the GPU if there is one (under torchrun, cuda:LOCAL_RANK), else the CPU.",
    ),
]


class Precision(str, enum.Enum):
    """The engine's precisions (``lossmap.devices.Precision``), checked by typer."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="Evaluate the model's forward passes in float32, or under torch.autocast to "
        "bfloat16/float16 (one point per call; never the Hessian's products).",
    ),
]


OutOpt = Annotated[Path, typer.Option("--out", help="Run folder to write.")]


LogOpt = Annotated[
    bool | None,
    typer.Option(
        "--log/--linear",
        help="Colour/height scale of loss figures (default: log when the loss spans decades).",
    ),
]


RestartOpt = Annotated[
    bool,
    typer.Option("--restart", help="Discard what the run folder's journal holds; start afresh."),
]


ChunkOpt = Annotated[
    int | None, typer.Option("--chunk-size", min=1, help="Points per chunk (default: by memory).")
]


TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Allow checkpoints that need full unpickling (this runs code from the file).",
    ),
]


CkptKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoint-key", help="Where the state dict sits in the checkpoint, e.g. 'state_dict'."
    ),
]


MaxHoursOpt = Annotated[
    float, typer.Option("--max-hours", min=0, help="Refuse grids estimated to take longer.")
]


StrategyOpt = Annotated[Strategy, typer.Option("--strategy", help="Engine strategy.")]


def human_time(seconds: float) -> str:
    for unit, n in (("years", 3.15e7), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= n:
            return f"{seconds / n:,.3g} {unit}"
    return f"{seconds:.3g} s"


def check_budget(
    steps: int | list[int], n_axes: int, secs_per_point: float, max_hours: float
) -> None:
    """Refuse a grid of ``steps`` per axis (one int for every axis, or one per axis) that
    is too large or estimated to take longer than ``max_hours``."""
    from lossmap.slices import MAX_POINTS

    per_axis = [steps] * n_axes if isinstance(steps, int) else list(steps)
    total = math.prod(per_axis)
    est = total * secs_per_point
    if total > MAX_POINTS or est > max_hours * 3600:
        grid = " x ".join(str(n) for n in per_axis)
        raise CliError(
            f"a {grid} grid is {total:,} points: about {human_time(est)} at the "
            f"{1e3 * secs_per_point:.3g} ms one point took here; use fewer --steps "
            f"(limits: {MAX_POINTS:,} points, --max-hours {max_hours:g})"
        )


def pid_alive(pid: Any) -> bool:
    """Whether another process with this id runs (a journal's last writer)."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def prepare_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(
            f"--out {out} cannot be created ({e.strerror}); choose a writable folder"
        ) from None
    if not os.access(out, os.W_OK):
        raise CliError(f"--out {out} is not writable; choose a writable folder")
    return out


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar with ETA (to stderr), fed by the engine's ``progress(done, total)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
        disable=not console.is_terminal or secondary_rank(),
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def write_json(path: Path, obj: Any) -> None:
    from lossmap.results import atomic_path, jsonable

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n")


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    import csv

    from lossmap.results import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def summary_lines(
    result: Any, name: str, at_theta0: Mapping[str, float] | None = None
) -> list[str]:
    """One line per loss and accuracy: at θ0, min, max. ``at_theta0``: the values at θ0
    evaluated apart, for a grid that does not hold θ0 (an even ``--steps``)."""
    lines = []
    for key in result.values:
        if not key.endswith("/loss") and not key.endswith("/accuracy"):
            continue
        s = result.summary(key)
        at = f"{s['at_theta0']:.4g} at θ0, " if "at_theta0" in s else ""
        if not at and at_theta0 is not None and key in at_theta0:
            at = f"{at_theta0[key]:.4g} at θ0 (not a grid point), "
        rng = f"min {s['min']:.4g}, max {s['max']:.4g}" if "min" in s else "no finite values"
        nan = f", {s['nonfinite']} non-finite" if s["nonfinite"] else ""
        lines.append(f"  {name} {key}: {at}{rng}{nan}")
    return lines


def library_versions() -> dict[str, str]:
    from lossmap.slices import versions

    return versions()


def echo(lines: list[str]) -> None:
    for line in [] if secondary_rank() else lines:
        typer.echo(line)


def echo_err(lines: list[str]) -> None:
    """Warnings and notes: on stderr, one line each (rank 0's only, under torchrun)."""
    for line in [] if secondary_rank() else lines:
        typer.echo(line, err=True)


def data_hash(land: Any) -> dict[str, str]:
    """A hash of each data set held in memory (streamed sets: their batch count)."""
    from lossmap.store import hash_tensors

    out = {}
    for name, ds in land.datasets.items():
        if ds.in_memory:
            tensors = [t for b in ds.batches for t in (b if isinstance(b, tuple | list) else [b])]
            tensors = [t for t in tensors if hasattr(t, "detach")]
            out[name] = hash_tensors(tensors)
        else:
            out[name] = "streamed"
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_ignore(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def random_directions(land: Any, n: int, normalization: Norm, ignore: str, seed: int) -> Any:
    import lossmap as lm

    return lm.directions.random(
        land, n, normalization=normalization.value, ignore=parse_ignore(ignore), seed=seed
    )


def barrier_line(name: str, barriers: Mapping[str, Any]) -> str:
    parts = [
        f"{k} {v['height']:.4g} (Frankle {v['height_frankle']:.4g})" for k, v in barriers.items()
    ]
    return f"  barrier along the {name}: " + "; ".join(parts)
