"""Building the landscape from ``--model``/``--example``, loading checkpoints safely
(``weights_only``, nested and prefixed state dicts), and the check at θ0 that runs
before any long work."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer

from lossmap.cli._common import CURRENT_RUN, CliError, Example, machine_device


# ----------------------------------------------------------------- helpers
def _device(spec: str) -> str | None:
    """The device ``--device spec`` names here; ``None`` for ``auto`` on a machine
    without a GPU: the landscape stays where the factory put it."""
    dev = machine_device(spec)
    return None if dev == "cpu" and spec.strip().lower() == "auto" else dev


def _example(name: Example) -> Any:
    from lossmap import examples, zoo

    makers: dict[Example, Callable[[], Any]] = {
        Example.digits: examples.digits_mlp,
        Example.linear: examples.linear_regression,
        Example.logistic: examples.logistic_regression,
        Example.resnet20: zoo.resnet20,
        Example.transformer: zoo.transformer_lm,
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
        # The file's own folder first, so that it can import the modules beside it
        # (as `python path/to/file.py` would).
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        try:
            loader_spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:
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
        except (Exception, SystemExit) as e:
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


def build_landscape(model: str | None, example: Example | None, device: str) -> Any:
    """The Landscape named by ``--model`` (a factory) or ``--example``; under torchrun,
    its work shared by the ranks (``lossmap --split``), checked to be the same on each."""
    if (model is None) == (example is None):
        raise CliError("give exactly one of --model package.module:factory or --example NAME")
    dev = _device(device)
    ranks = _join_ranks(dev)
    land = _build(model, example, dev)
    if ranks is None:
        return land
    from lossmap.store import hash_tensors

    ranks.check_same("θ0 (the model's parameters)", hash_tensors(land.theta0))
    return land.distribute(ranks)


def _join_ranks(dev: str | None) -> Any:
    """The process group of a torchrun job (``None`` outside one)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import lossmap as lm

    split = CURRENT_RUN.get("split", "points")
    timeout = float(CURRENT_RUN.get("rank_timeout", lm.distributed.DEFAULT_TIMEOUT))
    return lm.distributed.init(split, timeout=timeout, device=dev)


def _build(model: str | None, example: Example | None, dev: str | None) -> Any:
    import lossmap as lm

    if example is not None:
        land = _example(example)
        return land if dev is None or str(land.device) == dev else _rebuild(land, dev)
    factory = _import_factory(str(model))
    try:
        made = factory()
    except (Exception, SystemExit, GeneratorExit) as e:  # not KeyboardInterrupt: Ctrl-C
        what = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else "raised"
        detail = "" if isinstance(e, SystemExit) else f" {type(e).__name__}: {e}"
        raise CliError(
            f"--model: the factory {model!r} {what}{detail}; it must return a Landscape or "
            "(model, criterion, data)"
        ) from None
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


def in_train_mode(land: Any) -> Any:
    """The same landscape evaluated in train mode (``--train-mode``)."""
    return land if land.train_mode else _rebuild(land, str(land.device), train_mode=True)


def _rebuild(land: Any, device: str, *, train_mode: bool | None = None) -> Any:
    import lossmap as lm

    data = {k: (ds.batches if ds.in_memory else ds.loader) for k, ds in land.datasets.items()}
    return lm.Landscape(
        land.model,
        land.criterion,
        data=data,
        loss=land.loss_fn,
        metrics=land.metrics,
        device=device,
        train_mode=land.train_mode if train_mode is None else train_mode,
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
    ``.safetensors`` files (detected by their layout) load with ``safetensors`` when it
    is installed.
    """
    if not path.is_file():
        raise CliError(f"--checkpoint: no file {path}")
    obj = _load_safetensors(path) if _is_safetensors(path) else _torch_load(path, trust)
    return _state_dict(obj, path, key)


def _is_safetensors(path: Path) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 1e8


def _load_safetensors(path: Path) -> Any:
    """A ``.safetensors`` checkpoint (tensors only: nothing in it can run code)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CliError(
            f"--checkpoint {path} is a safetensors file; pip install safetensors to read it"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CliError(
            f"--checkpoint {path} is not a readable safetensors file ({msg}); is it truncated "
            "or corrupt?"
        ) from None


def _torch_load(path: Path, trust: bool) -> Any:
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not for users
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        text = str(e)
        # torch words the weights_only refusal "Unsupported global: GLOBAL x" or
        # "unsupported GLOBAL posix.system whose module posix is blocked".
        objects = "unsupported global" in text.lower()
        raw_pickle = _is_whole_pickle(path)
        if raw_pickle and not objects:
            raise CliError(
                f"--checkpoint {path} is a plain pickle, which could run code when loaded; "
                "re-save it with torch.save(model.state_dict(), path), or pass "
                "--trust-checkpoint if you trust the file"
            ) from None
        if not objects:  # not a pickle of objects: a damaged file
            detail = next(
                (ln.strip() for ln in text.splitlines() if "unsupported" in ln.lower()),
                "bad data",
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
    return obj


def _state_dict(obj: Any, path: Path, key: str | None) -> dict[str, Any]:
    """The state dict inside a loaded checkpoint (see :func:`load_checkpoint`)."""
    import torch

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


def _lossy(src: Any, dst: Any) -> bool:
    """Whether casting dtype ``src`` to ``dst`` loses values: integer or bool into
    floating point (a checkpoint of the wrong kind), floating into integer, complex into
    real, anything but bool into bool. Float64 into float32 only rounds, and is allowed."""
    import torch

    if src == dst:
        return False
    if src.is_complex:
        return not dst.is_complex
    if dst.is_floating_point or dst.is_complex:
        return not src.is_floating_point
    return src.is_floating_point or dst == torch.bool


def _check_dtypes(sd: Mapping[str, Any], expected: Mapping[str, Any], path: Path) -> None:
    for k, v in sd.items():
        want = expected.get(k)
        if want is not None and hasattr(v, "dtype") and _lossy(v.dtype, want.dtype):
            raise CliError(
                f"--checkpoint {path}: {k} is {str(v.dtype).removeprefix('torch.')} but the "
                f"model's is {str(want.dtype).removeprefix('torch.')}; casting would lose its "
                "values: save the checkpoint from this model (model.state_dict())"
            )


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
    sd = _align_prefix(sd, set(land.theta0) | set(land.fixed) | set(land.aliases))
    _check_dtypes(sd, {**land.fixed, **land.theta0}, checkpoint)
    try:
        return land.at(sd)
    except ValueError as e:
        raise CliError(f"--checkpoint {checkpoint}: {e}") from None


def check_theta0(land: Any) -> float:
    """Evaluate θ0 once on every data set before the long work: seconds per point.

    A model that cannot run on its data, or whose loss at θ0 is not finite, is refused
    here in one line rather than after hours of NaN.
    """
    return theta0_values(land)[0]


def theta0_values(land: Any) -> tuple[float, dict[str, float]]:
    """:func:`check_theta0`'s seconds per point, and the values at θ0 by key."""
    t = time.perf_counter()
    try:
        vals = land.evaluate([land.theta0], strategy="loop")
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
    return secs, {k: float(v[0]) for k, v in vals.items()}


def note_no_checkpoint(model: str | None, checkpoint: Path | None) -> list[str]:
    """One line when ``--model`` comes without ``--checkpoint``: θ0 is then whatever the
    factory returns, a randomly initialised network unless it loads weights itself."""
    if model is None or checkpoint is not None:
        return []
    return [
        f"note: no --checkpoint: θ0 is the network as --model {model} returns it "
        "(randomly initialised, unless the factory loads trained weights)"
    ]


def checked_landscape(
    model: str | None,
    example: Any,
    device: Any,
    checkpoint: Path | None,
    *,
    key: str | None,
    trust: bool,
) -> tuple[Any, list[str]]:
    """The landscape at ``--checkpoint``, evaluated once at θ0 (refused in one line if
    that fails), and the notes to print after the run."""
    land = with_checkpoint(
        build_landscape(model, example, device), checkpoint, key=key, trust=trust
    )
    check_theta0(land)
    return land, note_no_checkpoint(model, checkpoint)
