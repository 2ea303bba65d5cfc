"""lossmap.devices: every branch, CUDA's included, on a machine without a GPU, by
passing the figures (GPU count, LOCAL_RANK, total and free bytes) or faking torch.cuda."""

from __future__ import annotations

import sys

import pytest
import torch

from lossmap import devices
from lossmap.devices import (
    FREE_MEMORY_SHARE,
    Precision,
    chunk_budget,
    free_memory,
    local_rank,
    peak_memory,
    precision_context,
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


# ----------------------------------------------------------------- memory budget
def test_the_budget_comes_from_total_memory_whatever_is_free() -> None:
    """Free memory at or above what the budget needs changes nothing (the same chunks,
    the same bits, on a busy or an idle device)."""
    for total, fraction, expected in [(80 * GiB, 0.25, GiB), (2 * GiB, 0.25, GiB // 2)]:
        need = int(expected / FREE_MEMORY_SHARE)
        for free in (None, need, need + 1, 3 * need, total):
            b = chunk_budget(total=total, free=free, fraction=fraction, most=GiB)
            assert b == (expected, None), (total, free)


def test_short_free_memory_caps_the_budget_and_says_so() -> None:
    """A GPU of 80 GiB of which another process holds all but 1 GiB: the budget is cut
    to the share of what is free, and the figures are reported."""
    b = chunk_budget(total=80 * GiB, free=GiB, fraction=0.25, most=GiB)
    assert b.bytes == int(GiB * FREE_MEMORY_SHARE) < GiB
    assert b.capped == {"free": GiB, "budget": GiB}
    # continuous at the threshold: just below it, the cap is just below the budget
    need = int(GiB / FREE_MEMORY_SHARE)
    assert GiB - 2 <= chunk_budget(total=80 * GiB, free=need - 2, fraction=0.25, most=GiB).bytes
    # nothing free: still a positive budget (a chunk of one point)
    assert chunk_budget(total=80 * GiB, free=0, fraction=0.25, most=GiB).bytes == 1


def test_free_memory_on_cuda_asks_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        seen.append(device)
        return 3 * GiB, 80 * GiB

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert free_memory("cuda:1") == 3 * GiB
    assert seen == [torch.device("cuda:1")]


def test_free_memory_on_cpu_is_memavailable_not_memfree() -> None:
    text = "MemTotal:  16000000 kB\nMemFree:  1000 kB\nMemAvailable:  9000000 kB\n"
    assert devices._mem_available(text) == 9000000 * 1024
    assert devices._mem_available("MemTotal: 1 kB\n") is None
    free = free_memory("cpu")
    if sys.platform.startswith("linux"):
        assert free is not None and free > 0
    assert free_memory("meta") is None  # unknown: no cap


def test_the_engine_caps_chunks_only_when_free_memory_is_short(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """memory_budget with a faked free figure: plenty free, the total's budget and no
    note; short, the cap, recorded in the engine's info and logged as a warning."""
    import lossmap as lm
    from lossmap.evaluate import memory

    land = lm.examples.linear_regression()
    total = lm.data.total_memory(land.device)
    monkeypatch.setattr(devices, "free_memory", lambda device: total)
    info: dict[str, object] = {}
    full = memory.memory_budget(land, 0.25, info)
    assert full == min(memory.MAX_CHUNK_BYTES, int(total * 0.25)) and info == {}
    monkeypatch.setattr(devices, "free_memory", lambda device: full // 4)
    with caplog.at_level("WARNING", logger="lossmap"):
        capped = memory.memory_budget(land, 0.25, info)
    assert capped == int(full // 4 * FREE_MEMORY_SHARE)
    assert info["memory_capped"] == {"free": full // 4, "budget": full}
    assert "may differ in the last bits" in caplog.text
    # and a whole run records it
    d = lm.directions.random(land, 1, seed=0)[0]
    res = lm.line(land, d, steps=5)
    assert res.meta["engine"]["memory_capped"] == {"free": full // 4, "budget": full}


# ----------------------------------------------------------------- peak memory
def test_peak_memory_on_cpu_is_the_process_max_rss() -> None:
    pytest.importorskip("resource")
    p = peak_memory("cpu")
    assert p["device"] == "cpu" and p["how"] == "ru_maxrss"
    # this process holds torch: more than 10 MB, less than the machine
    import os

    assert 10e6 < p["bytes"] <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_peak_memory_on_cuda_asks_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(("reset", d)))
    monkeypatch.setattr(
        torch.cuda, "max_memory_allocated", lambda d: calls.append(("max", d)) or 12345
    )
    devices.reset_peak_memory()
    assert calls == [("reset", 0), ("reset", 1)]
    assert peak_memory("cuda:1") == {
        "device": "cuda:1",
        "bytes": 12345,
        "how": "torch.cuda.max_memory_allocated",
    }
    assert calls[-1] == ("max", torch.device("cuda:1"))


def test_no_cuda_count_to_reset_or_read_before_cuda_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_a: object) -> None:
        raise AssertionError("CUDA must not be touched before it is initialised")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", never)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", never)
    devices.reset_peak_memory()
    assert peak_memory("cuda")["bytes"] == 0


# ----------------------------------------------------------------- precision
def test_precision_contexts() -> None:
    f32 = torch.ones(2, 2)
    assert precision_context("float32", device="cpu", dtype=torch.float32)() is not None
    assert precision_context("float32", device="cpu", dtype=torch.float64) is not None
    for p, low in (("bfloat16", torch.bfloat16), (Precision.float16, torch.float16)):
        with precision_context(p, device="cpu", dtype=torch.float32)():
            assert (f32 @ f32).dtype == low
    with precision_context("float32", device="cpu", dtype=torch.float32)():
        assert (f32 @ f32).dtype == torch.float32


@pytest.mark.parametrize(
    ("precision", "device", "dtype", "needles"),
    [
        ("bf16", "cpu", torch.float32, ["unknown precision 'bf16'", "float32, bfloat16, float16"]),
        ("bfloat16", "cpu", torch.float64, ["float64", "precision 'float32'"]),
        ("float16", "meta", torch.float32, ["does not support device type 'meta'"]),
    ],
)
def test_precision_refused_where_it_would_not_apply(
    precision: str, device: str, dtype: torch.dtype, needles: list[str]
) -> None:
    with pytest.raises(ValueError) as e:
        precision_context(precision, device=device, dtype=dtype)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_precision_refused_where_autocast_would_only_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.autocast with a dtype the device does not support warns and runs in full
    precision; the check turns that into an error (float64: never an autocast dtype)."""
    monkeypatch.setitem(devices._AUTOCAST_DTYPES, Precision.float16, torch.float64)
    with pytest.raises(ValueError, match="not supported on cpu"):
        precision_context("float16", device="cpu", dtype=torch.float32)


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
