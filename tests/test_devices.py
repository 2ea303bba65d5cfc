"""lossmap.devices: every branch, CUDA's included, on a machine without a GPU, by
passing the figures (GPU count, LOCAL_RANK, total and free bytes) or faking torch.cuda."""

from __future__ import annotations

import pytest
import torch

from lossmap.devices import (
    local_rank,
    resolve_device,
)

GiB = 1 << 30


# ----------------------------------------------------------------- resolve_device
@pytest.mark.parametrize(
    ("spec", "cuda_count", "rank", "expected"),
    [
        ("cpu", 0, None, "cpu"),
        ("cpu", 4, 2, "cpu"),  # asked for: the CPU, even under torchrun with GPUs
        (" CPU ", 0, None, "cpu"),
        ("auto", 0, None, "cpu"),
        ("auto", 0, 1, "cpu"),  # torchrun on a machine without GPUs
        ("auto", 2, None, "cuda"),
        ("cuda", 1, None, "cuda"),
        ("auto", 4, 3, "cuda:3"),  # torchrun: each process its own GPU
        ("cuda", 4, 0, "cuda:0"),
        ("cuda:0", 1, None, "cuda:0"),
        ("cuda:1", 2, None, "cuda:1"),
        ("cuda:1", 2, 0, "cuda:1"),  # named: as given, even under torchrun
        ("Cuda:01", 2, None, "cuda:1"),
    ],
)
def test_resolve_device(spec: str, cuda_count: int, rank: int | None, expected: str) -> None:
    assert resolve_device(spec, cuda_count=cuda_count, local_rank=rank) == expected


@pytest.mark.parametrize(
    ("spec", "cuda_count", "rank", "needles"),
    [
        ("cuda", 0, None, ["no GPU is available", "--device cpu"]),
        ("cuda:0", 0, None, ["no GPU is available", "--device cpu"]),
        ("cuda:7", 2, None, ["cuda:7", "2 GPUs", "cuda:0 to cuda:1"]),
        ("cuda:1", 1, None, ["1 GPU ", "cuda:0 to cuda:0"]),
        ("auto", 2, 2, ["LOCAL_RANK=2", "2 GPUs", "--nproc-per-node 2"]),
        ("cuda", 1, 5, ["LOCAL_RANK=5", "1 GPU:"]),
        ("gpu", 1, None, ["'gpu' is not a device", "auto, cpu, cuda, cuda:N"]),
        ("cuda:", 1, None, ["is not a device"]),
        ("cuda:-1", 1, None, ["is not a device"]),
        ("cuda:x", 1, None, ["is not a device"]),
        ("", 1, None, ["is not a device"]),
        ("mps", 0, None, ["no MPS backend", "--device cpu"]),
    ],
)
def test_resolve_device_refuses_in_one_line(
    spec: str, cuda_count: int, rank: int | None, needles: list[str]
) -> None:
    with pytest.raises(ValueError) as e:
        resolve_device(spec, cuda_count=cuda_count, local_rank=rank)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_mps_where_torch_has_it() -> None:
    assert resolve_device("mps", cuda_count=0, local_rank=None, mps_available=True) == "mps"
    # auto never picks MPS: it must be asked for
    assert resolve_device("auto", cuda_count=0, local_rank=None, mps_available=True) == "cpu"


def test_local_rank() -> None:
    assert local_rank({}) is None
    assert local_rank({"LOCAL_RANK": "0"}) == 0
    assert local_rank({"LOCAL_RANK": " 3 "}) == 3
    for bad in ("", "-1", "one", "1.5"):
        with pytest.raises(ValueError, match="LOCAL_RANK"):
            local_rank({"LOCAL_RANK": bad})


# ----------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("device", "gpus", "rank", "needles"),
    [
        ("cuda:7", 0, None, ["--device cuda:7", "no GPU is available", "--device cpu"]),
        ("cuda:7", 2, None, ["--device cuda:7", "2 GPUs", "cuda:0 to cuda:1"]),
        ("auto", 2, "2", ["LOCAL_RANK=2", "2 GPUs"]),
        ("auto", 0, "x", ["LOCAL_RANK='x'"]),
        ("gpu0", 0, None, ["'gpu0' is not a device", "cuda:N"]),
    ],
)
def test_a_bad_device_is_one_line_before_any_work(
    device: str,
    gpus: int,
    rank: str | None,
    needles: list[str],
    tmp_path,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked as the command line is read: no run folder, no model built (the GPU count
    and LOCAL_RANK faked, so the CUDA branches run here)."""
    from conftest import run_cli

    import lossmap as lm

    def no_work(*_a: object, **_k: object) -> None:
        raise AssertionError("no work before the device is checked")

    monkeypatch.setattr(lm.examples, "digits_mlp", no_work)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    if rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", rank)
    out = tmp_path / "run"
    for command in (["plane"], ["hessian"], ["demo"]):
        code, stdout, err = run_cli(
            [*command, "--example", "digits", "--device", device, "--out", str(out)], capsys
        )
        assert code == 2 and not stdout, (command, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        for n in needles:
            assert n in lines[0], lines[0]
        assert not out.exists()


def test_device_cpu_and_auto_run_and_are_recorded_as_typed(
    tmp_path,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--device CPU`` and ``auto`` (under torchrun without GPUs: the CPU) run; run.json
    records the argument as typed and the device used."""
    import json

    from conftest import run_cli

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for spec in ("CPU", "auto"):
        out = tmp_path / spec
        code, _, err = run_cli(
            ["line", "--example", "linear", "--steps", "3", "--device", spec, "--out", str(out)],
            capsys,
        )
        assert code == 0, err
        record = json.loads((out / "run.json").read_text())
        assert record["arguments"]["device"] == spec and record["device"] == "cpu"
