"""The ``lossmap`` command: parse, build a Landscape, call the library, write a run folder.

A run folder holds the result files (``.h5``, ``.csv``), figures (``.png``, ``.pdf``)
and ``run.json`` (arguments, versions, seed, timings, summary).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import importlib
import importlib.util
import json
import math
import os
import signal
import sqlite3
import sys
import time
import warnings
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
_RUN: dict[str, Any] = {"argv": [], "journal": None}


class Example(str, enum.Enum):
    digits = "digits"
    linear = "linear"
    logistic = "logistic"


class Norm(str, enum.Enum):
    filter = "filter"
    layer = "layer"
    model = "model"
    unit = "unit"
    none = "none"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# ----------------------------------------------------------------- helpers
def _device(device: Device) -> str | None:
    import torch

    if device is Device.cuda and not torch.cuda.is_available():
        raise CliError("--device cuda was given but no GPU is available; use --device cpu")
    if device is Device.auto:
        return "cuda" if torch.cuda.is_available() else None
    return device.value


def _example(name: Example) -> Any:
    from lossmap import examples

    makers: dict[Example, Callable[[], Any]] = {
        Example.digits: examples.digits_mlp,
        Example.linear: examples.linear_regression,
        Example.logistic: examples.logistic_regression,
    }
    return makers[name]()


def _import_factory(spec: str) -> Callable[[], Any]:
    """``pkg.module:factory`` or ``path/to/file.py:factory``."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise CliError(
            f"--model {spec!r} must look like 'package.module:factory' or 'file.py:factory'"
        )
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise CliError(f"--model: no file {path}; check the path")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        if loader_spec is None or loader_spec.loader is None:
            raise CliError(f"--model: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[path.stem] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise CliError(f"--model: importing {path} failed: {type(e).__name__}: {e}") from None
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            raise CliError(
                f"--model: cannot import {mod_name!r} ({e}); run from its folder, set PYTHONPATH, "
                "or give a file path 'path/to/file.py:factory'"
            ) from None
        except Exception as e:
            raise CliError(
                f"--model: importing {mod_name!r} failed: {type(e).__name__}: {e}"
            ) from None
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")][:10]
        raise CliError(f"--model: {mod_name!r} has no attribute {attr!r}; it has {public}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise CliError(f"--model: {spec!r} is not callable; point it at a function")
    return factory  # type: ignore[no-any-return]


def build_landscape(model: str | None, example: Example | None, device: Device) -> Any:
    """The Landscape named by ``--model`` (a factory) or ``--example``."""
    import lossmap as lm

    if (model is None) == (example is None):
        raise CliError("give exactly one of --model package.module:factory or --example NAME")
    dev = _device(device)
    if example is not None:
        land = _example(example)
        return land if dev is None or str(land.device) == dev else _rebuild(land, dev)
    factory = _import_factory(str(model))
    try:
        made = factory()
    except Exception as e:
        raise CliError(f"--model: the factory {model!r} raised {type(e).__name__}: {e}") from None
    if isinstance(made, lm.Landscape):
        return made if dev is None or str(made.device) == dev else _rebuild(made, dev)
    if isinstance(made, tuple) and len(made) == 3:
        net, criterion, data = made
        try:
            return lm.Landscape(net, criterion, data=data, device=dev)
        except (TypeError, ValueError) as e:
            raise CliError(
                f"--model: the factory's (model, criterion, data) are unusable: {e}"
            ) from None
    raise CliError(
        f"--model: the factory {model!r} returned {type(made).__name__}; it must return a "
        "lossmap.Landscape or a tuple (model, criterion, data)"
    )


def _rebuild(land: Any, device: str) -> Any:
    import lossmap as lm

    data = {k: (ds.batches if ds.in_memory else ds.loader) for k, ds in land.datasets.items()}
    return lm.Landscape(
        land.model,
        land.criterion,
        data=data,
        loss=land.loss_fn,
        metrics=land.metrics,
        device=device,
        train_mode=land.train_mode,
    )


_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def _is_state(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _is_whole_pickle(path: Path) -> bool:
    """Whether the file parses as one complete pickle (read with ``pickletools``, which
    only lists opcodes and runs nothing)."""
    import pickletools

    try:
        with open(path, "rb") as f:
            for _ in pickletools.genops(f):
                pass
    except Exception:
        return False
    return True


def load_checkpoint(path: Path, *, key: str | None = None, trust: bool = False) -> dict[str, Any]:
    """A state dict from a checkpoint file, loaded with ``weights_only=True``.

    Recognises state dicts nested in training checkpoints (``{"model": ...}``,
    ``{"state_dict": ...}`` as Lightning writes them; ``key`` names the place
    explicitly, dotted for deeper levels: ``"ema.model"``). ``trust=True`` allows full
    unpickling, which runs code from the file: only for files the user trusts.
    """
    import pickle

    import torch

    if not path.is_file():
        raise CliError(f"--checkpoint: no file {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not for users
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        text = str(e)
        raw_pickle = _is_whole_pickle(path)
        if raw_pickle and "Unsupported global" not in text:
            raise CliError(
                f"--checkpoint {path} is a plain pickle, which could run code when loaded; "
                "re-save it with torch.save(model.state_dict(), path), or pass "
                "--trust-checkpoint if you trust the file"
            ) from None
        if "Unsupported global" not in text:  # not a pickle of objects: a damaged file
            detail = next(
                (ln.strip() for ln in text.splitlines() if "Unsupported" in ln), "bad data"
            )
            raise CliError(
                f"--checkpoint {path} is not a readable PyTorch file ({detail}); is it truncated or corrupt?"
            ) from None
        name = text.split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in text else "an object"
        raise CliError(
            f"--checkpoint {path} holds pickled Python objects ({name}), which could run code when "
            "loaded; save a plain state_dict (torch.save(model.state_dict(), path)), or pass "
            "--trust-checkpoint if you trust the file"
        ) from None
    except Exception as e:
        raise CliError(
            f"--checkpoint {path} is not a readable PyTorch file ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'no detail'}); "
            "is it truncated or corrupt?"
        ) from None
    if key is not None:
        for part in key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                have = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
                raise CliError(
                    f"--checkpoint-key {key!r}: {part!r} is not in {path} (it has {have})"
                )
            obj = obj[part]
    elif isinstance(obj, Mapping) and not _is_state(obj):
        inner = [
            k
            for k in _NESTED_KEYS
            if _is_state(obj.get(k)) or isinstance(obj.get(k), torch.nn.Module)
        ]
        if inner:
            obj = obj[inner[0]]
    if isinstance(obj, torch.nn.Module):  # only loadable with --trust-checkpoint
        obj = obj.state_dict()
    if not _is_state(obj):
        hint = (
            f"; its keys are {list(obj)[:8]}: name the state dict with --checkpoint-key"
            if isinstance(obj, Mapping)
            else "; save model.state_dict()"
        )
        raise CliError(
            f"--checkpoint {path} holds a {type(obj).__name__}, not a state dict of tensors{hint}"
        )
    return dict(obj)


def _align_prefix(sd: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    """Strip a prefix every key shares (DataParallel's ``module.``, Lightning's
    ``model.``) when that makes the keys those of the model."""
    if set(sd) <= expected or not sd:
        return sd
    first = next(iter(sd))
    parts = first.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i]) + "."
        if all(k.startswith(prefix) for k in sd):
            stripped = {k[len(prefix) :]: v for k, v in sd.items()}
            if set(stripped) & expected:
                return stripped
    return sd


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def with_checkpoint(
    land: Any, checkpoint: Path | None, *, key: str | None = None, trust: bool = False
) -> Any:
    if checkpoint is None:
        return land
    if trust:
        typer.echo(
            f"warning: loading {checkpoint} with full unpickling (--trust-checkpoint)", err=True
        )
    sd = load_checkpoint(checkpoint, key=key, trust=trust)
    sd = _align_prefix(sd, set(land._params0) | set(land._fixed0))
    try:
        return land.at(sd)
    except ValueError as e:
        raise CliError(f"--checkpoint {checkpoint}: {e}") from None


def _data_hash(land: Any) -> dict[str, str]:
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


def _check_theta0(land: Any) -> float:
    """Evaluate θ0 once on every data set before the long work: seconds per point.

    A model that cannot run on its data, or whose loss at θ0 is not finite, is refused
    here in one line rather than after hours of NaN.
    """
    t = time.perf_counter()
    try:
        vals = land.evaluate([land._params0], strategy="loop")
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else "no detail"
        raise CliError(
            f"evaluating the model at θ0 failed ({type(e).__name__}: {msg}); check that the "
            "data fit the model and the criterion (input shapes, labels in [0, classes))"
        ) from None
    secs = time.perf_counter() - t
    for k, v in vals.items():
        if k.endswith("/loss") and not math.isfinite(float(v[0])):
            raise CliError(
                f"the {k} at θ0 is {float(v[0])}; check the checkpoint and the data "
                "(a diverged model, NaN inputs, or a loss that overflows)"
            )
    return secs


def _human(seconds: float) -> str:
    for unit, n in (("years", 3.15e7), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= n:
            return f"{seconds / n:,.3g} {unit}"
    return f"{seconds:.3g} s"


def _check_budget(steps: int, n_axes: int, secs_per_point: float, max_hours: float) -> None:
    from lossmap.slices import MAX_POINTS

    total = steps**n_axes
    est = total * secs_per_point
    if total > MAX_POINTS or est > max_hours * 3600:
        grid = " x ".join([str(steps)] * n_axes)
        raise CliError(
            f"a {grid} grid is {total:,} points: about {_human(est)} at the "
            f"{1e3 * secs_per_point:.3g} ms one point took here; use fewer --steps "
            f"(limits: {MAX_POINTS:,} points, --max-hours {max_hours:g})"
        )


def _open_journal(out: Path, fingerprint: dict[str, Any], restart: bool) -> Any:
    import lossmap
    from lossmap.store import Journal, JournalMismatch

    # Another lossmap version may compute other values: never mix them in one run.
    fingerprint = {**fingerprint, "lossmap": lossmap.__version__}
    try:
        j = Journal(out / "journal.sqlite", fingerprint, restart=restart)
    except JournalMismatch as e:
        raise CliError(str(e)) from None
    _RUN["journal"] = j.path
    return j


def _prepare_out(out: Path) -> Path:
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
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
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
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _write_json(path: Path, obj: Any) -> None:
    from lossmap.results import _jsonable, atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")


def _save_result(result: Any, out: Path, name: str, *, log: bool | None = None) -> list[Path]:
    from lossmap import plot

    files = [result.save(out / f"{name}.h5"), result.to_csv(out / f"{name}.csv")]
    files += plot.figures(result, out, prefix=f"{name}_", log=log)
    return files


def _summary_lines(result: Any, name: str) -> list[str]:
    lines = []
    for key in result.values:
        if not key.endswith("/loss") and not key.endswith("/accuracy"):
            continue
        s = result.summary(key)
        at = f"{s['at_theta0']:.4g} at θ0, " if "at_theta0" in s else ""
        rng = f"min {s['min']:.4g}, max {s['max']:.4g}" if "min" in s else "no finite values"
        nan = f", {s['nonfinite']} non-finite" if s["nonfinite"] else ""
        lines.append(f"  {name} {key}: {at}{rng}{nan}")
    return lines


def _versions() -> dict[str, str]:
    from lossmap.slices import versions

    return versions()


def _record(
    out: Path,
    command: str,
    args: dict[str, Any],
    results: dict[str, Any],
    files: list[Path],
    t0: float,
    **extra: Any,
) -> None:
    _write_json(
        out / "run.json",
        {
            "command": command,
            "arguments": args,
            "versions": _versions(),
            "seconds": time.perf_counter() - t0,
            "results": {k: {"summary": r.summary(), "meta": r.meta} for k, r in results.items()},
            **extra,
            "files": sorted(str(f.relative_to(out)) for f in files),
        },
    )


def _provenance(land: Any, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``lossmap rerun`` needs to repeat the run, and what a reader needs to trust it.

    Hashes the fingerprint already holds (of θ0, of the data) are not computed again."""
    from lossmap.store import hash_tensors

    fp = fingerprint or {}
    return {
        "argv": list(_RUN["argv"]),
        "cwd": os.getcwd(),
        "device": str(land.device),
        "theta0_sha256": fp.get("theta0") or hash_tensors(land._params0),
        "data_sha256": fp.get("data") or _data_hash(land),
        "fingerprint": fingerprint,
    }


def _echo(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)


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
SpanOpt = Annotated[tuple[float, float], typer.Option("--span", help="Coordinate range LO HI.")]
NormOpt = Annotated[
    Norm, typer.Option("--normalization", help="Direction normalisation (Li et al. 2018).")
]
IgnoreOpt = Annotated[
    str,
    typer.Option(
        "--ignore", help="Comma-separated: bias, norm, or parameter-name globs; '' for none."
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random directions.")]
DeviceOpt = Annotated[Device, typer.Option("--device")]
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
StrategyOpt = Annotated[
    str, typer.Option("--strategy", help="Engine strategy: auto, loop, vmap, affine, affine-vmap.")
]


def _ignore(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _directions(land: Any, n: int, normalization: Norm, ignore: str, seed: int) -> Any:
    import lossmap as lm

    return lm.directions.random(
        land, n, normalization=normalization.value, ignore=_ignore(ignore), seed=seed
    )


def _random_slice(view: str, args: dict[str, Any]) -> None:
    """``lossmap line`` / ``lossmap plane``: validate, build, evaluate (resumably), write."""
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    n = 1 if view == "line" else 2
    lm.slices.parse_span(args["span"], n)
    out = _prepare_out(args["out"])
    land = with_checkpoint(
        build_landscape(args["model"], args["example"], args["device"]),
        args["checkpoint"],
        key=args["checkpoint_key"],
        trust=args["trust_checkpoint"],
    )
    dirs = _directions(land, n, args["normalization"], args["ignore"], args["seed"])
    _check_budget(args["steps"], n, _check_theta0(land), args["max_hours"])
    fp = {
        "command": view,
        **{
            k: args[k]
            for k in ("model", "example", "span", "steps", "normalization", "ignore", "seed")
        },
        "strategy": args["strategy"],
        "checkpoint_sha256": _sha256(args["checkpoint"]) if args["checkpoint"] else None,
        "theta0": hash_tensors(land._params0),
        "directions": hash_tensors([t for d in dirs for t in d.values()]),
        "data": _data_hash(land),
        "device": str(land.device),
    }
    journal = _open_journal(out, fp, args["restart"])
    kw = {
        "span": args["span"],
        "steps": args["steps"],
        "strategy": args["strategy"],
        "chunk_size": args["chunk_size"],
        "journal": journal,
    }
    try:
        with _progress(view) as progress:
            r = (
                lm.line(land, dirs[0], progress=progress, **kw)
                if n == 1
                else lm.plane(land, *dirs, progress=progress, **kw)
            )
    finally:
        journal.close()
    name = "line" if n == 1 else "surface"
    files = _save_result(r, out, name, log=args["log"])
    _record(out, view, args, {name: r}, files, t0, **_provenance(land, fp))
    resumed = r.meta["engine"].get("resumed_points", 0)
    note = [f"  resumed: {resumed} of {r['loss'].size} points were done"] if resumed else []
    _echo([*_summary_lines(r, view), *note, f"wrote {out}/ ({len(files)} files)"])


# ---------------------------------------------------------------- commands
@app.command()
def line(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    span: SpanOpt = (-1.0, 1.0),
    steps: Annotated[int, typer.Option("--steps", min=2)] = 51,
    normalization: NormOpt = Norm.filter,
    ignore: IgnoreOpt = "bias,norm",
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    strategy: StrategyOpt = "auto",
    out: OutOpt = Path("runs/line"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    chunk_size: ChunkOpt = None,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """The loss along one random (normalised) direction through θ0."""
    _random_slice("line", dict(locals()))


@app.command()
def plane(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    span: SpanOpt = (-1.0, 1.0),
    steps: Annotated[int, typer.Option("--steps", min=2)] = 41,
    normalization: NormOpt = Norm.filter,
    ignore: IgnoreOpt = "bias,norm",
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    strategy: StrategyOpt = "auto",
    out: OutOpt = Path("runs/plane"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    chunk_size: ChunkOpt = None,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """The loss on a plane spanned by two random (normalised, orthogonal) directions."""
    _random_slice("plane", dict(locals()))


@app.command()
def interpolate(
    checkpoint_a: Annotated[Path, typer.Argument(help="State dict at t = 0.")],
    checkpoint_b: Annotated[Path, typer.Argument(help="State dict at t = 1.")],
    model: ModelOpt = None,
    example: ExampleOpt = None,
    span: SpanOpt = (-0.5, 1.5),
    steps: Annotated[int, typer.Option("--steps", min=2)] = 41,
    device: DeviceOpt = Device.auto,
    strategy: StrategyOpt = "auto",
    out: OutOpt = Path("runs/interpolate"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    chunk_size: ChunkOpt = None,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """The loss on the straight line between two checkpoints (t from span[0] to span[1])."""
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    args = dict(locals())
    lm.slices.parse_span(span, 1)
    out = _prepare_out(out)
    land = build_landscape(model, example, device)
    la = with_checkpoint(land, checkpoint_a, key=checkpoint_key, trust=trust_checkpoint)
    lb = with_checkpoint(land, checkpoint_b, key=checkpoint_key, trust=trust_checkpoint)
    _check_budget(steps, 1, max(_check_theta0(la), _check_theta0(lb)), max_hours)
    fp = {
        "command": "interpolate",
        "model": model,
        "example": example,
        "span": span,
        "steps": steps,
        "strategy": strategy,
        "checkpoint_sha256": [_sha256(checkpoint_a), _sha256(checkpoint_b)],
        "theta": [hash_tensors(la._params0), hash_tensors(lb._params0)],
        "data": _data_hash(land),
        "device": str(land.device),
    }
    journal = _open_journal(out, fp, restart)
    try:
        with _progress("interpolate") as progress:
            c = lm.interpolate(
                la,
                la.point(),
                lb.point(),
                span=span,
                steps=steps,
                strategy=strategy,
                progress=progress,
                chunk_size=chunk_size,
                journal=journal,
            )
    finally:
        journal.close()
    files = _save_result(c, out, "path", log=log)
    _record(out, "interpolate", args, {"path": c}, files, t0, **_provenance(la, fp))
    _echo([*_summary_lines(c, "path"), f"wrote {out}/ ({len(files)} files)"])


class CurveOpt(str, enum.Enum):
    bezier = "bezier"
    polychain = "polychain"
    none = "none"


def _pair(
    land: Any,
    checkpoint_a: Path | None,
    checkpoint_b: Path | None,
    example: Example | None,
    key: str | None,
    trust: bool,
) -> tuple[Any, Any]:
    """The two endpoints: two checkpoints, or (built-in digits) a second seed's training."""
    if (checkpoint_a is None) != (checkpoint_b is None):
        raise CliError("give two checkpoints (CKPT_A CKPT_B), or none with --example digits")
    if checkpoint_a is not None and checkpoint_b is not None:
        la = with_checkpoint(land, checkpoint_a, key=key, trust=trust)
        lb = with_checkpoint(land, checkpoint_b, key=key, trust=trust)
        return la, lb
    if example is not Example.digits:
        raise CliError(
            "without checkpoints only --example digits has a second endpoint (another seed); "
            "pass CKPT_A CKPT_B"
        )
    from lossmap import examples

    other = examples.digits_mlp(seed=1)
    return land, land.at(dict(other.model.state_dict()))


@app.command()
def connect(
    checkpoint_a: Annotated[Path | None, typer.Argument(help="State dict at t = 0.")] = None,
    checkpoint_b: Annotated[Path | None, typer.Argument(help="State dict at t = 1.")] = None,
    model: ModelOpt = None,
    example: ExampleOpt = None,
    curve: Annotated[
        CurveOpt, typer.Option("--curve", help="Fit a Garipov et al. curve, or none.")
    ] = CurveOpt.bezier,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Curve-fitting epochs.")] = 20,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Curve-fitting step size.")] = 0.1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    steps: Annotated[int, typer.Option("--steps", min=2, help="Points along each path.")] = 41,
    span: Annotated[
        tuple[float, float],
        typer.Option("--span", help="t range of the straight path (must contain 0 and 1)."),
    ] = (-0.5, 1.5),
    reset_bn: Annotated[
        bool, typer.Option("--reset-bn", help="Recompute BatchNorm statistics along the line.")
    ] = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: OutOpt = Path("runs/connect"),
    restart: RestartOpt = False,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Paths between two minima: the straight line's barrier and a fitted low-loss curve.

    With BatchNorm, the curve is fitted in train mode and each of its points is
    evaluated with statistics recomputed there; ``--reset-bn`` does the same for the
    straight path (otherwise it uses the landscape's statistics at every t)."""
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    args = dict(locals())
    out = _prepare_out(out)
    land = build_landscape(model, example, device)
    la, lb = _pair(land, checkpoint_a, checkpoint_b, example, checkpoint_key, trust_checkpoint)
    for end in (la, lb):
        _check_theta0(end)
    a, b = la.point(), lb.point()
    with _progress("straight path") as progress:
        progress(0, 1)
        line = lm.connect.linear(la, a, b, steps=steps, span=span, reset_bn=reset_bn)
        progress(1, 1)
    results: dict[str, Any] = {"path": line}
    files = _save_result(line, out, "path")
    lines = [_barrier_line("straight", line.meta["barrier"])]
    extra: dict[str, Any] = {"barrier_line": line.meta["barrier"]}
    if curve is not CurveOpt.none:
        fp = {
            "command": "connect",
            "model": model,
            "example": example,
            "curve": curve.value,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
            "a": hash_tensors(a),
            "b": hash_tensors(b),
            "data": _data_hash(land),
        }
        journal = _open_journal(out, fp, restart)
        try:
            with _progress(f"{curve.value} curve") as progress:
                fit = lm.connect.curve(
                    la,
                    a,
                    b,
                    kind=curve.value,
                    epochs=epochs,
                    lr=lr,
                    batch_size=batch_size,
                    seed=seed,
                    steps=steps,
                    journal=journal,
                    progress=progress,
                )
        finally:
            journal.close()
        c = fit.to_curve("curve")
        results["curve"] = c
        files += _save_result(c, out, "curve")
        lines.append(_barrier_line(f"{curve.value} curve", fit.meta["barrier"]["curve"]))
        extra["barrier_curve"] = fit.meta["barrier"]["curve"]
    _record(out, "connect", args, results, files, t0, **extra, **_provenance(la))
    _echo([*lines, f"wrote {out}/ ({len(files)} files)"])


def _barrier_line(name: str, barriers: Mapping[str, Any]) -> str:
    parts = [
        f"{k} {v['height']:.4g} (Frankle {v['height_frankle']:.4g})" for k, v in barriers.items()
    ]
    return f"  barrier along the {name}: " + "; ".join(parts)


def _digits_trajectory(land: Any, epochs: int, seed: int) -> tuple[list[Any], list[float]]:
    """Checkpoints of the built-in digits MLP, trained from scratch by plain SGD (no
    optimizer state, so one epoch at a time is the same run), one per epoch."""
    from torch import nn

    from lossmap import examples, trajectory

    model = examples.make_mlp([64, 128, 128, 10], seed=seed)
    x, y = land.datasets[land.default_dataset].batches[0]
    cps = [trajectory.snapshot(model)]
    for epoch in range(epochs):
        examples.train(
            model,
            nn.CrossEntropyLoss(),
            x,
            y,
            epochs=1,
            batch_size=64,
            lr=0.1,
            optimizer="sgd",
            seed=seed * 1000 + epoch,
        )
        cps.append(trajectory.snapshot(model))
    return cps, [float(e) for e in range(epochs + 1)]


@app.command("trajectory")
def trajectory_cmd(
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(help="Checkpoints in training order (>= 2).")
    ] = None,
    model: ModelOpt = None,
    example: ExampleOpt = None,
    steps: Annotated[int, typer.Option("--steps", min=2, help="Grid points per axis.")] = 41,
    ignore: IgnoreOpt = "",
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Built-in digits: epochs to record.")
    ] = 20,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: OutOpt = Path("runs/trajectory"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """A training path on the plane of its top two principal directions (Li et al. 2018)."""
    from lossmap import plot as lplot
    from lossmap import trajectory

    t0 = time.perf_counter()
    args = dict(locals())
    out = _prepare_out(out)
    land = build_landscape(model, example, device)
    if checkpoints:
        if len(checkpoints) < 2:
            raise CliError(
                f"a trajectory needs at least 2 checkpoints (got {len(checkpoints)}); pass the "
                "checkpoints saved during training, in order"
            )
        cps = [
            with_checkpoint(land, path, key=checkpoint_key, trust=trust_checkpoint)._params0
            for path in checkpoints
        ]
        labels = [float(i) for i in range(len(cps))]
    elif example is Example.digits:
        cps, labels = _digits_trajectory(land, epochs, seed)
    else:
        raise CliError("pass checkpoints (CKPT...) in training order, or use --example digits")
    final = land.at(dict(cps[-1]))
    _check_budget(steps, 2, _check_theta0(final), max_hours)
    from lossmap.store import hash_tensors

    fp = {
        "command": "trajectory",
        "model": model,
        "example": example,
        "steps": steps,
        "ignore": ignore,
        "checkpoints": hash_tensors([t for c in cps for t in c.values()]),
        "data": _data_hash(land),
        "device": str(land.device),
    }
    journal = _open_journal(out, fp, restart)
    try:
        with _progress("trajectory plane") as progress:
            surf, coords = trajectory.pca_plane(
                final,
                cps,
                steps=steps,
                ignore=_ignore(ignore),
                labels=labels,
                progress=progress,
                journal=journal,
            )
    finally:
        journal.close()
    files = _save_result(surf, out, "surface", log=log)
    fig = lplot.trajectory(surf, log=log)
    files += lplot.save(fig, out / "trajectory")
    _record(out, "trajectory", args, {"surface": surf}, files, t0, **_provenance(final))
    ev = surf.meta["trajectory"]["explained_variance_ratio"]
    _echo(
        [
            f"  {len(cps)} checkpoints; PC1 {100 * ev[0]:.1f} %, PC2 {100 * ev[1]:.1f} % of the "
            "path's variance",
            f"  start at ({coords[0, 0]:.3g}, {coords[0, 1]:.3g}), final at (0, 0)",
            *_summary_lines(surf, "plane"),
            f"wrote {out}/ ({len(files)} files, trajectory.png)",
        ]
    )


class _Prefixed:
    """A journal seen under a key prefix, so that several estimators can share one."""

    def __init__(self, journal: Any, prefix: str) -> None:
        self.journal, self.prefix = journal, prefix

    def get(self, key: str) -> Any:
        return self.journal.get(self.prefix + key)

    def put(self, key: str, value: Any) -> None:
        self.journal.put(self.prefix + key, value)


def _sharpness(
    land: Any,
    *,
    eps: float,
    rho: float,
    sigma: float,
    adaptive_sigma: float,
    samples: int,
    seed: int,
    journal: Any = None,
    deltas: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """λ_max, ε-sharpness, adaptive and average-case sharpness (plain and adaptive).

    ``deltas``, if given, receives the worst-case perturbations found."""
    from lossmap import sharpness as S
    from lossmap.hessian import eigenvalues

    rows: list[dict[str, Any]] = []

    def add(metric: str, setting: str, r: Any, paper: str) -> None:
        row = {"metric": metric, "setting": setting, "value": float(r.value), "paper": paper}
        row["stderr"] = float(getattr(r, "stderr", float("nan")))
        row["increase"] = float(getattr(r, "increase", getattr(r, "value", float("nan"))))
        row["seconds"] = float(getattr(r, "seconds", float("nan")))
        rows.append(row)

    with _progress("sharpness") as progress:
        progress(0, 5)
        top = eigenvalues(land, 1, tol=1e-6, seed=seed)
        rows.append(
            {
                "metric": "lambda_max",
                "setting": "Lanczos, tol 1e-6",
                "value": float(top.values[0]),
                "paper": "Hessian top eigenvalue",
                "stderr": float("nan"),
                "increase": float("nan"),
                "seconds": float("nan"),
            }
        )
        progress(1, 5)
        worst_eps = S.epsilon(land, eps, seed=seed)
        add(
            "epsilon",
            f"box ε={eps:g}, L-BFGS-B",
            worst_eps,
            "Keskar et al. 2017: 100 (max L - L) / (1 + L)",
        )
        progress(2, 5)
        worst_ad = S.adaptive(land, rho, seed=seed)
        add(
            "adaptive",
            f"ρ={rho:g}, p=2, η=0",
            worst_ad,
            "Kwon et al. 2021 / Andriushchenko et al. 2023: max L - L",
        )
        if deltas is not None:
            deltas[f"ε-sharpness worst case (box ε={eps:g})"] = worst_eps.delta
            deltas[f"adaptive worst case (ρ={rho:g})"] = worst_ad.delta
        progress(3, 5)
        jp = _Prefixed(journal, "plain/") if journal is not None else None
        add(
            "average",
            f"σ={sigma:g}, {samples} samples",
            S.average(land, sigma, samples=samples, seed=seed, journal=jp),
            "E L(θ+σz) - L",
        )
        progress(4, 5)
        ja = _Prefixed(journal, "adaptive/") if journal is not None else None
        add(
            "average_adaptive",
            f"σ={adaptive_sigma:g}·|θ|, {samples} samples",
            S.average(land, adaptive_sigma, samples=samples, adaptive=True, seed=seed, journal=ja),
            "E L(θ+σ|θ|⊙z) - L",
        )
        progress(5, 5)
    return rows


def _sharpness_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = ["  sharpness (train loss):"]
    for r in rows:
        err = f" ± {r['stderr']:.2g}" if r["stderr"] == r["stderr"] else ""
        out.append(f"    {r['metric']:<17} {r['value']:.4g}{err}  ({r['setting']})")
    return out


def _write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    import csv

    from lossmap.results import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@app.command("sharpness")
def sharpness_cmd(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    eps: Annotated[float, typer.Option("--eps", help="ε of Keskar's box.")] = 1e-3,
    rho: Annotated[float, typer.Option("--rho", help="Adaptive radius ρ.")] = 0.05,
    sigma: Annotated[float, typer.Option("--sigma", help="Average-case noise σ.")] = 0.01,
    adaptive_sigma: Annotated[
        float, typer.Option("--adaptive-sigma", help="Adaptive average-case σ (× |θ|).")
    ] = 0.1,
    samples: Annotated[int, typer.Option("--samples", help="Average-case samples.")] = 100,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: OutOpt = Path("runs/sharpness"),
    restart: RestartOpt = False,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """How sharp is the minimum: λ_max, ε-sharpness, adaptive and average sharpness."""
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    args = dict(locals())
    for name, v in (("--eps", eps), ("--rho", rho), ("--sigma", sigma)):
        if not v > 0 or not math.isfinite(v):
            raise CliError(f"{name} must be a positive number, got {v}; e.g. {name} 0.001")
    if not adaptive_sigma > 0:
        raise CliError(f"--adaptive-sigma must be positive, got {adaptive_sigma}; e.g. 0.1")
    if samples < 2:
        raise CliError(f"--samples must be at least 2 (got {samples}) for a standard error")
    out = _prepare_out(out)
    land = with_checkpoint(
        build_landscape(model, example, device),
        checkpoint,
        key=checkpoint_key,
        trust=trust_checkpoint,
    )
    _check_theta0(land)
    fp = {
        "command": "sharpness",
        "model": model,
        "example": example,
        "sigma": sigma,
        "adaptive_sigma": adaptive_sigma,
        "seed": seed,
        "theta0": hash_tensors(land._params0),
        "data": _data_hash(land),
    }
    journal = _open_journal(out, fp, restart)
    deltas: dict[str, Any] = {}
    try:
        rows = _sharpness(
            land,
            eps=eps,
            rho=rho,
            sigma=sigma,
            adaptive_sigma=adaptive_sigma,
            samples=samples,
            seed=seed,
            journal=journal,
            deltas=deltas,
        )
    finally:
        journal.close()
    files = [_write_rows(rows, out / "sharpness.csv")]
    files += _worst_case_figure(land, deltas, out, seed)
    _write_json(
        out / "run.json",
        {
            "command": "sharpness",
            "arguments": args,
            "versions": _versions(),
            "seconds": time.perf_counter() - t0,
            "sharpness": rows,
            "files": sorted(str(f.relative_to(out)) for f in files),
            **_provenance(land, fp),
        },
    )
    _echo([*_sharpness_lines(rows), f"wrote {out}/ ({len(files) + 1} files)"])


def _worst_case_figure(land: Any, deltas: dict[str, Any], out: Path, seed: int) -> list[Path]:
    """The loss along each worst-case perturbation found (α = 1 reaches it) and along a
    random filter-normalised direction of the same length as the first: how much
    sharper the worst direction is than a typical one."""
    import lossmap as lm
    from lossmap import plot as lplot
    from lossmap import vectors as V
    from lossmap.directions import Direction

    curves: dict[str, Any] = {}
    first_norm = None
    for label, delta in deltas.items():
        n = float(V.norm(delta))
        if n == 0.0:
            continue
        first_norm = first_norm or n
        d = Direction(delta, kind="worst-case")
        curves[f"{label}, ‖δ‖={n:.3g}"] = lm.line(land, d, span=(-2.0, 2.0), steps=41)
    if first_norm is None:
        return []
    r = lm.directions.random(land, 1, seed=seed)[0]
    r = Direction(V.scale(r, first_norm / float(V.norm(r))), kind="random")
    curves[f"random filter-normalised, ‖δ‖={first_norm:.3g}"] = lm.line(
        land, r, span=(-2.0, 2.0), steps=41
    )
    fig = lplot.compare(
        curves, "loss", xlabel="α (θ + α δ; α = 1: the worst point found)", title="train loss"
    )
    paths = lplot.save(fig, out / "sharpness_directions")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def _curvature(
    land: Any,
    *,
    k: int,
    trace_method: str,
    trace_matvecs: int,
    steps: int,
    probes: int,
    seed: int,
    bottom_k: int | None = None,
    journal: Any = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Top-k and bottom eigenvalues, trace and density; the Spectrum carries them in meta.

    The bottom of a trained network's spectrum is a cluster near 0: resolving ``k``
    values there takes many more HVPs than the top (``bottom_k`` limits it)."""
    from lossmap import hessian as H

    t0 = time.perf_counter()
    op = H.HessianOperator(land)
    k = min(k, land.num_parameters)
    with _progress("curvature") as progress:
        progress(0, 4)
        top = H.eigenvalues(op, k, which="LA", seed=seed)
        progress(1, 4)
        bottom = H.eigenvalues(op, min(k, bottom_k or k), which="SA", seed=seed)
        progress(2, 4)
        tr = H.trace(op, method=trace_method, matvecs=trace_matvecs, seed=seed)
        progress(3, 4)
        sd = H.spectral_density(op, probes=probes, steps=steps, seed=seed, journal=journal)
        progress(4, 4)
    rows = [
        {
            "which": w,
            "rank": i + 1,
            "eigenvalue": float(v),
            "residual": float(r),
            "converged": e.converged,
        }
        for w, e in (("largest", top), ("smallest", bottom))
        for i, (v, r) in enumerate(zip(e.values, e.residuals, strict=True))
    ]
    sd.meta.update(
        {
            "top": top.values.tolist(),
            "bottom": bottom.values.tolist(),
            "eigen_matvecs": {"top": top.matvecs, "bottom": bottom.matvecs},
            "trace": tr.value,
            "trace_stderr": tr.stderr,
            "trace_method": tr.method,
            "trace_matvecs": tr.matvecs,
            "density_matvecs": sd.matvecs,
            "hvps": op.matvecs,
            "ms_per_hvp": 1000 * op.seconds / max(1, op.matvecs),
            "seconds": time.perf_counter() - t0,
            "n_parameters": land.num_parameters,
            "dataset": land.default_dataset,
            "versions": _versions(),
        }
    )
    return sd, rows


def _write_curvature(sd: Any, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    from lossmap import plot as lplot

    files = [sd.save(out / "spectrum.h5"), _write_rows(rows, out / "eigenvalues.csv")]
    files += lplot.figures(sd, out)
    return files


def _curvature_lines(sd: Any) -> list[str]:
    m = sd.meta
    fmt = ", ".join(f"{v:.4g}" for v in m["top"])
    return [
        f"  curvature ({m['dataset']}, {m['hvps']} HVPs, {m['ms_per_hvp']:.3g} ms each):",
        f"    top eigenvalues: {fmt}",
        f"    most negative: {min(m['bottom']):.4g}",
        f"    trace: {m['trace']:.4g} ± {m['trace_stderr']:.2g} ({m['trace_method']}, {m['trace_matvecs']} HVPs)",
    ]


@app.command()
def hessian(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    k: Annotated[int, typer.Option("--k", min=1, help="How many eigenvalues at each end.")] = 5,
    trace_method: Annotated[
        str, typer.Option("--trace-method", help="xtrace, hutch++ or hutchinson.")
    ] = "xtrace",
    trace_matvecs: Annotated[int, typer.Option("--trace-matvecs", min=6)] = 90,
    density_steps: Annotated[int, typer.Option("--density-steps", min=2)] = 100,
    probes: Annotated[int, typer.Option("--probes", min=1)] = 1,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    out: OutOpt = Path("runs/hessian"),
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    restart: RestartOpt = False,
) -> None:
    """Curvature at θ0: extreme Hessian eigenvalues, trace and eigenvalue density."""
    t0 = time.perf_counter()
    args = dict(locals())
    if trace_method not in ("xtrace", "hutch++", "hutchinson"):
        raise CliError(
            f"--trace-method {trace_method!r} is unknown; choose xtrace, hutch++ or hutchinson"
        )
    out = _prepare_out(out)
    land = with_checkpoint(
        build_landscape(model, example, device),
        checkpoint,
        key=checkpoint_key,
        trust=trust_checkpoint,
    )
    _check_theta0(land)
    if k > land.num_parameters:
        raise CliError(f"--k {k} is more than the model's {land.num_parameters:,} parameters")
    from lossmap.store import hash_tensors

    fp = {
        "command": "hessian",
        "model": model,
        "example": example,
        "checkpoint_sha256": _sha256(checkpoint) if checkpoint else None,
        "theta0": hash_tensors(land._params0),
        "data": _data_hash(land),
        "density_steps": density_steps,
        "seed": seed,
        "device": str(land.device),
    }
    journal = _open_journal(out, fp, restart)
    try:
        sd, rows = _curvature(
            land,
            k=k,
            trace_method=trace_method,
            trace_matvecs=trace_matvecs,
            steps=density_steps,
            probes=probes,
            seed=seed,
            journal=journal,
        )
    finally:
        journal.close()
    files = _write_curvature(sd, rows, out)
    _write_json(
        out / "run.json",
        {
            "command": "hessian",
            "arguments": args,
            "versions": _versions(),
            "seconds": time.perf_counter() - t0,
            "curvature": sd.meta,
            "eigenvalues": rows,
            "files": sorted(str(f.relative_to(out)) for f in files),
            **_provenance(land, fp),
        },
    )
    _echo([*_curvature_lines(sd), f"wrote {out}/ ({len(files)} files)"])


@app.command()
def plot(
    result: Annotated[Path, typer.Argument(help="A result file written by lossmap (.h5).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the figures (default: next to the result)."),
    ] = None,
    log: LogOpt = None,
) -> None:
    """Re-draw the figures of a saved result."""
    import lossmap as lm
    from lossmap import plot as lplot

    try:
        r = lm.load(result)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    folder = _prepare_out(out or result.parent)
    files = lplot.figures(r, folder, prefix=f"{result.stem}_", log=log)
    _echo([f"wrote {len(files)} figures to {folder}/"])


@app.command()
def demo(
    example: Annotated[
        Example, typer.Option("--example", help="Which built-in problem.")
    ] = Example.digits,
    out: OutOpt = Path("runs/demo"),
    steps: Annotated[
        int, typer.Option("--steps", min=2, max=1001, help="Grid points per axis of the plane.")
    ] = 41,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    restart: RestartOpt = False,
) -> None:
    """The main job on a built-in problem: train, a line and a plane, files, figures, summary."""
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    args = dict(locals())
    out = _prepare_out(out)
    typer.echo(f"lossmap demo: {example.value} example")
    t = time.perf_counter()
    land = build_landscape(None, example, device)
    t_train = time.perf_counter() - t
    typer.echo(f"  {land!r} ready in {t_train:.1f} s")
    d1: Any
    d2: Any
    plane_span: Any
    if example is Example.linear:
        d_line: Any = "bias"
        d1, d2 = "weight", "bias"
        line_span, plane_span, plane_steps = (
            (1.0, 3.0),
            [(0.0, 6.0), (-1.0, 5.0)],
            101 if steps == 41 else steps,
        )
    elif example is Example.logistic:
        d1, d2 = lm.directions.random(land, 2, normalization="unit", ignore=(), seed=seed)
        d_line, line_span, plane_span, plane_steps = d1, (-1.5, 1.5), 1.5, steps
    else:
        d1, d2 = lm.directions.random(land, 2, normalization="filter", seed=seed)
        d_line, line_span, plane_span, plane_steps = d1, (-1.0, 1.0), 1.0, steps
    fp = {
        "command": "demo",
        "example": example.value,
        "steps": steps,
        "seed": seed,
        "theta0": hash_tensors(land._params0),
        "data": _data_hash(land),
        "device": str(land.device),
    }
    journal = _open_journal(out, fp, restart)
    try:
        with _progress("line") as progress:
            c = lm.line(land, d_line, span=line_span, steps=51, progress=progress, journal=journal)
        with _progress("plane") as progress:
            s = lm.plane(
                land,
                d1,
                d2,
                span=plane_span,
                steps=plane_steps,
                progress=progress,
                journal=journal,
            )
    finally:
        journal.close()
    files = _save_result(c, out, "line") + _save_result(s, out, "surface")
    sd, rows = _curvature(
        land,
        k=5,
        bottom_k=1,
        trace_method="xtrace",
        trace_matvecs=90,
        steps=100,
        probes=1,
        seed=seed,
    )
    files += _write_curvature(sd, rows, out)
    sharp = _sharpness(
        land, eps=1e-3, rho=0.05, sigma=0.01, adaptive_sigma=0.1, samples=100, seed=seed
    )
    files.append(_write_rows(sharp, out / "sharpness.csv"))
    results: dict[str, Any] = {"line": c, "surface": s}
    path_lines: list[str] = []
    if example is Example.digits:
        # Two minima: this seed's and the next one's; the straight path between them.
        other = lm.examples.digits_mlp(seed=seed + 1)
        b = land.at(dict(other.model.state_dict())).point()
        with _progress("path to another seed") as progress:
            path = lm.connect.linear(land, land.point(), b, steps=41, progress=progress)
        files += _save_result(path, out, "path")
        results["path"] = path
        path_lines = [_barrier_line(f"straight path to seed {seed + 1}", path.meta["barrier"])]
    _record(
        out,
        "demo",
        args,
        results,
        files,
        t0,
        curvature={"summary": sd.meta, "eigenvalues": rows},
        sharpness=sharp,
        **_provenance(land, fp),
    )
    eng = s.meta["engine"]
    written = ", ".join(sorted({f.name for f in files if f.suffix in (".h5", ".csv")}))
    _echo(
        [
            *_summary_lines(c, "line"),
            *_summary_lines(s, "plane"),
            *_curvature_lines(sd),
            *_sharpness_lines(sharp),
            *path_lines,
            f"  engine: {eng['strategy']} ({eng['ms_per_point']:.3g} ms/point; {eng.get('reason', '')})",
            f"  wrote {out}/: {written}, {sum(f.suffix == '.png' for f in files)} figures "
            "(png+pdf), run.json",
            f"  total {time.perf_counter() - t0:.1f} s",
        ]
    )


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (its --out).")],
) -> None:
    """Progress of a running or interrupted run: points done, total, rate and ETA."""
    from lossmap.store import Journal

    path = run_dir / "journal.sqlite"
    if not path.is_file():
        raise CliError(
            f"{run_dir} has no journal.sqlite: not a lossmap run folder, or its run has not "
            "started a grid yet"
        )
    with Journal(path) as j:
        prog = j.progress()
        pid = j.meta("pid")
        fp = j.fingerprint
    views = {k: v for k, v in prog.items() if k != "units"}
    record = run_dir / "run.json"
    # run.json is written last: newer than the journal's last write means finished.
    recorded = record.is_file() and record.stat().st_mtime >= max(
        [v["last_write"] or 0.0 for v in views.values()] + [prog.get("units", {}).get("last", 0.0)]
    )
    complete = recorded or (bool(views) and all(v["done"] >= v["total"] for v in views.values()))
    alive = False
    if pid and not complete:
        try:
            os.kill(int(pid), 0)
            alive = True
        except (OSError, ValueError):
            alive = False
    state = "complete" if complete else ("running" if alive else "interrupted")
    lines = [f"{run_dir}: {fp.get('command', '?')} run, {state}"]
    for name, v in views.items():
        pct = 100.0 * v["done"] / max(1, v["total"])
        rate = v["points_per_second"]
        eta = v["eta_seconds"]
        ago = time.time() - v["last_write"] if v["last_write"] else None
        lines.append(
            f"  {name}: {v['done']:,}/{v['total']:,} points ({pct:.1f} %)"
            + (f", {rate:,.3g} points/s" if rate else "")
            + (f", ETA {_human(eta)}" if eta and state == "running" else "")
            + (f", last write {_human(ago)} ago" if ago is not None else "")
        )
    if "units" in prog:
        lines.append(
            f"  {prog['units']['done']} units of work recorded (curve epochs, probes, ...)"
        )
    if state == "interrupted":
        lines.append("  re-run the same command with the same --out to resume")
    _echo(lines)


def _with_option(argv: list[str], name: str, value: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return [*out, name, value]


@app.command()
def rerun(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to repeat it (default RUN_DIR/rerun).")
    ] = None,
) -> None:
    """Repeat a run from its run.json and report whether the numbers match."""
    import numpy as np

    import lossmap as lm

    record = run_dir / "run.json"
    if not record.is_file():
        raise CliError(f"{run_dir} has no run.json: not a finished lossmap run folder")
    info = json.loads(record.read_text())
    argv = info.get("argv")
    if not argv:
        raise CliError(f"{record} does not record its command line (written by an older lossmap)")
    target = (out or run_dir / "rerun").resolve()
    argv = _with_option([str(a) for a in argv], "--out", str(target))
    if info["command"] in (
        "line",
        "plane",
        "interpolate",
        "demo",
        "hessian",
        "sharpness",
        "connect",
        "trajectory",
    ):
        argv.append("--restart")
    if info["command"] in ("line", "plane", "interpolate"):
        # Pin what auto chose by timing: another strategy differs in the last bits.
        (res,) = info["results"].values()
        engine = res["meta"]["engine"]
        argv = _with_option(argv, "--strategy", str(engine["strategy"]))
        argv = _with_option(argv, "--chunk-size", str(engine["chunk_size"]))
    here = os.getcwd()
    os.chdir(info.get("cwd", here))
    try:
        typer.echo(f"rerun: lossmap {' '.join(argv)}")
        rc = app(args=argv, standalone_mode=False)
    finally:
        os.chdir(here)
    if isinstance(rc, int) and rc:
        raise typer.Exit(rc)
    lines, worst = [], 0.0
    for name in info.get("files", []):
        if not name.endswith(".h5"):
            continue
        a, b = lm.load(run_dir / name), lm.load(target / name)
        va = getattr(a, "values", None) or {"density": a.density}  # type: ignore[union-attr]
        vb = getattr(b, "values", None) or {"density": b.density}  # type: ignore[union-attr]
        for k in va:
            x, y = np.asarray(va[k]), np.asarray(vb.get(k, np.array([])))
            if x.shape == y.shape and np.array_equal(x, y, equal_nan=True):
                continue
            if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
                rel = math.inf
            else:
                ok = ~np.isnan(x)
                rel = float(np.max(np.abs(x[ok] - y[ok]) / np.maximum(np.abs(x[ok]), 1e-12)))
            worst = max(worst, rel)
            lines.append(f"  {name} {k}: max relative difference {rel:.3g}")
    if worst == 0.0:
        verdict = "every value matches bit for bit"
    elif worst <= 1e-5:
        verdict = f"values match to rounding (max relative difference {worst:.2g})"
    else:
        verdict = "values DIFFER (see above)"
    _echo([*lines, f"rerun of {run_dir}: {verdict}"])
    if worst > 1e-5:
        raise typer.Exit(1)


def _on_sigterm(signum: int, frame: Any) -> None:
    _RUN["signal"] = signum
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input gets one line on stderr (no traceback) and exit status 2;
    SIGTERM and Ctrl-C stop after the last finished chunk was recorded (resumable)."""
    _RUN.update(argv=list(sys.argv[1:] if argv is None else argv), journal=None, signal=None)
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread (embedded use)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rc = app(args=argv, standalone_mode=False)
        # Without standalone mode typer returns exit codes: Ctrl-C/SIGTERM become 130.
        if rc == 130:
            raise KeyboardInterrupt
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except (CliError, ValueError, TypeError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except sqlite3.Error as e:  # the journal: disk full, or a file that is not ours
        where = _RUN.get("journal") or "the run journal"
        typer.echo(
            f"error: could not write {where}: {e}; free space or choose another --out", err=True
        )
        sys.exit(1)
    except OSError as e:  # disk full, permissions, ... while writing
        name = f" {e.filename}" if getattr(e, "filename", None) else ""
        typer.echo(
            f"error: could not write{name}: {e.strerror or e}; free space or choose another --out",
            err=True,
        )
        sys.exit(1)
    except typer.TyperException as e:  # usage errors: bad option values, unknown options
        ctx = getattr(e, "ctx", None)
        command = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
        typer.echo(f"error: {e.format_message()} (see: lossmap{command} --help)", err=True)
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        where = _RUN.get("journal")
        typer.echo(
            "interrupted"
            + (
                f": finished points are saved in {where}; run the same command again to resume"
                if where
                else ""
            ),
            err=True,
        )
        sys.exit(143 if _RUN.get("signal") == signal.SIGTERM else 130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("LOSSMAP_DEBUG"):
            raise
        typer.echo(
            f"error: internal error {type(e).__name__}: {e} (a bug in lossmap; set "
            "LOSSMAP_DEBUG=1 for the traceback and please report it)",
            err=True,
        )
        sys.exit(3)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
